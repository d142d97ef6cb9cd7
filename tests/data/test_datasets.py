import pytest
import torch

import dpdiffusion.data.datasets as datasets
from dpdiffusion.data.datasets import DATASETS, check_fits_model, check_labels_fit, load_dataset, subset_range
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import ConfigError, DataConfig
from tests.data.fakes import write_png


def test_every_name_is_listed_and_an_unknown_one_names_the_setting():
    assert DATASETS == ("digits", "mnist", "fmnist", "cifar10", "celeba32", "celeba64", "imagenet32", "imagefolder",
                        "csv", "npz", "hf")
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


def ten_class_folders(root, count: int = 10):
    for label in range(count):
        write_png(root / f"class{label}" / "x.png", (8, 8), 20 * label, mode="L")
    return DataConfig(name="imagefolder", path=str(root), resolution=8, channels=1)


@pytest.mark.parametrize("num_classes", [9, 2])
def test_more_classes_than_the_model_takes_are_refused_at_load(tmp_path, num_classes):
    """A tenth class would silently train as classifier-free guidance's "no label" (num_classes 9), or fail in
    training (num_classes 2)."""
    dataset = load_dataset(ten_class_folders(tmp_path), "train")
    model = UNetConfig(img_resolution=8, attn_resolutions=(), num_classes=num_classes)
    with pytest.raises(ConfigError, match=f"labels go up to 9 .* model.num_classes is {num_classes}: set model.num_classes to 10"):
        check_fits_model(dataset, model)
    check_fits_model(dataset, UNetConfig(img_resolution=8, attn_resolutions=(), num_classes=10))
    check_fits_model(dataset, UNetConfig(img_resolution=8, attn_resolutions=(), num_classes=0))  # unconditional: labels unused
    check_fits_model(dataset, model, "pretrain.data", labels=False)  # public labels a run may leave unused


def test_a_negative_label_is_refused():
    with pytest.raises(ConfigError, match="negative"):
        check_labels_fit(torch.tensor([0, -1, 3]), 10)


def test_own_sources_load_alike_and_carry_their_layouts_class_names(tmp_path):
    import numpy as np

    from dpdiffusion.data.labels import FROM_CSV, FROM_FOLDERS

    for name, value in (("ant", 40), ("cat", 200)):
        write_png(tmp_path / "folder" / name / "x.png", (8, 8), value, mode="L")
    (tmp_path / "list.csv").write_text("path,label\nfolder/ant/x.png,ant\nfolder/cat/x.png,cat\n")
    np.savez(tmp_path / "arrays.npz", images=np.array([[[40] * 8] * 8, [[200] * 8] * 8], dtype=np.uint8),
             labels=np.array([0, 1]))
    loaded = {name: load_dataset(DataConfig(name=name, path=str(tmp_path / file), resolution=4, channels=1), "train")
              for name, file in (("imagefolder", "folder"), ("csv", "list.csv"), ("npz", "arrays.npz"))}
    for name, dataset in loaded.items():
        assert dataset.source == name
        assert torch.equal(dataset.x, loaded["imagefolder"].x) and torch.equal(dataset.y, loaded["imagefolder"].y)
    assert loaded["imagefolder"].class_names.names == ("ant", "cat") and loaded["imagefolder"].class_names.source == FROM_FOLDERS
    assert loaded["csv"].class_names.source == FROM_CSV and loaded["npz"].class_names is None


def test_arrays_are_recorded_as_arrays_or_the_declared_name_never_as_a_loader_they_did_not_come_from():
    from dpdiffusion.data.dataset import ArrayDataset
    from dpdiffusion.data.datasets import recorded_class_names, recorded_name
    from dpdiffusion.data.labels import DECLARED

    arrays = ArrayDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    assert recorded_name(DataConfig(), arrays) == "arrays"  # the default data.name, digits, did not load them
    assert recorded_name(DataConfig(name="mnist"), arrays) == "arrays"
    assert recorded_name(DataConfig(name="xrays"), arrays) == "xrays"  # a name the user declared
    assert recorded_name(DataConfig(), load_dataset(DataConfig(), "test")) == "digits"
    declared = recorded_class_names(DataConfig(class_names=("a", "b")), arrays)
    assert declared.names == ("a", "b") and declared.source == DECLARED and recorded_class_names(DataConfig(), arrays) is None
    with pytest.raises(ConfigError, match="data.name: 'arrays' records data given as arrays through the Python API"):
        load_dataset(DataConfig(name="arrays"), "train")


def test_a_python_api_run_from_arrays_records_arrays_in_its_release(tmp_path):
    import json

    from safetensors import safe_open

    from dpdiffusion.data.dataset import ArrayDataset
    from dpdiffusion.data.transforms import to_model_range
    from dpdiffusion.methods import METHODS
    from dpdiffusion.runconfig import load_config
    from tests.tiny import TINY_RUN, write_config

    config = load_config(write_config(tmp_path, TINY_RUN), ["privacy.batch_size=8", "privacy.steps=1",
                                                            "training.checkpoint_every=1"])
    assert config.data.name == "digits"  # the default, which these arrays are not
    generator = torch.Generator().manual_seed(0)
    arrays = ArrayDataset(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator),
                          torch.arange(40) % 10, transform=to_model_range)
    method = METHODS["dpdm"]
    method.train(config, arrays, method.plan(config, len(arrays)), tmp_path / "run", progress=False)
    report = json.loads((tmp_path / "run" / "release" / "privacy.json").read_text())
    assert report["data"]["private"]["dataset"] == "arrays"
    with safe_open(str(tmp_path / "run" / "release" / "model.safetensors"), "pt") as f:
        header = json.loads(f.metadata()["dpdiffusion"])
    assert header["config"]["data"]["name"] == "arrays" and header["privacy"]["data"]["private"]["dataset"] == "arrays"


def test_declared_class_names_fix_the_indices_whatever_names_occur_in_the_data(tmp_path):
    """Names in a CSV's label column are numbered in sorted order when nothing is declared, so removing the only
    record of one class would renumber the others (every record's label changes: no longer one record's
    difference). With ``data.class_names`` the indices follow the declared list; a name not declared is refused."""
    from dpdiffusion.data.labels import DECLARED, FROM_CSV

    rows = [("ant", 40), ("cat", 120), ("dog", 200), ("cat", 160)]
    for i, (name, value) in enumerate(rows):
        write_png(tmp_path / f"{i}.png", (8, 8), value, mode="L")

    def load(kept, declared=()):
        (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{i}.png,{rows[i][0]}\n" for i in kept))
        return load_dataset(DataConfig(name="csv", path=str(tmp_path / "list.csv"), resolution=8, channels=1,
                                       class_names=declared),
                            "train")

    assert load(range(4)).y.tolist() == [0, 1, 2, 1] and load(range(4)).class_names.source == FROM_CSV
    assert load(range(1, 4)).y.tolist() == [0, 1, 0]  # without "ant", cat and dog are renumbered
    declared = ("dog", "ant", "cat", "eel")  # an order of the owner's, and a class without images
    full, neighbour = load(range(4), declared), load(range(1, 4), declared)
    assert full.y.tolist() == [1, 2, 0, 2] and neighbour.y.tolist() == [2, 0, 2]  # the others keep their indices
    assert full.class_names.names == declared and full.class_names.source == DECLARED
    with pytest.raises(ConfigError, match="the data's class 'dog' is not declared"):
        load(range(4), ("ant", "cat"))
