"""EmbeddingBank and BankWriter: the rows a training pass wrote, unwritten rows, ranks, resume, staleness."""
import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.trainers import MetricLossOnly

from dist_utils import run_world
from pml_ext import BankWriter, ClassHardBatchSampler, EmbeddingBank, compute_embeddings

NUM, DIM = 40, 3


class RecordingLoss(torch.nn.Module):
    """ContrastiveLoss that keeps a copy of every batch of embeddings it is given."""

    def __init__(self):
        super().__init__()
        self.loss, self.seen = ContrastiveLoss(), []

    def forward(self, embeddings, labels, indices_tuple=None):
        self.seen.append(embeddings.detach().clone())
        return self.loss(embeddings, labels, indices_tuple)


def train_tiny(num_epochs=2):
    """Two epochs of two batches of 8 on 40 random samples; column 0 of a sample is its index."""
    torch.manual_seed(0)
    x = torch.randn(NUM, 6)
    x[:, 0] = torch.arange(NUM, dtype=torch.float)
    labels = torch.arange(NUM) % 5
    trunk = torch.nn.Linear(6, DIM)
    loss = RecordingLoss()
    inputs = []
    trunk.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().clone()))
    trainer = MetricLossOnly(
        models={"trunk": trunk, "embedder": torch.nn.Identity()},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.5)},
        batch_size=8, loss_funcs={"metric_loss": loss}, mining_funcs={},
        dataset=torch.utils.data.TensorDataset(x, labels),
        sampler=MPerClassSampler(labels, 2, batch_size=8, length_before_new_iter=16),
        dataloader_num_workers=0)
    bank = EmbeddingBank(NUM, DIM)
    BankWriter(bank).attach(trainer)
    trainer.train(num_epochs=num_epochs)
    return bank, loss.seen, inputs, trunk, x


def test_bank_rows_are_the_embeddings_of_the_training_pass_that_wrote_them():
    bank, seen, inputs, trunk, x = train_tiny()
    assert len(seen) == len(inputs) == 4 == bank.num_writes
    expected = torch.zeros(NUM, DIM)
    written = torch.zeros(NUM, dtype=torch.bool)
    epoch_of = torch.zeros(NUM, dtype=torch.long)
    for step, (batch_in, batch_emb) in enumerate(zip(inputs, seen)):
        idx = batch_in[:, 0].long()  # the sample's own index, carried in its data
        expected[idx], written[idx], epoch_of[idx] = batch_emb, True, 1 + step // 2
    assert torch.equal(bank.filled, written)
    assert torch.equal(bank.embeddings, expected)  # untouched rows stay zero
    assert torch.equal(bank.written_epoch, epoch_of)
    assert (~bank.filled).sum() >= NUM - 32  # at most 32 rows were drawn
    # The rows are those passes' embeddings, not the final model's (training moved it).
    with torch.no_grad():
        now = trunk(x)
    assert not torch.allclose(now[bank.filled], bank.embeddings[bank.filled], atol=1e-4)
    # Other embedding passes (a tester's, the epoch refresh's) do not write.
    before = bank.state_dict()
    compute_embeddings(trunk, torch.utils.data.TensorDataset(x, torch.zeros(NUM, dtype=torch.long)), 16)
    assert bank.num_writes == before["num_writes"] and torch.equal(bank.embeddings, before["embeddings"])


