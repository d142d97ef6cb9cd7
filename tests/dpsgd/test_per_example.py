import pytest
import torch

from dpdiffusion.dpsgd.per_example import make_engine
from tests.dpsgd.toys import NoisyRegressionLoss, TinyDenoiser, make_batch, reference_per_example_grads

ENGINE_NAMES = ["vmap", "layerwise", "opacus"]


def assert_grads_close(actual, expected, atol=1e-5, rtol=1e-4):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
@pytest.mark.parametrize("layers", ["conv", "groupnorm", "linear", "embedding", "attention", "all"])
@pytest.mark.parametrize("b", [0, 1, 5])
def test_per_example_grads_match_microbatch_reference(engine_name, layers, b, generator):
    torch.manual_seed(0)
    model = TinyDenoiser(layers=layers)
    loss = NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(b, generator)
    draws = loss.draw(batch, generator)
    engine = make_engine(engine_name, model, loss)
    grads, losses = engine.per_example_grads(batch, draws)
    expected = reference_per_example_grads(model, loss, batch, draws)
    assert_grads_close(grads, expected)
    assert losses.shape == (b,)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
@pytest.mark.parametrize("shape", [(1, 5), (3, 8), (2, 7)])
def test_random_shapes(engine_name, shape, generator):
    """Channels and image sizes vary; gradients still equal the slow reference."""
    channels, size = shape
    torch.manual_seed(channels * 10 + size)
    model = TinyDenoiser(channels=channels, width=4)
    loss = NoisyRegressionLoss(multiplicity=1)
    b = int(torch.randint(1, 6, (1,), generator=generator))
    batch = make_batch(b, generator, channels=channels, size=size)
    draws = loss.draw(batch, generator)
    grads, _ = make_engine(engine_name, model, loss).per_example_grads(batch, draws)
    assert_grads_close(grads, reference_per_example_grads(model, loss, batch, draws))


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_multiplicity_gradient_is_gradient_of_mean_over_draws(engine_name, generator):
    """With K draws, each example's gradient is the mean of its K single-draw gradients."""
    torch.manual_seed(1)
    model = TinyDenoiser()
    k = 4
    loss = NoisyRegressionLoss(multiplicity=k)
    batch = make_batch(3, generator)
    draws = loss.draw(batch, generator)
    grads, losses = make_engine(engine_name, model, loss).per_example_grads(batch, draws)

    single = NoisyRegressionLoss(multiplicity=1)
    per_draw = [
        reference_per_example_grads(model, single, batch, {n: v[:, j : j + 1] for n, v in draws.items()})
        for j in range(k)
    ]
    expected = {n: sum(g[n] for g in per_draw) / k for n in grads}
    assert_grads_close(grads, expected)
    torch.testing.assert_close(losses, loss(model, batch, draws).detach(), atol=1e-5, rtol=1e-5)


def test_frozen_parameters_get_no_per_example_gradient(generator):
    torch.manual_seed(2)
    model = TinyDenoiser()
    model.conv_in.requires_grad_(False)
    loss = NoisyRegressionLoss()
    batch = make_batch(3, generator)
    draws = loss.draw(batch, generator)
    for engine_name in ENGINE_NAMES:
        grads, _ = make_engine(engine_name, model, loss).per_example_grads(batch, draws)
        assert "conv_in.weight" not in grads and "conv_out.weight" in grads
        assert_grads_close(grads, reference_per_example_grads(model, loss, batch, draws))


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown per-example gradient engine"):
        make_engine("magic", TinyDenoiser(), NoisyRegressionLoss())


def test_auto_engine_picks_layerwise_when_every_layer_has_a_rule_else_vmap():
    loss = NoisyRegressionLoss()
    assert make_engine("auto", TinyDenoiser(), loss).name == "layerwise"

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyDenoiser()
            self.scale = torch.nn.Parameter(torch.ones(1))  # a bare parameter: no per-layer rule

        def forward(self, x, sigma, labels):
            return self.net(x, sigma, labels) * self.scale

    assert make_engine("auto", Odd(), loss).name == "vmap"
    with pytest.raises(ValueError, match="no per-example rule.*'vmap' engine"):
        make_engine("layerwise", Odd(), loss)


