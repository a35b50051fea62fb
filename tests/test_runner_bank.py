"""The runner's ``embedding_bank`` key: epoch updates read the training passes' embeddings.

Oracles: a fake sampler that records every ``update`` the run makes, a spy on the run's fresh
embedding function (which rows it is asked for), the model rebuilt from the saved weights
(fresh embeddings computed here), the run's own bank object, and an uninterrupted run for resume.
"""
import re
import sqlite3

import pytest
import torch

import pml_ext
from pml_ext.runner import ConfigError, ExperimentRunner, Registry
from pml_ext.runner.run.scheme_run import SchemeRun
from test_runner_resume import same, saved
from test_runner_run import FakeSampler  # a seeded random order of the first N samples; records update()

SCHEME = "Test50_50_Partitions1_0"  # train: digits 0-4 less a quarter held out as val (676 samples)
QUIET = [("check_untrained_accuracy", False), ("log_data_to_tensorboard", False)]


def query(folder, sql):
    with sqlite3.connect(folder / SCHEME / "saved_csvs" / "logs.db") as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def spy_rows(monkeypatch):
    """The rows of every fresh embedding the run asks for (``None``: the whole training set)."""
    calls = []
    original = SchemeRun.embed_rows

    def embed_rows(self, rows=None):
        calls.append(None if rows is None else rows.clone())
        return original(self, rows)

    monkeypatch.setattr(SchemeRun, "embed_rows", embed_rows)
    return calls


def spy_run(tmp_path, name, bank, length=None, batch_size=64, epochs=1):
    registry = Registry()
    registry.register("sampler", FakeSampler)
    sampler = {"seed": 1} if length is None else {"seed": 1, "length_before_new_iter": length}
    overrides = QUIET + [("num_epochs_train", epochs), ("mining_funcs~OVERRIDE~", {}),
                         ("loss_funcs~OVERRIDE~", {"metric_loss": {"ContrastiveLoss": None}}),
                         ("trainer~APPLY~2", {"iterations_per_epoch": None, "batch_size": batch_size}),
                         ("sampler~OVERRIDE~", {"FakeSampler": sampler}), ("embedding_bank", bank)]
    runner = ExperimentRunner(name, root_experiment_folder=str(tmp_path), overrides=overrides, registry=registry)
    runner.run()
    return runner.objects[SCHEME], FakeSampler.instances[-1]


def fresh_embeddings(folder, epoch, train_split, rows):
    """The saved model of ``epoch`` applied to the training split's ``rows`` (eval mode, no gradients)."""
    saved = folder / SCHEME / "saved_models"
    trunk, embedder = pml_ext.MLP([64, 256], final_relu=True), pml_ext.MLP([256, 32])
    trunk.load_state_dict(torch.load(saved / f"trunk_{epoch}.pth"))
    embedder.load_state_dict(torch.load(saved / f"embedder_{epoch}.pth"))
    data = train_split.dataset.data[torch.as_tensor(train_split.indices)[rows]]
    with torch.no_grad():
        return embedder.eval()(trunk.eval()(data))


def test_updates_get_the_bank_rows_without_a_pass_over_the_training_set(tmp_path, spy_rows):
    # 676 samples in 4 batches of 169: every epoch writes every row of the bank.
    objects, sampler = spy_run(tmp_path, "bank", {"staleness_sample": 64}, batch_size=169, epochs=2)
    bank, train_split = objects["embedding_bank"], objects["eval_sets"]["train"]
    assert bank.filled.all() and (bank.written_epoch == 2).all() and bank.num_writes == 8
    assert len(sampler.updates) == 2
    embeddings, labels = sampler.updates[-1]
    assert torch.equal(embeddings, bank.embeddings)  # exactly the bank's rows, nothing recomputed
    assert torch.equal(labels, train_split.dataset.labels[torch.as_tensor(train_split.indices)])
    # The rows are the training passes', not the final model's: they predate the epoch's last steps.
    final = fresh_embeddings(tmp_path / "bank", 2, train_split, torch.arange(676))
    assert not torch.allclose(embeddings, final, atol=1e-3)
    # The only fresh embeddings: the 64 staleness rows, once per refresh, never the training set.
    sample = torch.randperm(676, generator=torch.Generator().manual_seed(0))[:64]  # the run's seed is 0
    assert len(spy_rows) == 2 and all(torch.equal(rows, sample) for rows in spy_rows)
    records = query(tmp_path / "bank", 'SELECT "~iteration~", written_share, unwritten_rows, fresh_rows, '
                                       "staleness_mean_distance, staleness_recall FROM embedding_bank")
    assert [r[:4] for r in records] == [(1, 1.0, 0.0, 64.0), (2, 1.0, 0.0, 64.0)]
    distance = (bank.embeddings[sample] - final[sample]).norm(dim=1).mean()
    assert records[-1][4] == pytest.approx(float(distance), rel=1e-4) and records[-1][4] > 0
    assert 0.0 <= records[-1][5] <= 1.0


