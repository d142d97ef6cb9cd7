import pytest
import torch
import torch.nn.functional as F

from dpdiffusion.diffusion.augment import Augment, translate
from dpdiffusion.diffusion.loss import DenoisingLoss
from dpdiffusion.diffusion.preconditioning import EDMPrecond
from dpdiffusion.dpsgd.per_example import make_engine
from dpdiffusion.nets.unet import UNet, UNetConfig
from tests.dpsgd.toys import reference_per_example_grads


def slow_translate(image, dy, dx, p):
    padded = F.pad(image.unsqueeze(0), (p, p, p, p), mode="reflect")[0]
    h, w = image.shape[-2:]
    return padded[:, p - dy : p - dy + h, p - dx : p - dx + w]


def test_translation_matches_pad_and_crop_one_image_at_a_time():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(12, 2, 7, 9, generator=generator)
    shifts = torch.randint(-3, 4, (12, 2), generator=generator)
    out = translate(images, shifts, 3)
    for n in range(12):
        torch.testing.assert_close(out[n], slow_translate(images[n], int(shifts[n, 0]), int(shifts[n, 1]), 3))
    torch.testing.assert_close(translate(images, torch.zeros(12, 2, dtype=torch.long), 3), images)


def test_copies_are_augmentations_of_their_own_example_only():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    augment = Augment(flip=True, crop_padding=1)
    copies = augment(x, 8, torch.Generator().manual_seed(1))
    assert copies.shape == (2, 8, 1, 4, 4)
    changed = x.clone()
    changed[1] = -changed[1]
    again = augment(changed, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again[0], copies[0])  # example 0's copies do not depend on example 1
    for k in range(8):  # every copy is one of the flips/translations of its own image
        candidates = [slow_translate(img, dy, dx, 1) for img in (x[0], x[0].flip(-1))
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        assert any(torch.equal(copies[0, k], c) for c in candidates)


def test_flips_happen_half_of_the_time_and_inactive_augment_adds_no_draws():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    copies = Augment(flip=True)(x, 4000, torch.Generator().manual_seed(2))
    flipped = (copies[0] == x[0].flip(-1)).flatten(1).all(dim=1).float().mean()
    assert abs(float(flipped) - 0.5) < 0.03
    loss = DenoisingLoss(EDMPrecond(torch.nn.Identity()), multiplicity=2)
    assert "clean" not in loss.draw({"x": x}, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        Augment(crop_padding=-1)


@pytest.mark.parametrize("engine", ["vmap", "layerwise", "opacus"])
def test_per_example_gradients_with_augmentation_multiplicity(engine):
    torch.manual_seed(0)
    model = EDMPrecond(UNet(UNetConfig(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                                       attn_resolutions=(4,), num_classes=3)))
    with torch.no_grad():
        model.net.conv_out.weight.normal_(0, 0.1)
    loss = DenoisingLoss(model, multiplicity=3, num_classes=3, augment=Augment(flip=True, crop_padding=2))
    generator = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(3, 1, 8, 8, generator=generator), "y": torch.tensor([0, 2, 1])}
    draws = loss.draw(batch, generator)
    assert draws["clean"].shape == (3, 3, 1, 8, 8)
    grads, losses = make_engine(engine, model, loss).per_example_grads(batch, draws)
    expected = reference_per_example_grads(model, loss, batch, draws)
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(losses, loss(model, batch, draws).detach(), atol=1e-5, rtol=1e-5)
