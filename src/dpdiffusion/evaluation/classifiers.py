"""Downstream classifiers, DPDM's protocol: trained only on synthetic images (90%), the epoch chosen on the
held-back synthetic 10%, accuracy reported on the real test set; the same classifier trained on the real
training set is the ceiling. Adam, lr 3e-4, 50 epochs, batch 128, pixels mapped to [-1, 1] (DPDM's
train_downstream_classifiers). One difference: we reshuffle the training images every epoch.

These classifiers are evaluation tools that never leave the data owner, so ordinary training applies
(BatchNorm in ResNet-9 included). They run on the GPU when there is one."""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CLASSIFIERS = ("logreg", "mlp", "cnn", "resnet9")


@dataclass(frozen=True)
class ClassifierSettings:
    epochs: int = 50
    batch_size: int = 128
    lr: float = 3e-4
    val_fraction: float = 0.1
    seed: int = 0


def default_classifiers(channels: int) -> tuple[str, ...]:
    """DPDM's three for grayscale data; ResNet-9 instead of the small CNN for colour images."""
    return ("logreg", "mlp", "cnn") if channels == 1 else ("logreg", "mlp", "resnet9")


def _dpdm_cnn(channels: int, resolution: int, num_classes: int) -> nn.Module:
    """DPDM's CNN: conv 3x3 (32), max-pool, ReLU, dropout 0.5; conv 3x3 (64), max-pool, ReLU, dropout 0.5;
    conv 3x3 (128), ReLU; then 128 -> ReLU -> dropout 0.5 -> classes. Unpadded convolutions: at 28x28 the sides
    go 26, 13, 11, 5, 3 and the flattened size is 128 * 3 * 3 = 1152."""
    side = ((resolution - 2) // 2 - 2) // 2 - 2
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(32, 64, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(0.5),
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(128 * side * side, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes),
    )


def _conv_bn(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _resnet9(channels: int, num_classes: int) -> nn.Module:
    """ResNet-9 (the DAWNBench CIFAR-10 network): prep 64, 128 + residual, 256, 512 + residual, pool, linear."""
    return nn.Sequential(
        _conv_bn(channels, 64), _conv_bn(64, 128, pool=True), _Residual(128), _conv_bn(128, 256, pool=True),
        _conv_bn(256, 512, pool=True), _Residual(512), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, num_classes),
    )


def make_classifier(name: str, channels: int, resolution: int, num_classes: int) -> nn.Module:
    inputs = channels * resolution * resolution
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(inputs, num_classes))
    if name == "mlp":  # DPDM: 784-100-10
        return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 100), nn.ReLU(), nn.Linear(100, num_classes))
    if name == "cnn":
        return _dpdm_cnn(channels, resolution, num_classes)
    if name == "resnet9":
        return _resnet9(channels, num_classes)
    raise ValueError(f"unknown classifier {name!r} (choose from {', '.join(CLASSIFIERS)})")


def fits(name: str, channels: int, resolution: int) -> bool:
    """Whether classifier ``name`` takes images of ``channels`` x ``resolution`` x ``resolution``: the network is
    built and run on the meta device (shapes only, no memory, no arithmetic), so the answer comes from its layers."""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # "Initializing zero-element tensors is a no-op"
            model = make_classifier(name, channels, resolution, 2).eval()
            logits = model(torch.empty(1, channels, resolution, resolution))
    except (RuntimeError, ValueError):  # a kernel larger than its input, a pooled side of 0, a negative width
        return False
    return tuple(logits.shape) == (1, 2)


@functools.cache
def min_resolution(name: str, channels: int = 1, largest: int = 512) -> int:
    """The smallest image side classifier ``name`` takes (DPDM's CNN: 18, its unpadded convolutions and pools go
    18, 16, 8, 6, 3, 1; ResNet-9: 8, three 2x2 pools; the others: 1)."""
    for side in range(1, largest + 1):
        if fits(name, channels, side):
            return side
    raise ValueError(f"classifier {name!r} takes no image side up to {largest}")


def _tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1] (a fixed map, as in DPDM)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


def train_and_test(name: str, train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                   test_labels: np.ndarray, *, num_classes: int, settings: ClassifierSettings = ClassifierSettings(),
                   progress: bool = False) -> dict:
    """Train on (90% of) ``train_*``, pick the epoch by accuracy on the other 10%, report accuracy on ``test_*``."""
    from tqdm import tqdm

    if len(train_images) < 10:
        raise ValueError(f"need at least 10 training images for a classifier, got {len(train_images)}")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(train_images))
    n_val = max(1, int(round(settings.val_fraction * len(order))))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_all, y_all = _tensor(train_images, device), torch.as_tensor(np.asarray(train_labels, dtype=np.int64), device=device)
    fit_t, val_t = torch.from_numpy(fit_idx).to(device), torch.from_numpy(val_idx).to(device)
    x_fit, y_fit, x_val, y_val = x_all[fit_t], y_all[fit_t], x_all[val_t], y_all[val_t]
    x_test = _tensor(test_images, device)
    y_test = torch.as_tensor(np.asarray(test_labels, dtype=np.int64), device=device)

    torch.manual_seed(settings.seed)
    model = make_classifier(name, x_fit.shape[1], x_fit.shape[-1], num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    bar = tqdm(range(1, settings.epochs + 1), desc=f"classifier {name}", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_fit), generator=generator).to(device)
        for start in range(0, len(perm), settings.batch_size):
            idx = perm[start : start + settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x_fit[idx]), y_fit[idx]).backward()
            optimizer.step()
        val = accuracy(model, x_val, y_val)
        if val > best[0]:
            best = (val, epoch, copy.deepcopy(model.state_dict()))
        bar.set_postfix(val=f"{val:.3f}", best_epoch=best[1])
    model.load_state_dict(best[2])
    return {
        "classifier": name, "test_accuracy": accuracy(model, x_test, y_test), "val_accuracy": best[0],
        "best_epoch": best[1], "epochs": settings.epochs, "train_images": len(fit_idx), "val_images": n_val,
        "test_images": len(x_test),
    }
