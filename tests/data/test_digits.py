import torch

from dpdiffusion.data.digits import load_digits, to_model_range


def test_fixed_public_split_is_disjoint_and_complete():
    train_x, train_y = load_digits("train")
    test_x, test_y = load_digits("test")
    assert len(train_x) + len(test_x) == 1797 and len(test_x) == 360
    assert train_x.dtype == torch.uint8 and train_x.shape[1:] == (1, 8, 8)
    assert set(train_y.unique().tolist()) == set(range(10)) == set(test_y.unique().tolist())
    train_rows = {bytes(x.numpy()) for x in train_x}
    assert sum(bytes(x.numpy()) in train_rows for x in test_x) < 20  # only exact duplicates inside the source data


def test_resize_and_fixed_scaling():
    x, _ = load_digits("train", resolution=16)
    assert x.shape[1:] == (1, 16, 16)
    scaled = to_model_range(x)
    assert scaled.min() >= -1 and scaled.max() <= 1
    assert torch.equal(to_model_range(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
