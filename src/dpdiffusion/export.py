"""A release as a folder others load with diffusers: ``dpdiffusion export RUN_DIR --format diffusers --out DIR``.

The folder holds ``unet/`` (``UNet2DModel.from_pretrained(DIR, subfolder="unet")``: its ``config.json`` and the
EMA weights as safetensors), ``scheduler/`` (the scheduler config that reproduces the run's preconditioning),
``privacy.json`` (the release's report) and ``README.md`` (the model card). Only what the release holds is read,
so the export is as private as the release: post-processing.

Which runs export:

- ``model.architecture: unet2d`` with EDM preconditioning: diffusers' EDM schedulers apply exactly our
  preconditioning (c_in, c_noise = ln(sigma) / 4, c_skip, c_out with ``prediction_type: epsilon``), so
  ``EDMEulerScheduler`` (or ``EDMDPMSolverMultistepScheduler`` when the run samples with dpmpp2m) with the run's
  sigma_min, sigma_max, sigma_data and rho reproduces our samples for the same noise;
- a fine-tuned diffusers model (an epsilon-prediction DDPM): its UNet and a ``DDPMScheduler`` on its own schedule.

Our own UNet (``ddpmpp``, EDM's DDPM++) has no ``UNet2DModel`` equivalent (its residual scaling, its resampling
inside residual blocks and its attention placement differ), and other preconditionings (vp, ve, v) none in
diffusers' EDM schedulers: such runs are refused with one line saying how to train one that exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from dpdiffusion.diffusion.generate import load_release
from dpdiffusion.io import json_safe, write_json_atomic
from dpdiffusion.model_card import model_card
from dpdiffusion.release import released_config
from dpdiffusion.run_folder import RunFolder
from dpdiffusion.runconfig import ConfigError, RunConfig

FORMATS = ("diffusers",)

USAGE = """## Use with diffusers

```python
import torch
from diffusers import UNet2DModel, {scheduler}

unet = UNet2DModel.from_pretrained("{folder}", subfolder="unet").eval()
scheduler = {scheduler}.from_pretrained("{folder}", subfolder="scheduler")
scheduler.set_timesteps({steps})
x = torch.randn(16, {channels}, {size}, {size}) * scheduler.sigmas[0]
labels = {labels}
for t in scheduler.timesteps:
    with torch.no_grad():
        out = unet(scheduler.scale_model_input(x, t), t, class_labels=labels).sample
    x = scheduler.step(out, t, x).prev_sample
images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # pixels in [-1, 1] -> uint8
```
{guidance}"""


def edm_scheduler(config: RunConfig) -> Any:
    """diffusers' EDM scheduler of the run's sampling settings: DPM-Solver++(2M) for dpmpp2m, else Euler."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    sampling, diffusion = config.sampling, config.diffusion
    common = {"sigma_min": sampling.sigma_min, "sigma_max": sampling.sigma_max, "sigma_data": diffusion.sigma_data,
              "rho": sampling.rho, "sigma_schedule": "karras", "prediction_type": "epsilon",
              "final_sigmas_type": "zero"}
    if sampling.sampler == "dpmpp2m":
        return EDMDPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++")
    return EDMEulerScheduler(**common)


def ddpm_scheduler(alphas_cumprod: torch.Tensor) -> Any:
    """diffusers' ``DDPMScheduler`` on a fine-tuned model's own discrete schedule (its betas from alpha-bar)."""
    from diffusers import DDPMScheduler

    alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    betas = 1 - alphas / torch.cat([alphas.new_ones(1), alphas[:-1]])
    return DDPMScheduler(num_train_timesteps=len(alphas), trained_betas=betas.tolist(), prediction_type="epsilon")


def _exportable(model: torch.nn.Module, config: RunConfig) -> tuple[Any, Any]:
    """The run's ``UNet2DModel`` and its scheduler, or a one-line refusal."""
    from dpdiffusion.nets.diffusers_unet import DDPMPrecond, DiffusersNet

    net = getattr(model, "net", None)
    if not isinstance(net, DiffusersNet):
        raise ConfigError(f"this run's network (model.architecture: {config.model.architecture}, EDM's DDPM++) has no "
                          "diffusers UNet2DModel equivalent; train with model.architecture: unet2d to export for "
                          "diffusers")
    if isinstance(model, DDPMPrecond):
        return net.unet, ddpm_scheduler(model.alphas_cumprod)
    if config.diffusion.parameterisation != "edm":
        raise ConfigError(f"diffusers' EDM schedulers apply EDM's preconditioning, not diffusion.parameterisation: "
                          f"{config.diffusion.parameterisation}; train with diffusion.parameterisation: edm to export")
    return net.unet, edm_scheduler(config)


def export_diffusers(run_dir: str | Path, out: str | Path, *, license: str = "other") -> Path:
    """Write the release of ``run_dir`` as a diffusers folder at ``out`` (which must not exist or be empty); the
    folder is written next to ``out`` and renamed into place, so a failure leaves nothing half-written."""
    from dpdiffusion.nets.diffusers_unet import _unet_class

    _unet_class()  # a one-line error when diffusers is missing, before anything is read
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not an empty folder; nothing was written")
    model, config, privacy = load_release(run_dir)
    unet, scheduler = _exportable(model, config)
    released, _ = released_config(config.to_dict())
    report = privacy.to_dict() if privacy is not None else {}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        scheduler.save_pretrained(str(tmp / "scheduler"))
        source = RunFolder(run_dir).privacy_report
        write_json_atomic(tmp / "privacy.json", json.loads(source.read_text()) if source.is_file() else report)
        (tmp / "README.md").write_text(model_card(json_safe(report), json_safe(released), library="diffusers",
                                                  license=license, usage=_usage(config, type(scheduler).__name__)))
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _usage(config: RunConfig, scheduler: str) -> str:
    classes = config.model.num_classes
    labels = f"torch.randint(0, {classes}, (16,))" if classes else "None"
    guidance = ""
    if classes and config.sampling.guidance != 1:
        guidance = (f"\nThe run samples with classifier-free guidance w = {config.sampling.guidance:g}: per step, "
                    f"out = w * out(labels) + (1 - w) * out(label {classes}, \"no label\").\n")
    return USAGE.format(scheduler=scheduler, folder="THIS_FOLDER", steps=config.sampling.steps,
                        channels=config.model.in_channels, size=config.model.img_resolution, labels=labels,
                        guidance=guidance)
