import dataclasses
import os
from pathlib import Path

import pytest

from dpdiffusion.data.known_sizes import KNOWN, needed_files, planned_without_files
from dpdiffusion.nets.unet import UNetConfig
from dpdiffusion.runconfig import ConfigError, DataConfig

MODELS = {name: UNetConfig(img_resolution=known.shape[1], in_channels=known.shape[0], out_channels=known.shape[0],
                           attn_resolutions=(), num_classes=known.num_classes)
          for name, known in KNOWN.items()}


@pytest.mark.parametrize("name, size", [("mnist", 60000), ("fmnist", 60000), ("cifar10", 50000),
                                        ("celeba32", 162770), ("celeba64", 162770), ("imagenet32", 1281167)])
def test_a_canonical_dataset_not_on_disk_plans_from_its_published_size(tmp_path, name, size):
    planned = planned_without_files(DataConfig(name=name, data_dir=str(tmp_path)), MODELS[name])
    assert planned is not None and len(planned) == size and planned.source == name
    assert str(tmp_path) in planned.note and "not found" in planned.note and "\n" not in planned.note
    with pytest.raises(RuntimeError, match="not on disk"):
        planned.batch(None)
    subset = planned_without_files(DataConfig(name=name, data_dir=str(tmp_path), subset="1000:"), MODELS[name])
    assert len(subset) == size - 1000


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_data_on_disk_are_loaded_not_planned_from_the_table(tmp_path, name):
    for path in needed_files(DataConfig(name=name, data_dir=str(tmp_path))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert planned_without_files(DataConfig(name=name, data_dir=str(tmp_path)), MODELS[name]) is None


def test_other_datasets_are_always_loaded():
    for data in (DataConfig(name="digits"), DataConfig(name="imagefolder", path="/nowhere"), DataConfig(name="npz")):
        assert needed_files(data) is None and planned_without_files(data, MODELS["mnist"]) is None


def test_the_plan_is_checked_against_the_model_as_loaded_data_are(tmp_path):
    data = DataConfig(name="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="the images are 3x32x32 .* but the model expects 1x28x28"):
        planned_without_files(data, UNetConfig(attn_resolutions=()))
    with pytest.raises(ConfigError, match="labels go up to 9 .* model.num_classes is 2"):
        planned_without_files(data, dataclasses.replace(MODELS["cifar10"], num_classes=2))
    resized = planned_without_files(DataConfig(name="celeba64", data_dir=str(tmp_path), resolution=32), MODELS["celeba32"])
    assert resized is not None and len(resized) == 162770


@pytest.mark.skipif(not (Path(os.environ.get("DPDIFFUSION_DATA_DIR", "/nowhere")) / "mnist").is_dir(),
                    reason="needs local MNIST files ($DPDIFFUSION_DATA_DIR)")
def test_the_table_matches_the_loader_where_the_files_are_here():
    from dpdiffusion.data.datasets import load_images

    for split in ("train", "test"):
        images, labels = load_images(DataConfig(name="mnist"), split)
        assert len(labels) == KNOWN["mnist"].sizes[split] and tuple(images.shape[1:]) == KNOWN["mnist"].shape
        assert int(labels.max()) + 1 == KNOWN["mnist"].num_classes
