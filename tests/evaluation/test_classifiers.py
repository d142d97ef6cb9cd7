import numpy as np
import pytest
import torch

from dpdiffusion.evaluation.classifiers import (CLASSIFIERS, ClassifierSettings, default_classifiers, fits,
                                                make_classifier, min_resolution, train_and_test)
from dpdiffusion.nets.unet import count_parameters


def test_dpdm_cnn_has_the_papers_layout_at_28x28():
    cnn = make_classifier("cnn", 1, 28, 10)
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and all(c.kernel_size == (3, 3) for c in convs)
    assert [(l.in_features, l.out_features) for l in linears] == [(1152, 128), (128, 10)]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in cnn.modules()) == 3
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in cnn.modules()) == 2
    assert all(c.padding == (0, 0) for c in convs)
    mlp = make_classifier("mlp", 1, 28, 10)
    assert [(l.in_features, l.out_features) for l in mlp.modules() if isinstance(l, torch.nn.Linear)] == [(784, 100), (100, 10)]
    assert count_parameters(make_classifier("logreg", 1, 28, 10)) == 7850


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_every_classifier_maps_images_to_logits(name, shape):
    channels, side = shape
    logits = make_classifier(name, channels, side, 10).eval()(torch.rand(2, channels, side, side))
    assert logits.shape == (2, 10)


def test_defaults_follow_the_number_of_channels():
    assert default_classifiers(1) == ("logreg", "mlp", "cnn") and "resnet9" in default_classifiers(3)


def blobs(n, seed):
    """Two classes: bright top half or bright bottom half, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, size=(n, 8, 8, 1))
    for i, y in enumerate(labels):
        images[i, :4] += 150 if y == 0 else 0
        images[i, 4:] += 150 if y == 1 else 0
    return images.astype(np.uint8), labels


def test_training_on_a_separable_task_scores_well_and_never_looks_at_test_labels():
    train, test = blobs(200, 0), blobs(100, 1)
    settings = ClassifierSettings(epochs=5, batch_size=32, lr=3e-3)
    result = train_and_test("logreg", *train, *test, num_classes=2, settings=settings)
    assert result["test_accuracy"] > 0.95
    assert result["train_images"] == 180 and result["val_images"] == 20 and 1 <= result["best_epoch"] <= 5
    flipped = train_and_test("logreg", *train, test[0], 1 - test[1], num_classes=2, settings=settings)
    assert flipped["best_epoch"] == result["best_epoch"]  # the epoch is chosen on synthetic data only
    assert flipped["test_accuracy"] == pytest.approx(1 - result["test_accuracy"])


def runs_on(name, channels, side):
    """The slow way: build the classifier on the CPU and run real images through it."""
    try:
        return make_classifier(name, channels, side, 10).eval()(torch.rand(2, channels, side, side)).shape == (2, 10)
    except RuntimeError:
        return False


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the CNN one side too small
@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("channels", [1, 3])
def test_min_resolution_is_where_the_classifier_starts_to_run(name, channels):
    side = min_resolution(name, channels)
    assert runs_on(name, channels, side) and fits(name, channels, side)
    assert side == 1 or not (runs_on(name, channels, side - 1) or fits(name, channels, side - 1))
    assert all(fits(name, channels, s) for s in range(side, side + 12))


def test_min_resolutions_follow_the_architectures():
    # DPDM's CNN: unpadded 3x3 convolutions and 2x2 pools, 18 -> 16 -> 8 -> 6 -> 3 -> 1; ResNet-9: three 2x2 pools
    assert [min_resolution(n) for n in CLASSIFIERS] == [1, 1, 18, 8]
