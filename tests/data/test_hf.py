import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from dpdiffusion.data.download import DatasetFileError  # noqa: E402
from dpdiffusion.data.hf import load_hf_split  # noqa: E402
from dpdiffusion.data.labels import FROM_CLASS_LABEL, FROM_COLUMN  # noqa: E402
from dpdiffusion.runconfig import ConfigError  # noqa: E402


def pictures(values, size=(7, 5)):
    from PIL import Image

    return [Image.fromarray(np.full((size[1], size[0], 3), v, dtype=np.uint8)) for v in values]


def save(path, images, labels, label_feature=None, **columns):
    features = {"image": datasets.Image(), "label": label_feature or datasets.Value("int64")}
    features.update({k: datasets.Value("string") for k in columns})
    data = datasets.Dataset.from_dict({"image": images, "label": labels, **columns},
                                      features=datasets.Features(features))
    data.save_to_disk(str(path))
    return str(path)


def test_a_saved_dataset_with_a_class_label_loads_with_its_names(tmp_path):
    path = save(tmp_path / "ds", pictures([10, 20, 30]), [1, 0, 1], datasets.ClassLabel(names=["cat", "dog"]))
    x, y, names = load_hf_split("train", path, None, 4, channels=3)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 4, 4) and y.tolist() == [1, 0, 1]
    assert [int(v) for v in x[:, 0, 0, 0]] == [10, 20, 30]
    assert names.names == ("cat", "dog") and names.source == FROM_CLASS_LABEL


def test_a_column_of_names_and_configured_columns(tmp_path):
    data = datasets.Dataset.from_dict({"picture": pictures([5, 6]), "kind": ["zebra", "ant"]},
                                      features=datasets.Features({"picture": datasets.Image(),
                                                                  "kind": datasets.Value("string")}))
    data.save_to_disk(str(tmp_path / "ds"))
    x, y, names = load_hf_split("train", str(tmp_path / "ds"), None, 4, 1, image_column="picture", label_column="kind")
    assert x.shape == (2, 1, 4, 4) and y.tolist() == [1, 0]
    assert names.names == ("ant", "zebra") and names.source == FROM_COLUMN


def test_a_dataset_dict_gives_its_train_and_test_splits(tmp_path):
    feature = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": pictures([1, 2]), "label": [0, 1]}, features=feature),
        "test": datasets.Dataset.from_dict({"image": pictures([3]), "label": [1]}, features=feature)})
    splits.save_to_disk(str(tmp_path / "dd"))
    x, y, names = load_hf_split("test", str(tmp_path / "dd"), None, 4, 3)
    assert len(x) == 1 and y.tolist() == [1] and names.names == ("a", "b")
    only_train = save(tmp_path / "one", pictures([1]), [0])
    with pytest.raises(ConfigError, match="data.test_path: not set, and .* has no test split"):
        load_hf_split("test", only_train, None, 4)


@pytest.mark.parametrize("make, kwargs, message", [
    (lambda p: save(p, pictures([1, 2]), [0, -1]), {}, r"row 1 \(label\): the label -1 is negative"),
    (lambda p: save(p, pictures([1]), [0]), {"image_column": "img"}, r"has no column 'img' \(data.image_column"),
    (lambda p: save(p, pictures([1]), [0]), {"label_column": "y"}, r"has no column 'y' \(data.label_column"),
    (lambda p: save(p, pictures([1]), [0], note=["x"]), {"image_column": "note"}, "not an Image feature"),
])
def test_bad_columns_are_one_line_errors(tmp_path, make, kwargs, message):
    path = make(tmp_path / "ds")
    with pytest.raises(DatasetFileError, match=message) as raised:
        load_hf_split("train", path, None, 4, **kwargs)
    assert "\n" not in str(raised.value)


def test_a_folder_that_is_no_saved_dataset_is_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetFileError, match="is not a dataset saved by save_to_disk") as raised:
        load_hf_split("train", str(tmp_path / "plain"), None, 4)
    assert "\n" not in str(raised.value)