@pytest.mark.parametrize("rule_bytes", [1, 2_000, 10**9])  # one example at a time, a few, all at once
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("small_layer", [0, 50, 10**9])  # every layer sliced, some whole-batch, all whole-batch
@pytest.mark.parametrize("name", ["layerwise", "ghost"])  # ghost: every Linear and Conv2d by ghost norm
def test_layerwise_clipped_sum_matches_clipping_the_reference(rule_bytes, k, small_layer, name, generator):
    from dpdiffusion.dpsgd.clipping import clip_and_sum

    torch.manual_seed(k)
    model = TinyDenoiser(width=6)
    model.conv_in.requires_grad_(False)
    loss = NoisyRegressionLoss(multiplicity=k)
    batch = make_batch(7, generator)
    batch["x"][4] = float("nan")  # a non-finite example contributes zero and is counted
    draws = loss.draw(batch, generator)
    engine = make_engine(name, model, loss)
    engine.rule_bytes, engine.small_layer = rule_bytes, small_layer
    for c in (1e-3, 0.05, 1e3):
        summed, stats, losses = engine.clipped_sum(batch, draws, max_grad_norm=c)
        expected, expected_stats = clip_and_sum(reference_per_example_grads(model, loss, batch, draws), max_grad_norm=c)
        assert stats == expected_stats and stats.nonfinite == 1
        assert_grads_close(summed, expected)
        assert losses.shape == (7,)


class WithHead(torch.nn.Module):
    """A small denoiser followed by ``head(mix, h)``, where ``mix`` is a 1-channel 3x3 convolution."""

    def __init__(self, head):
        super().__init__()
        self.net = TinyDenoiser(width=4)
        self.mix = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.head = head

    def forward(self, x, sigma, labels):
        return self.head(self.mix, self.net(x, sigma, labels))


@pytest.mark.parametrize("small_layer", [0, 10**9])
@pytest.mark.parametrize("name", ["layerwise", "ghost"])
def test_layerwise_clipped_sum_of_a_layer_used_twice(small_layer, name, generator):
    """A layer applied twice in one forward: its two contributions are added before the norm is taken (so it
    never gets a per-record ghost norm, which would be a sum of norms)."""
    from dpdiffusion.dpsgd.clipping import clip_and_sum

    torch.manual_seed(3)
    model, loss = WithHead(lambda mix, h: mix(mix(h))), NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(5, generator)
    draws = loss.draw(batch, generator)
    engine = make_engine(name, model, loss)
    engine.rule_bytes, engine.small_layer = 2_000, small_layer
    summed, stats, _ = engine.clipped_sum(batch, draws, max_grad_norm=0.05)
    expected, expected_stats = clip_and_sum(reference_per_example_grads(model, loss, batch, draws), max_grad_norm=0.05)
    assert stats == expected_stats and stats.clipped > 0
    assert_grads_close(summed, expected)


def test_tied_weights_are_refused_by_the_layer_engines_and_auto_picks_vmap(generator):
    """Two layers sharing one weight: the per-layer rules would count one layer's share only, so the layer
    engines refuse the model and ``auto`` falls back to vmap, which gets the tie right."""
    from dpdiffusion.dpsgd.clipping import clip_and_sum

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyDenoiser(width=4)
            self.a = torch.nn.Conv2d(1, 1, 3, padding=1)
            self.b = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x, sigma, labels):
            return self.b(self.a(self.net(x, sigma, labels)))

    loss = NoisyRegressionLoss(multiplicity=2)
    for name in ("layerwise", "ghost"):
        with pytest.raises(ValueError, match="layers 'a' and 'b' share the parameter 'weight'.*'vmap' engine"):
            make_engine(name, Tied(), loss)
    model = Tied()
    engine = make_engine("auto", model, loss)
    assert engine.name == "vmap"
    batch = make_batch(4, generator)
    draws = loss.draw(batch, generator)
    summed, _ = clip_and_sum(engine.per_example_grads(batch, draws)[0], max_grad_norm=0.05)
    expected, _ = clip_and_sum(reference_per_example_grads(model, loss, batch, draws), max_grad_norm=0.05)
    assert_grads_close(summed, expected)
    # a layer registered under two names is one layer, not a tie
    twice = TinyDenoiser(width=4)
    twice.alias = twice.conv_out
    assert make_engine("auto", twice, loss).name == "layerwise"


