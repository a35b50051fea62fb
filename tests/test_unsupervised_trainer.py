"""``UnsupervisedEmbeddingsUsingAugmentations``: every item through every augmentation, the copies of one
item sharing a pseudo-label (its position in the batch), the data set's labels never read.

Oracles: a hand-built batch whose collated rows and pseudo-labels are written out in the test,
and a loss that records the labels it is given during real training iterations.
"""
import torch
from pytorch_metric_learning.losses import ContrastiveLoss

from pml_ext.runner.objects.unsupervised_trainer import UnsupervisedEmbeddingsUsingAugmentations


class Items(torch.utils.data.Dataset):
    """Item i is (a [2]-vector [i, 0], label 7): every item has the same real label."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i), 0.0]), 7


class RecordingLoss(ContrastiveLoss):
    """PML's contrastive loss that keeps the labels of every call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, embeddings, labels, *args, **kwargs):
        self.seen.append(labels.tolist())
        return super().forward(embeddings, labels, *args, **kwargs)


def trainer(dataset, loss, transforms, batch_size, device=None, iterations=1):
    model = torch.nn.Linear(2, 4).to(device or "cpu")
    return UnsupervisedEmbeddingsUsingAugmentations(
        transforms, None, {"trunk": model, "embedder": torch.nn.Identity()},
        {"trunk_optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}, batch_size, {"metric_loss": loss},
        dataset, iterations_per_epoch=iterations, dataloader_num_workers=0, data_device=device)


def test_a_batch_gives_every_items_copies_its_position_as_label():
    shift, double = (lambda x: x + 1), (lambda x: x * 2)
    t = trainer(Items(3), RecordingLoss(), [shift, double], 3)
    data, labels = t.augmented_batch([Items(3)[i] for i in (2, 0, 1)])
    # items [2, 0], [0, 0], [1, 0], in that order: shift then double of each
    assert data.tolist() == [[3, 1], [4, 0], [1, 1], [0, 0], [2, 1], [2, 0]]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]     # the real label (7) is never used


def test_training_iterations_give_the_loss_the_pseudo_labels(device):
    loss = RecordingLoss()
    gen = torch.Generator().manual_seed(0)
    noise = [lambda x: x + 0.1 * torch.randn(2, generator=gen) for _ in range(3)]
    t = trainer(Items(8), loss, noise, 4, device=device, iterations=2)
    t.train(num_epochs=1)
    # two iterations of 4 items x 3 copies
    assert loss.seen == [[0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]] * 2
