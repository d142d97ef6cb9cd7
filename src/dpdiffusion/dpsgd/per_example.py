"""Per-example gradients of the whole per-example loss.

A *per-example loss* is the method's contract with the engine. It has two parts:

- ``draw(batch, generator) -> draws``: all randomness of one step (noise levels, noises, augmentations,
  label dropping), as a dict of tensors shaped ``[b, K, ...]``: b examples, K multiplicity draws each.
- ``__call__(model, batch, draws) -> losses``: the per-example losses, shape ``[b]``, each the mean over
  that example's K draws. It never reduces over examples.

The model sees an example's K draws as adjacent rows (example-major: row r belongs to example r // K).
A batch is a dict of tensors with leading dimension b. Drawing once per step and slicing afterwards makes
micro-batching a pure performance setting: the per-example losses do not depend on how the batch is cut.

Engines turn that into per-example gradients ``{name: [b, *param.shape]}`` for a micro-batch. The
gradient of the mean over K draws is formed per example, so memory holds b gradients, never b*K.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.func import grad as func_grad
from torch.profiler import record_function

from dpdiffusion.config import ENGINES
from dpdiffusion.dpsgd.clipping import ClipStats, clip_factors, clip_with_norms, combine_norms, row_norm
from dpdiffusion.dpsgd.ghost import clipped_layer_sum, ghost_applies, ghost_cheaper, ghost_norms
from dpdiffusion.dpsgd.per_layer import RULES, unsupported

Batch = dict[str, torch.Tensor]
Grads = dict[str, torch.Tensor]



class PerExampleLoss(Protocol):
    def draw(self, batch: Batch, generator: torch.Generator) -> Batch: ...

    def __call__(self, model: Callable[..., torch.Tensor], batch: Batch, draws: Batch) -> torch.Tensor: ...


def batch_size_of(batch: Batch) -> int:
    sizes = {t.shape[0] for t in batch.values()}
    if len(sizes) != 1:
        raise ValueError(f"all tensors of a batch need the same leading size, got {sorted(sizes)}")
    return sizes.pop()


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    return {k: v[start:stop] for k, v in batch.items()}


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def opacus_hooked(model: nn.Module) -> bool:
    """Whether Opacus' hooks are on ``model`` (``GradSampleModule`` marks the module it hooks until they are removed)."""
    return hasattr(model, "autograd_grad_sample_hooks")


def check_no_opacus_hooks(model: nn.Module, engine: str) -> None:
    """Refuse, in one line, a model an Opacus engine left its hooks on: its backward hooks break torch.func."""
    if opacus_hooked(model):
        raise ValueError(f"the model still carries an opacus engine's hooks, which the {engine} engine cannot run "
                         "with: call close() on that engine first")


class ClosedEngineError(ValueError):
    """An engine was used after ``close()``."""


