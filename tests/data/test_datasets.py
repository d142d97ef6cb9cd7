import pytest
import torch

import dpdiffusion.data.datasets as datasets
from dpdiffusion.data.datasets import DATASETS, load_dataset, subset_range
from dpdiffusion.runconfig import ConfigError, DataConfig
from tests.data.fakes import write_png


def test_every_name_is_listed_and_an_unknown_one_names_the_setting():
    assert DATASETS == ("digits", "mnist", "fmnist", "cifar10", "celeba32", "celeba64", "imagenet32", "imagefolder")
    with pytest.raises(ConfigError, match=r"data.name: unknown dataset 'svhn' \(available: digits, mnist"):
        load_dataset(DataConfig(name="svhn"), "train")


@pytest.mark.parametrize("name, loader, expected_args", [
    ("fmnist", "load_fmnist", ("train", "/d")),
    ("cifar10", "load_cifar10", ("train", "/d")),
    ("imagenet32", "load_imagenet32", ("train", "/d")),
    ("celeba32", "load_celeba", ("train", 32, "Smiling", "/d")),
    ("celeba64", "load_celeba", ("train", 64, "Smiling", "/d")),
])
def test_names_reach_their_loaders_with_the_settings(monkeypatch, name, loader, expected_args):
    calls = []

    def fake(*args):
        calls.append(args)
        return torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64)

    monkeypatch.setattr(datasets, loader, fake)
    dataset = load_dataset(DataConfig(name=name, data_dir="/d", label_attribute="Smiling"), "train")
    assert calls == [expected_args] and len(dataset) == 2


def test_imagefolder_through_the_configuration_is_scaled_to_the_model_range(tmp_path):
    write_png(tmp_path / "train" / "a" / "x.png", (10, 12), 0)
    write_png(tmp_path / "train" / "b" / "y.png", (7, 5), 255)
    data = DataConfig(name="imagefolder", path=str(tmp_path / "train"), resolution=8, channels=1)
    batch = load_dataset(data, "train").batch(torch.tensor([0, 1]))
    assert batch["x"].shape == (2, 1, 8, 8) and batch["y"].tolist() == [0, 1]
    assert batch["x"][0].unique().tolist() == [-1.0] and batch["x"][1].unique().tolist() == [1.0]


@pytest.mark.parametrize("subset, expected", [(":500", range(0, 500)), ("500:", range(500, 1437)),
                                              ("10:20", range(10, 20)), ("-37:", range(1400, 1437))])
def test_a_subset_is_a_fixed_range_of_the_training_split(subset, expected):
    assert subset_range(subset, 1437) == expected
    full, part = load_dataset(DataConfig(name="digits"), "train"), load_dataset(DataConfig(name="digits", subset=subset), "train")
    assert torch.equal(part.x, full.x[expected.start:expected.stop]) and torch.equal(part.y, full.y[expected.start:expected.stop])
    assert len(load_dataset(DataConfig(name="digits", subset=subset), "test")) == 360  # the test split is whole


@pytest.mark.parametrize("subset", ["abc", "1:2:3", "5", "100:10", "2000:"])
def test_a_bad_subset_is_a_config_error(subset):
    with pytest.raises(ConfigError, match="data.subset"):
        subset_range(subset, 1437)