def test_rows_no_batch_wrote_are_embedded_fresh_and_only_those(tmp_path, spy_rows):
    # The sampler visits the first 192 samples only: rows 192-675 are never written.
    objects, sampler = spy_run(tmp_path, "partial", {"staleness_sample": 0}, length=192)
    bank, train_split = objects["embedding_bank"], objects["eval_sets"]["train"]
    assert torch.equal(bank.filled, torch.arange(676) < 192)
    assert len(spy_rows) == 1 and torch.equal(spy_rows[0], torch.arange(192, 676))
    embeddings, _ = sampler.updates[-1]
    assert torch.equal(embeddings[:192], bank.embeddings[:192])
    final = fresh_embeddings(tmp_path / "partial", 1, train_split, torch.arange(192, 676))
    assert torch.allclose(embeddings[192:], final, atol=1e-5)
    records = query(tmp_path / "partial", "SELECT * FROM embedding_bank")
    columns = [c for (_, c, *_) in query(tmp_path / "partial", "PRAGMA table_info(embedding_bank)")]
    row = dict(zip(columns, records[0]))
    assert row["unwritten_rows"] == 484 and row["fresh_rows"] == 484
    assert row["written_share"] == pytest.approx(192 / 676) and "staleness_recall" not in row


def test_source_fresh_keeps_the_pass_over_the_training_set_and_measures_the_bank(tmp_path, spy_rows):
    objects, sampler = spy_run(tmp_path, "fresh", {"source": "fresh", "staleness_sample": 16}, length=192)
    train_split = objects["eval_sets"]["train"]
    assert len(spy_rows) == 1 and torch.equal(spy_rows[0], torch.arange(676))
    final = fresh_embeddings(tmp_path / "fresh", 1, train_split, torch.arange(676))
    assert torch.allclose(sampler.updates[-1][0], final, atol=1e-5)
    records = query(tmp_path / "fresh",
                    "SELECT fresh_rows, unwritten_rows, staleness_mean_distance FROM embedding_bank")
    assert records[0][:2] == (676.0, 484.0) and records[0][2] > 0


@pytest.mark.parametrize("value, key, message", [
    ("bank", "embedding_bank", "must be null or a mapping"),
    ({"source": "banks"}, "embedding_bank.source", "must be 'bank' or 'fresh'"),
    ({"staleness_sample": 1}, "embedding_bank.staleness_sample", "must be 0 (not measured) or an integer >= 2"),
    ({"staleness_sample": 2.5}, "embedding_bank.staleness_sample", "must be 0 (not measured) or an integer >= 2"),
    ({"staleness_k": 0}, "embedding_bank.staleness_k", "must be an integer >= 1"),
    ({"stalenes_sample": 8}, "embedding_bank.stalenes_sample", "unknown key"),
])
def test_bad_embedding_bank_values_raise_naming_the_key(tmp_path, value, key, message):
    with pytest.raises(ConfigError, match=re.escape(f"command line): {key}: {message}")):
        ExperimentRunner("bad", root_experiment_folder=str(tmp_path), overrides=[("embedding_bank", value)]).run()
    assert not (tmp_path / "bad" / "configs").exists()  # refused before anything was written


