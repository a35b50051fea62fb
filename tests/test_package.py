import pytest
import torch

import pml_ext
from pml_ext.utils import check_embeddings, check_labels, check_positive


def test_digits_split_is_class_disjoint_and_complete():
    from sklearn.datasets import load_digits

    train, test = pml_ext.digits_split()
    assert set(train.labels.tolist()) == {0, 1, 2, 3, 4}
    assert set(test.labels.tolist()) == {5, 6, 7, 8, 9}
    assert len(train) + len(test) == len(load_digits().target)
    x, y = train[0]
    assert x.shape == (64,) and isinstance(y, int)


def test_mlp_shapes():
    model = pml_ext.MLP([64, 256, 2])
    assert model(torch.zeros(5, 64)).shape == (5, 2)
    assert sum(isinstance(m, torch.nn.ReLU) for m in model) == 1


@pytest.mark.parametrize(
    "bad, err, word",
    [
        ([[1.0]], TypeError, "embeddings"),
        (torch.zeros(3), ValueError, "2-D"),
        (torch.zeros(3, 2, dtype=torch.long), TypeError, "floating"),
        (torch.tensor([[0.0, float("nan")]]), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, "NaN or inf"),
        (torch.zeros(0, 2), ValueError, "empty"),
    ],
)
def test_check_embeddings_names_the_argument(bad, err, word):
    with pytest.raises(err, match=word):
        check_embeddings(bad)


def test_check_labels_and_positive():
    with pytest.raises(ValueError, match="labels has length 2"):
        check_labels(torch.tensor([0, 1]), 3)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        check_labels(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="kappa must be > 0"):
        check_positive(0, "kappa")
    check_positive(0, "margin", allow_zero=True)