def test_write_keeps_the_last_copy_and_checks_its_arguments():
    bank = EmbeddingBank(5, 2)
    bank.write(torch.tensor([3, 1, 3]), torch.tensor([[1.0, 1], [2, 2], [3, 3]]), epoch=4)
    assert bank.filled.tolist() == [False, True, False, True, False]
    assert bank.embeddings[3].tolist() == [3, 3] and bank.embeddings[1].tolist() == [2, 2]
    assert bank.written_epoch.tolist() == [0, 4, 0, 4, 0] and bank.written_step.tolist() == [-1, 0, -1, 0, -1]
    bank.write(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2))  # an empty batch writes nothing
    assert bank.filled.sum() == 2 and bank.num_writes == 2
    with pytest.raises(ValueError, match="dataset_indices"):
        bank.write(torch.tensor([5]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="embeddings must have shape"):
        bank.write(torch.tensor([0, 1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="epoch"):
        bank.write(torch.tensor([0]), torch.zeros(1, 2), epoch=-1)
    with pytest.raises(ValueError, match="NaN"):
        bank.write(torch.tensor([0]), torch.full((1, 2), float("nan")))


def test_writer_refuses_a_bank_of_another_size():
    trainer = type("T", (), {"dataset": list(range(7)), "mining_funcs": {}})()
    with pytest.raises(ValueError, match="bank has 5 rows"):
        BankWriter(EmbeddingBank(5, 2)).attach(trainer)
    with pytest.raises(TypeError, match="bank"):
        BankWriter(torch.zeros(5, 2))


# ---------------------------------------------------------------------- ranks
ROWS, WIDTH, BATCH = 23, 4, 4


def schedule():
    """Two epochs of whole batches of 4: epoch 1 a permutation of rows 0..18 (5 batches, so rank 0
    runs one step more than rank 1; rows 19..22 are never drawn), epoch 2 11 of them. Rank 1's
    second batch of epoch 2 (its step 2) rewrites rows that rank 0 wrote at its step 2 of epoch 1:
    the epoch, not the step count, must decide. Embeddings depend on (row, epoch)."""
    first = torch.randperm(ROWS - 4, generator=torch.Generator().manual_seed(3))
    second = torch.cat([first[8:12], first[16:19], first[0:1], first[4:7]])
    return [(epoch, list(torch.split(order, BATCH))) for epoch, order in ((1, first), (2, second))]


def rows_of(idx, epoch):
    return idx.unsqueeze(1).float() * 10 + epoch + torch.arange(WIDTH).float() / 10


def fill(bank, rank, world_size):
    for epoch, batches in schedule():
        for idx in batches[rank::world_size]:  # EpochSampler's rank slice: uneven counts per rank
            bank.write(idx, rows_of(idx, epoch), epoch=epoch)


def trainer_bank(rank, world_size):
    """Two epochs of a frozen MetricLossOnly trainer on this rank's batches of a ClassHardBatchSampler
    (5 batches of 8 per epoch: rank 0 runs 3, rank 1 runs 2)."""
    torch.manual_seed(0)
    x, labels = torch.randn(NUM, 6), torch.arange(NUM) % 5
    trunk = torch.nn.Linear(6, DIM)
    trainer = MetricLossOnly(
        models={"trunk": trunk, "embedder": torch.nn.Identity()},
        optimizers={"trunk_optimizer": torch.optim.SGD(trunk.parameters(), lr=0.0)},
        batch_size=8, loss_funcs={"metric_loss": ContrastiveLoss()}, mining_funcs={},
        dataset=torch.utils.data.TensorDataset(x, labels), dataloader_num_workers=0,
        sampler=ClassHardBatchSampler(labels, 8, 4, 2, length_before_new_iter=NUM, seed=2, rank=rank,
                                      world_size=world_size))
    bank = EmbeddingBank(NUM, DIM)
    BankWriter(bank).attach(trainer)
    trainer.train(num_epochs=2)
    return bank


def gather_worker(rank, world_size, out_dir):
    bank = EmbeddingBank(ROWS, WIDTH)
    fill(bank, rank, world_size)
    trained = trainer_bank(rank, world_size)
    torch.save({"own": bank.state_dict(), "gathered": bank.gathered().state_dict(),
                "trainer_writes": trained.num_writes, "trainer": trained.gathered().state_dict()},
               f"{out_dir}/rank{rank}.pt")


def test_gathered_bank_of_two_ranks_is_the_single_process_bank(tmp_path):
    """Both a hand-made write schedule and two ranks of a real (frozen) trainer, in one world."""
    run_world(gather_worker, str(tmp_path))
    single = EmbeddingBank(ROWS, WIDTH)
    fill(single, 0, 1)
    assert single.filled.sum() == ROWS - 4 and (single.written_epoch == 2).sum() == 11
    trained = trainer_bank(0, 1)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert not torch.equal(results[0]["own"]["filled"], single.filled)  # each rank alone lacks rows
    assert [res["trainer_writes"] for res in results] == [6, 4] and trained.num_writes == 10
    for res in results:
        for key in ("embeddings", "filled", "written_epoch"):
            assert torch.equal(res["gathered"][key], getattr(single, key)), key
            assert torch.equal(res["trainer"][key], getattr(trained, key)), key


def test_gathered_without_distribution_is_a_copy():
    bank = EmbeddingBank(ROWS, WIDTH)
    fill(bank, 0, 1)
    copy = bank.gathered()
    assert copy is not bank and torch.equal(copy.embeddings, bank.embeddings)
    copy.write(torch.tensor([22]), torch.ones(1, WIDTH))
    assert not bank.filled[22]


# ---------------------------------------------------------------------- resume
def test_resume_restores_the_bank_and_continues_as_uninterrupted(tmp_path):
    whole = EmbeddingBank(ROWS, WIDTH)
    fill(whole, 0, 1)
    half = EmbeddingBank(ROWS, WIDTH)
    epochs = schedule()
    for idx in epochs[0][1]:
        half.write(idx, rows_of(idx, 1), epoch=1)
    torch.save(half.state_dict(), tmp_path / "bank.pt")
    resumed = EmbeddingBank(ROWS, WIDTH)
    resumed.load_state_dict(torch.load(tmp_path / "bank.pt"))
    for idx in epochs[1][1]:
        resumed.write(idx, rows_of(idx, 2), epoch=2)
    for key in ("embeddings", "filled", "written_epoch", "written_step", "num_writes"):
        assert torch.equal(torch.as_tensor(getattr(resumed, key)), torch.as_tensor(getattr(whole, key))), key


@pytest.mark.parametrize("change, match", [
    ({"version": 2}, r"state\['version'\] is 2"),
    ({"embeddings": torch.zeros(ROWS, WIDTH + 1)}, r"state\['embeddings'\] must be a float Tensor\[23, 4\]"),
    ({"filled": torch.zeros(ROWS)}, r"state\['filled'\]"),
    ({"written_step": torch.full((ROWS,), -1)}, r"state\['written_step'\] must be >= 0 exactly"),
    ({"num_writes": 1}, r"state\['num_writes'\] must be >="),
    ({"embeddings": torch.full((ROWS, WIDTH), float("inf"))}, r"state\['embeddings'\] contains NaN"),
])
def test_corrupt_state_is_refused_naming_the_field_and_changes_nothing(change, match):
    bank = EmbeddingBank(ROWS, WIDTH)
    fill(bank, 0, 1)
    before = bank.state_dict()
    with pytest.raises(ValueError, match=match):
        bank.load_state_dict({**bank.state_dict(), **change})
    assert torch.equal(bank.embeddings, before["embeddings"]) and bank.num_writes == before["num_writes"]
    missing = bank.state_dict()
    del missing["filled"]
    with pytest.raises(ValueError, match="missing"):
        bank.load_state_dict(missing)


# ---------------------------------------------------------------------- staleness
def exact_recall(old, fresh, k):
    """Recall@k of old's k-NN lists against fresh's, by full sorting (ties do not occur here)."""
    def lists(points):
        d = torch.cdist(points, points).fill_diagonal_(float("inf"))
        return d.argsort(dim=1)[:, :k]
    a, b = lists(old), lists(fresh)
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / (k * len(old))


def test_staleness_measures_distance_and_neighbour_recall():
    gen = torch.Generator().manual_seed(1)
    bank = EmbeddingBank(50, 5)
    bank.write(torch.arange(50), torch.randn(50, 5, generator=gen))
    rows = torch.arange(0, 50, 2)
    same = bank.staleness(rows, bank.embeddings[rows])
    assert same == {"mean_distance": 0.0, "recall": 1.0}
    shift = torch.tensor([3.0, 4.0, 0, 0, 0])  # a translation keeps every neighbour
    moved = bank.staleness(rows, bank.embeddings[rows] + shift, k=4)
    assert moved["mean_distance"] == pytest.approx(5.0, rel=1e-5) and moved["recall"] == 1.0
    fresh = bank.embeddings[rows] + 0.8 * torch.randn(len(rows), 5, generator=gen)
    noisy = bank.staleness(rows, fresh, k=4)
    assert noisy["recall"] == pytest.approx(exact_recall(bank.embeddings[rows], fresh, 4))
    assert noisy["recall"] < 1.0


def test_staleness_refuses_unwritten_or_mismatched_rows():
    bank = EmbeddingBank(6, 2)
    bank.write(torch.arange(4), torch.randn(4, 2))
    with pytest.raises(ValueError, match="written rows"):
        bank.staleness(torch.tensor([0, 5]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="fresh must have shape"):
        bank.staleness(torch.tensor([0, 1]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="distinct"):
        bank.staleness(torch.tensor([1, 1]), torch.zeros(2, 2))