class VmapEngine:
    """torch.func: ``vmap`` over examples of ``grad`` of one example's loss (all K draws inside)."""

    name = "vmap"

    def __init__(self, model: nn.Module, loss: PerExampleLoss):
        check_no_opacus_hooks(model, self.name)
        self.model = model
        self.loss = loss

    def close(self) -> None:
        """Nothing to remove: this engine puts no hooks on the model."""

    def per_example_grads(self, batch: Batch, draws: Batch) -> tuple[Grads, torch.Tensor]:
        """Per-example gradients ``{name: [b, ...]}`` and per-example losses ``[b]``."""
        check_no_opacus_hooks(self.model, self.name)  # hooks put on after this engine was made
        params = {n: p.detach() for n, p in trainable_parameters(self.model).items()}
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad}
        buffers = dict(self.model.named_buffers())

        def one_example_loss(params: Grads, example: Batch, example_draws: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            def net(*args, **kwargs):
                return functional_call(self.model, {**params, **frozen, **buffers}, args, kwargs)

            single = {k: v.unsqueeze(0) for k, v in example.items()}
            single_draws = {k: v.unsqueeze(0) for k, v in example_draws.items()}
            value = self.loss(net, single, single_draws)[0]
            return value, value.detach()

        if batch_size_of(batch) == 0:
            return _empty(params)
        per_example = vmap(func_grad(one_example_loss, has_aux=True), in_dims=(None, 0, 0), randomness="error")
        return per_example(params, batch, draws)


class OpacusEngine:
    """Stock Opacus hooks (``GradSampleModule``), one forward/backward pass per multiplicity draw.

    Each pass covers the b examples with one of their K draws; its ``grad_sample`` is folded into one
    ``[b, ...]`` accumulator right away, so memory holds b per-example gradients (never b*K rows), and
    dividing by K gives the gradient of the mean over draws. Its hooks stay on the model until ``close()``; a
    model carries one opacus engine's hooks at a time.
    """

    name = "opacus"

    def __init__(self, model: nn.Module, loss: PerExampleLoss):
        from opacus import GradSampleModule

        check_no_opacus_hooks(model, self.name)
        self.model = model
        self.loss = loss
        self.hooked = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
        self.hooked.disable_hooks()  # on only inside per_example_grads: other forward passes stay plain
        self.closed = False

    def close(self) -> None:
        """Remove Opacus' hooks and the attributes it put on the parameters (``grad_sample``), so that another
        engine (vmap) can use the model; the engine cannot be used after."""
        if not self.closed:
            self.hooked.cleanup()
            self.closed = True

    def per_example_grads(self, batch: Batch, draws: Batch) -> tuple[Grads, torch.Tensor]:
        """Per-example gradients ``{name: [b, ...]}`` and per-example losses ``[b]``."""
        if self.closed:  # without its hooks it would see no per-example gradient at all
            raise ClosedEngineError("the opacus engine was closed: make a new one")
        params = trainable_parameters(self.model)
        b = batch_size_of(batch)
        if b == 0:
            return _empty(params)
        multiplicity = {v.shape[1] for v in draws.values()}
        if len(multiplicity) != 1:
            raise ValueError(f"all draws need the same multiplicity K, got {sorted(multiplicity)}")
        k_draws = multiplicity.pop()
        losses = torch.zeros(b)
        grads = {n: p.new_zeros((b, *p.shape)) for n, p in params.items()}
        self.hooked.zero_grad(set_to_none=True)
        self.hooked.enable_hooks()
        try:
            with warnings.catch_warnings():
                # the inputs never require grad, so torch notes that full backward hooks see outputs only
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for k in range(k_draws):
                    one_draw = {name: v[:, k : k + 1] for name, v in draws.items()}
                    values = self.loss(self.hooked, batch, one_draw)
                    values.sum().backward()
                    losses += values.detach().cpu() / k_draws
                    for n, p in params.items():  # fold each pass in at once: memory stays flat in K
                        sample = getattr(p, "grad_sample", None)  # set by Opacus' hooks; None: p was unused
                        if sample is not None:
                            grads[n] += sample.detach() / k_draws
                    self.hooked.zero_grad(set_to_none=True)
        finally:
            self.hooked.disable_hooks()
        return grads, losses


class LayerwiseEngine:
    """One batched forward and backward, then per-example gradients layer by layer (``per_layer``).

    Autograd is asked for the gradients of the summed loss with respect to each layer's *output* only, so it
    skips the batch-summed parameter gradients; each layer's per-example gradient is then formed from its
    stored input and that output gradient, with the K draws of an example contracted together (memory holds
    b gradients, never b*K). Every layer with trainable parameters needs a rule; others are refused.

    For clipped sums, ``ghost`` picks the layers that get a ghost norm and a book-keeping sum instead
    (``dpsgd.ghost``): "auto" those where that is cheaper (``ghost_cheaper``), "always" every Linear and
    Conv2d layer, "never" none.
    """

    GHOST_POLICIES = ("auto", "always", "never")
    # Examples whose per-example gradients are formed, clipped and summed at a time in ``clipped_sum``: about
    # this many bytes of them. Larger slices give the grouped convolutions of the rules more work per call:
    # the rules of a 1.7M-parameter UNet at 64 examples took 813 / 631 / 504 / 458 / 433 ms in slices of
    # 4 / 9 / 16 / 32 / 64 examples (2 CPU cores); 256 MiB is 36 examples of it.
    rule_bytes = 256 * 2**20

    def __init__(self, model: nn.Module, loss: PerExampleLoss, ghost: str = "auto"):
        if ghost not in self.GHOST_POLICIES:
            raise ValueError(f"unknown ghost norm policy {ghost!r}; choose one of {', '.join(self.GHOST_POLICIES)}")
        self.name = "ghost" if ghost == "always" else "layerwise"
        self.ghost = ghost
        self.model = model
        self.loss = loss
        self.layers: dict[nn.Module, str] = {}
        for name, module in model.named_modules():
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                continue
            reason = unsupported(module)
            if reason:
                raise ValueError(
                    f"layer '{name}' ({type(module).__name__}) {reason}; use the 'vmap' engine for this model"
                )
            self.layers[module] = f"{name}." if name else ""
        shared = shared_parameter(model)
        if shared:
            raise ValueError(f"{shared}; the per-layer rules would miss one layer's share, use the 'vmap' engine")
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int]] = []
        self._recording = False
        self._hooks = [module.register_forward_hook(self._record) for module in self.layers]
        self.closed = False

    def close(self) -> None:
        """Remove its forward hooks from the model's layers; the engine cannot be used after."""
        for handle in self._hooks:
            handle.remove()
        self._hooks, self.closed = [], True

    def _record(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._recording and torch.is_grad_enabled():
            self._records.append((module, inputs[0].detach(), output, output._version))

    def per_example_grads(self, batch: Batch, draws: Batch) -> tuple[Grads, torch.Tensor]:
        """Per-example gradients ``{name: [b, ...]}`` and per-example losses ``[b]``."""
        params = trainable_parameters(self.model)
        b = batch_size_of(batch)
        if b == 0:
            return _empty(params)
        records, backprops, losses = self._forward_backward(batch, draws, b)
        with record_function("dp:per_layer_rules"):
            grads = self._per_layer(records, backprops, b, params)
        return grads, losses.detach()

    def clipped_sum(self, batch: Batch, draws: Batch, *, max_grad_norm: float) -> tuple[Grads, ClipStats, torch.Tensor]:
        """Sum over examples of each example's gradient clipped to ``max_grad_norm``; statistics; losses [b].

        One forward and backward for the whole micro-batch. Ghost layers (``ghost``) give their norms first;
        small layers (``small_layer``: normalisations, biases-only layers) get their per-example gradients
        for all examples at once; the others a few examples at a time (``rule_bytes``), from views of the
        stored rows, each slice clipped with the examples' norms over *all* parameters and summed before the
        next is formed. Last, with every example's clip factor known, the small layers' weighted sums and the
        ghost layers' book-keeping sums."""
        params = trainable_parameters(self.model)
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        b = batch_size_of(batch)
        if b == 0:
            return total, ClipStats(), next(iter(params.values())).new_zeros(0)
        records, backprops, losses = self._forward_backward(batch, draws, b)
        uses = Counter(module for module, _, _ in records)
        ghost: list[tuple[nn.Module, torch.Tensor, torch.Tensor, dict[str, str]]] = []
        small: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        large: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        for (module, x, _), grad in zip(records, backprops, strict=True):
            if grad is None:  # the layer's output did not reach the loss
                continue
            names = self._names(module, params)
            if uses[module] == 1 and self._ghosted(module, x, grad, b, names):
                ghost.append((module, x, grad, names))
            else:
                (small if self._size(module, params) <= self.small_layer else large).append((module, x, grad))
        with record_function("dp:ghost_norms"):
            ghosted_norms = [ghost_norms(module, x, grad, b, names, self.rule_bytes)
                             for module, x, grad, names in ghost]
        with record_function("dp:per_layer_rules"):
            small_grads, small_norms = self._layer_grads(small, b, params, with_norms=True)
        size = sum(self._size(module, params, in_bytes=True) for module in {module for module, _, _ in large})
        step = max(1, self.rule_bytes // max(1, size))
        all_norms = []
        for start in range(0, b, step):
            stop = min(b, start + step)
            part = [(module, x[start * (x.shape[0] // b) : stop * (x.shape[0] // b)],
                     grad[start * (grad.shape[0] // b) : stop * (grad.shape[0] // b)]) for module, x, grad in large]
            with record_function("dp:per_layer_rules"):
                grads, parts = self._layer_grads(part, stop - start, params, with_norms=True)
            with record_function("dp:clip_and_sum"):
                parts += [norms[start:stop] for norms in small_norms + ghosted_norms]
                norms = combine_norms(parts) if parts else total[next(iter(total))].new_zeros(stop - start)
                all_norms.append(norms)
                summed, _ = clip_with_norms(grads, norms, max_grad_norm=max_grad_norm)
                del grads
                for name, value in summed.items():
                    total[name] += value
        norms = torch.cat(all_norms)
        with record_function("dp:clip_and_sum"):
            summed, stats = clip_with_norms(small_grads, norms, max_grad_norm=max_grad_norm)
            for name, value in summed.items():
                total[name] += value
        with record_function("dp:bookkeeping"):
            factors = clip_factors(norms, max_grad_norm=max_grad_norm)
            for module, x, grad, names in ghost:
                for local, value in clipped_layer_sum(module, x, grad, b, factors).items():
                    if local in names:
                        total[names[local]] += value
        return total, stats, losses.detach()

    def _names(self, module: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, str]:
        """Local -> global names of the layer's trained parameters."""
        prefix = self.layers[module]
        return {local: prefix + local for local, _ in module.named_parameters(recurse=False)
                if prefix + local in params}

    def _ghosted(self, module: nn.Module, x: torch.Tensor, grad: torch.Tensor, b: int, names: dict[str, str]) -> bool:
        """Whether the layer's clipped sum goes by ghost norm and book-keeping (``names``: its trained parameters,
        local -> global; the weight must be among them)."""
        if self.ghost == "never" or not ghost_applies(module) or "weight" not in names:
            return False
        return self.ghost == "always" or ghost_cheaper(module, x, grad, b)

    # A layer with at most this many trained parameters gets its per-example gradients for the whole
    # micro-batch in one go (GroupNorm: 2 x channels), which spares the per-slice calls of many tiny rules.
    small_layer = 4096

    def _size(self, module: nn.Module, params: dict[str, nn.Parameter], in_bytes: bool = False) -> int:
        """How many trained parameters ``module`` holds (or their bytes)."""
        return sum(params[name].numel() * (params[name].element_size() if in_bytes else 1)
                   for name in self._names(module, params).values())

    def _layer_grads(self, records: list, b: int, params: dict[str, nn.Parameter],
                     with_norms: bool = False) -> tuple[Grads, list[torch.Tensor]]:
        """Per-example gradients ``{name: [b, ...]}`` of the trained parameters of ``(layer, input, output
        gradient)`` records (a layer used twice has its gradients added; unused parameters are absent), and
        with ``with_norms`` their per-example norms, one ``[b]`` tensor per parameter. Each norm is taken as
        soon as its rule has formed the gradient, while it is still in cache (a pass over per-example gradients
        from memory costs as much as a tenth of a step here); a parameter with a second contribution is
        normed again at the end."""
        grads: Grads = {}
        norms: dict[str, torch.Tensor] = {}
        for module, x, backprop in records:
            for local, value in RULES[type(module)](module, x, backprop, b).items():
                name = self.layers[module] + local
                if name not in params:  # a frozen parameter of a trained layer is skipped
                    continue
                if name in grads:
                    grads[name] = grads[name] + value
                    norms.pop(name, None)
                else:
                    grads[name] = value
                    if with_norms:
                        norms[name] = row_norm(value)
        if not with_norms:
            return grads, []
        return grads, [norms[name] if name in norms else row_norm(g) for name, g in grads.items()]

    def _forward_backward(self, batch: Batch, draws: Batch, b: int) -> tuple[list, tuple, torch.Tensor]:
        """One batched forward (recording each trained layer's input and output) and one backward to the
        layers' outputs: (records, output gradients, per-example losses)."""
        if self.closed:  # without its hooks it would record no layer
            raise ClosedEngineError(f"the {self.name} engine was closed: make a new one")
        self._records, self._recording = [], True
        try:
            with record_function("dp:forward"):
                losses = self.loss(self.model, batch, draws)
        finally:
            self._recording = False
        records, self._records = self._records, []
        for module, x, out, version in records:
            if x.shape[0] % b:
                raise ValueError(f"the loss called the model on {x.shape[0]} rows, not a multiple of {b} examples")
            if out._version != version:  # its gradient would be the one after the in-place operation
                raise ValueError(f"the output of layer '{self.layers[module].rstrip('.') or type(module).__name__}' "
                                 "was changed in place (e.g. relu_); use out-of-place operations or the 'vmap' engine")
        layers = [(module, x, out) for module, x, out, _ in records]
        with record_function("dp:backward"):
            backprops = torch.autograd.grad(losses.sum(), [out for _, _, out in layers], allow_unused=True)
        return layers, backprops, losses

    def _per_layer(self, records: list, backprops: tuple, b: int, params: dict[str, nn.Parameter]) -> Grads:
        grads, _ = self._layer_grads([(m, x, g) for (m, x, _), g in zip(records, backprops, strict=True) if g is not None], b,
                                     params)
        for name, p in params.items():  # a parameter the loss did not use has gradient zero
            if name not in grads:
                grads[name] = p.new_zeros((b, *p.shape))
        return grads


def _empty(params: Mapping[str, torch.Tensor]) -> tuple[Grads, torch.Tensor]:
    first = next(iter(params.values()))
    return {n: p.new_zeros((0, *p.shape)) for n, p in params.items()}, first.new_zeros(0)


def shared_parameter(model: nn.Module) -> str | None:
    """Which trainable parameter two layers share (tied weights), or None: the per-layer rules would give
    each layer's share of its gradient under one name only."""
    owner: dict[int, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for local, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                first, first_name = owner.setdefault(id(p), (module, name))
                if first is not module:  # the same module under two names is one layer, not a tie
                    return f"layers '{first_name}' and '{name}' share the parameter '{local}'"
    return None


def make_engine(name: str, model: nn.Module, loss: PerExampleLoss) -> VmapEngine | OpacusEngine | LayerwiseEngine:
    """``auto`` picks the layerwise engine (fastest, measured in benchmarks/dpsgd_step.py) when every layer
    with trainable parameters has a per-layer rule, and torch.func's vmap (any layer) otherwise."""
    if name == "auto":
        trained = (m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False)))
        rules = all(unsupported(m) is None for m in trained) and shared_parameter(model) is None
        name = "layerwise" if rules else "vmap"
    if name == "vmap":
        return VmapEngine(model, loss)
    if name in ("layerwise", "ghost"):
        return LayerwiseEngine(model, loss, ghost="always" if name == "ghost" else "auto")
    if name == "opacus":
        return OpacusEngine(model, loss)
    raise ValueError(f"unknown per-example gradient engine {name!r}; choose one of {', '.join(ENGINES)}")