@pytest.mark.parametrize("name", ["layerwise", "ghost"])
def test_output_changed_in_place_is_refused(name, generator):
    """After ``relu_`` on a layer's output, the gradient autograd gives for that tensor is the one after the
    ReLU, not the layer's: the layer engines say so instead of returning a wrong gradient."""
    loss = NoisyRegressionLoss()
    batch = make_batch(3, generator)
    engine = make_engine(name, WithHead(lambda mix, h: torch.relu_(mix(h))), loss)
    with pytest.raises(ValueError, match="output of layer 'mix' was changed in place"):
        engine.clipped_sum(batch, loss.draw(batch, generator), max_grad_norm=1.0)


@pytest.mark.parametrize("name", ["layerwise", "ghost"])
@pytest.mark.parametrize("small_layer", [0, 10**9])
def test_clipped_sum_with_part_of_a_layer_frozen(name, small_layer, generator):
    """A trained weight beside a frozen bias (and the reverse) in one layer: norms and sums over what is trained."""
    from dpdiffusion.dpsgd.clipping import clip_and_sum

    torch.manual_seed(5)
    model, loss = TinyDenoiser(width=4), NoisyRegressionLoss(multiplicity=2)
    model.conv_out.bias.requires_grad_(False)
    model.norm.weight.requires_grad_(False)
    batch = make_batch(5, generator)
    draws = loss.draw(batch, generator)
    engine = make_engine(name, model, loss)
    engine.small_layer = small_layer
    summed, stats, _ = engine.clipped_sum(batch, draws, max_grad_norm=0.05)
    expected, expected_stats = clip_and_sum(reference_per_example_grads(model, loss, batch, draws), max_grad_norm=0.05)
    assert "conv_out.bias" not in summed and "norm.weight" not in summed and "norm.bias" in summed
    assert stats == expected_stats and stats.clipped > 0
    assert_grads_close(summed, expected)


# -- engines leave the model as they found it once closed ---------------------------------------------------------------
def test_opacus_then_vmap_on_one_model_works_after_close_and_is_refused_in_one_line_without(generator):
    """Opacus' backward hooks stay on the model (disabled) and break torch.func: a vmap engine on a model an opacus
    engine still hooks is refused with one line naming close(); after close() it gives the reference gradients."""
    torch.manual_seed(3)
    model, loss = TinyDenoiser(), NoisyRegressionLoss(multiplicity=2)
    batch = make_batch(4, generator)
    draws = loss.draw(batch, generator)
    opacus = make_engine("opacus", model, loss)
    opacus.per_example_grads(batch, draws)
    with pytest.raises(ValueError, match=r"opacus engine's hooks.*close\(\)") as refused:
        make_engine("vmap", model, loss)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(ValueError, match="close"):
        make_engine("opacus", model, loss)  # one opacus engine's hooks at a time
    opacus.close()
    opacus.close()  # closing twice is harmless
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    grads, _ = make_engine("vmap", model, loss).per_example_grads(batch, draws)
    assert_grads_close(grads, reference_per_example_grads(model, loss, batch, draws))
    again, _ = make_engine("opacus", model, loss).per_example_grads(batch, draws)  # hooks put on afresh
    assert_grads_close(again, grads)


def test_a_vmap_engine_made_before_opacus_hooks_the_model_refuses_too(generator):
    model, loss = TinyDenoiser(), NoisyRegressionLoss()
    batch = make_batch(2, generator)
    vmap_engine = make_engine("vmap", model, loss)
    opacus = make_engine("opacus", model, loss)
    with pytest.raises(ValueError, match="close"):
        vmap_engine.per_example_grads(batch, loss.draw(batch, generator))
    opacus.close()
    vmap_engine.per_example_grads(batch, loss.draw(batch, generator))


@pytest.mark.parametrize("name", ["opacus", "layerwise", "ghost", "vmap"])
def test_close_removes_an_engines_hooks_and_a_closed_engine_refuses_work(name, generator):
    from dpdiffusion.dpsgd.per_example import ClosedEngineError

    model, loss = TinyDenoiser(), NoisyRegressionLoss()
    batch = make_batch(2, generator)
    engine = make_engine(name, model, loss)
    engine.close()
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    if name == "vmap":  # it has no hooks: closing changes nothing
        engine.per_example_grads(batch, loss.draw(batch, generator))
        return
    with pytest.raises(ClosedEngineError, match="closed"):  # never zero gradients for want of hooks
        engine.per_example_grads(batch, loss.draw(batch, generator))