def test_a_trainer_that_embeds_batches_its_own_way_is_refused(tmp_path):
    from pytorch_metric_learning.trainers import MetricLossOnly

    class OwnTrainer(MetricLossOnly):
        pass

    registry = Registry()
    registry.register("trainer", OwnTrainer)
    overrides = QUIET + [("trainer~OVERRIDE~", {"OwnTrainer": {"batch_size": 64}}), ("embedding_bank", {})]
    expected = "embedding_bank: needs a trainer that embeds every training batch once " \
               "(MetricLossOnly, TrainWithClassifier, CascadedEmbeddings), got OwnTrainer"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        ExperimentRunner("own", root_experiment_folder=str(tmp_path), overrides=overrides, registry=registry).run()


def all_records(folder):
    names = [n for (n,) in query(folder, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {n: query(folder, f"SELECT * FROM {n}") for n in names}


def test_a_run_stopped_and_resumed_ends_with_the_same_bank_and_batches(tmp_path):
    # Class-level hard batches over 192 of the 676 samples an epoch: some rows are stale, some
    # never written, so the resumed run depends on every part of the saved bank.
    overrides = QUIET + [("save_interval", 1), ("mining_funcs~OVERRIDE~", {}),
                         ("loss_funcs~OVERRIDE~", {"metric_loss": {"ContrastiveLoss": None}}),
                         ("trainer~APPLY~2", {"iterations_per_epoch": None}),
                         ("sampler~OVERRIDE~", {"ClassHardBatchSampler": {
                             "classes_per_batch": 4, "samples_per_class": 16, "classes_per_seed": 2,
                             "neighbours": 2, "random_share": 0.25, "length_before_new_iter": 192}}),
                         ("embedding_bank", {"staleness_sample": 32})]
    root = str(tmp_path)
    ExperimentRunner("whole", root_experiment_folder=root, overrides=overrides + [("num_epochs_train", 3)]).run()
    ExperimentRunner("split", root_experiment_folder=root, overrides=overrides + [("num_epochs_train", 1)]).run()
    resumed = ExperimentRunner("split", root_experiment_folder=root, resume_training="latest",
                               overrides=[("num_epochs_train", 3)])
    assert resumed.run()["schemes"][SCHEME]["start_epoch"] == 2
    whole, split = saved(tmp_path / "whole", 3), saved(tmp_path / "split", 3)
    assert {"embedding_bank_3.pth", "sampler_3.pth", "trunk_3.pth"} <= whole.keys() == split.keys()
    for name in whole:
        assert same(whole[name], split[name]), name
    bank = whole["embedding_bank_3.pth"]
    assert 0 < int(bank["filled"].sum()) < 676 and set(bank["written_epoch"].unique().tolist()) >= {2, 3}
    records_whole, records_split = all_records(tmp_path / "whole"), all_records(tmp_path / "split")
    assert records_whole.keys() == records_split.keys() and "embedding_bank" in records_whole
    for table in records_whole:
        assert records_whole[table] == records_split[table], table
    # The bank the resumed run ended with is the one it saved.
    assert same(resumed.objects[SCHEME]["embedding_bank"].state_dict(), bank)


GLOBAL_INDEX_RECIPES = {
    # Algorithm 1's triplet batches over the global index (batches of 63 rows: 21 triplets).
    "smart": ("SmartMiner", [("mining_funcs~OVERRIDE~",
                              {"tuple_miner": {"SmartMiner": {"k": 8, "batch_layout": True}}}),
                             ("loss_funcs~OVERRIDE~", {"metric_loss": {"TripletMarginLoss": None}}),
                             ("sampler~OVERRIDE~", {"SmartBatchSampler": {"warmup_epochs": 1}}),
                             ("trainer~APPLY~2", {"iterations_per_epoch": 4, "batch_size": 63})]),
    # Random positive pairs and their hard neighbours from the global index.
    "hard neighbours": ("HardNeighborSampler", [
        ("mining_funcs~OVERRIDE~", {}), ("loss_funcs~OVERRIDE~", {"metric_loss": {"ContrastiveLoss": None}}),
        ("sampler~OVERRIDE~", {"HardNeighborSampler": {"pairs_per_batch": 4}}),
        ("trainer~APPLY~2", {"iterations_per_epoch": 4, "batch_size": 64})]),
}


@pytest.mark.parametrize("recipe", sorted(GLOBAL_INDEX_RECIPES))
def test_global_index_methods_are_fed_by_the_bank(tmp_path, spy_rows, monkeypatch, recipe):
    """Smart mining and hard-neighbour batches build their index from the bank: the embeddings their
    update gets are the bank's rows where a training batch wrote them, and only the unwritten rows
    (and the staleness sample) are embedded fresh, never the whole training set."""
    cls_name, overrides = GLOBAL_INDEX_RECIPES[recipe]
    cls = getattr(pml_ext, cls_name)
    updates, original = [], cls.update

    def update(self, embeddings, *args, **kwargs):
        updates.append(embeddings.detach().cpu().clone())
        return original(self, embeddings, *args, **kwargs)

    monkeypatch.setattr(cls, "update", update)
    runner = ExperimentRunner("global", root_experiment_folder=str(tmp_path),
                              overrides=QUIET + overrides + [("num_epochs_train", 2),
                                                             ("embedding_bank", {"staleness_sample": 16})])
    runner.run()
    bank = runner.objects[SCHEME]["embedding_bank"]
    assert len(updates) == 2 and all(rows is not None for rows in spy_rows)  # no pass over the training set
    written = bank.filled
    assert 0 < int(written.sum()) < 676  # 4 batches an epoch visit part of the 676 samples
    assert torch.equal(updates[-1][written], bank.embeddings[written])
    unwritten = (~written).nonzero().flatten()
    assert torch.equal(spy_rows[-1][:unwritten.numel()], unwritten)  # those rows only, then the sample
    assert spy_rows[-1].numel() == unwritten.numel() + 16


@pytest.mark.slow
def test_two_ranks_gather_the_bank_of_one_process(tmp_path):
    """``torchrun --nproc_per_node 2`` against one process, with a frozen model (learning rate 0):
    every row is then the model's embedding of that sample whichever rank or step wrote it, so
    the gathered bank must equal the single-process bank, and bank and fresh pass agree."""
    from test_runner_distributed import torchrun

    sampler = {"ClassHardBatchSampler": {"classes_per_batch": 4, "samples_per_class": 16, "neighbours": 2,
                                         "length_before_new_iter": 256}}
    frozen = {name: {"Adam": {"lr": 0.0}} for name in ("trunk_optimizer", "embedder_optimizer")}
    overrides = [("num_epochs_train", 2), ("mining_funcs~OVERRIDE~", {}), ("save_interval", 1),
                 ("loss_funcs~OVERRIDE~", {"metric_loss": {"ContrastiveLoss": None}}),
                 ("trainer~APPLY~2", {"iterations_per_epoch": None}), ("sampler~OVERRIDE~", sampler),
                 ("optimizers~OVERRIDE~", frozen), ("embedding_bank", {"staleness_sample": 64})]
    ExperimentRunner("one", root_experiment_folder=str(tmp_path), overrides=QUIET + overrides).run()
    args = [word for key, value in overrides for word in (f"--{key}", yaml_flow(value))]
    result = torchrun(tmp_path, "--experiment_name", "two", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (saved(tmp_path / name, 2)["embedding_bank_2.pth"] for name in ("one", "two"))
    # 4 batches an epoch: batches 0 and 2 on rank 0, 1 and 3 on rank 1; the union is the epoch.
    assert torch.equal(one["filled"], two["filled"]) and torch.equal(one["written_epoch"], two["written_epoch"])
    assert 128 < int(two["filled"].sum()) < 676  # more than one rank's rows
    assert torch.allclose(one["embeddings"], two["embeddings"], atol=1e-5)
    columns = "written_share, unwritten_rows, fresh_rows"
    assert query(tmp_path / "one", f"SELECT {columns} FROM embedding_bank") == \
        query(tmp_path / "two", f"SELECT {columns} FROM embedding_bank")
    staleness = query(tmp_path / "two", "SELECT staleness_mean_distance, staleness_recall FROM embedding_bank")
    assert len(staleness) == 2 and all(d < 1e-5 and r > 0.99 for d, r in staleness)


def yaml_flow(value):
    """``value`` as one command-line word of YAML flow style."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()
