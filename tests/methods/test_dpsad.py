import json

import pytest
import torch

from dpdiffusion.cli import main
from dpdiffusion.data.dataset import ArrayDataset
from dpdiffusion.diffusion.denoiser import build_denoiser
from dpdiffusion.diffusion.noise_levels import KarrasLevels
from dpdiffusion.dpsgd.clipping import clip_and_sum, per_example_norms
from dpdiffusion.dpsgd.per_example import make_engine
from dpdiffusion.methods import dpsad
from dpdiffusion.nets.discriminator import DiscriminatorConfig, PairDiscriminator
from dpdiffusion.runconfig import ConfigError, load_config
from tests.tiny import write_config

TINY = """
method: dpsad
data: {name: digits}
model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
privacy: {target_epsilon: 5, delta: 1.0e-4, batch_size: 64, steps: 3, accountant: rdp}  # rdp: fast calibration
dpsad: {teacher: dp, teacher_steps: 2, teacher_batch_size: 64, discriminator: {channels: 8, levels: 1}}
training: {checkpoint_every: 2, log_every: 1}
sampling: {steps: 4}
"""


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path, TINY)


def parts(config_path):
    cfg = load_config(config_path)
    torch.manual_seed(0)
    teacher = build_denoiser(cfg.model, cfg.diffusion).requires_grad_(False)
    student = build_denoiser(dpsad.student_model(cfg), cfg.diffusion)
    disc = PairDiscriminator(DiscriminatorConfig(8, 1), in_channels=1, num_classes=10)
    levels = KarrasLevels(500)
    return cfg, teacher, student, disc, levels


def neighbouring_batches(generator, n=6):
    """A batch and its neighbour without the last example, whose image is an outlier."""
    x = torch.randn(n, 1, 8, 8, generator=generator)
    x[-1] *= 50
    return {"x": x, "y": torch.arange(n) % 10}


@pytest.mark.parametrize("engine", ["layerwise", "vmap", "opacus"])  # opacus needs the draws' K axis
@pytest.mark.parametrize("which", ["student", "discriminator"])
def test_each_step_has_sensitivity_c_on_neighbouring_datasets(config, engine, which):
    """Every example's gradient depends on that example only (teacher and the other model fixed), so adding
    or removing one example moves each clipped sum by at most C: the guarantee of both mechanisms."""
    cfg, teacher, student, disc, levels = parts(config)
    if which == "student":
        model, loss = student, dpsad.StudentLoss(student, teacher, disc, levels, 1.0, 10, 0.1)
    else:
        model, loss = disc, dpsad.DiscriminatorLoss(student, teacher, levels, 10, 0.1)
    generator = torch.Generator().manual_seed(1)
    full = neighbouring_batches(generator)
    draws = loss.draw(full, generator)
    without = {k: v[:-1] for k, v in full.items()}
    draws_without = {k: v[:-1] for k, v in draws.items()}
    per_example = make_engine(engine, model, loss)
    grads_full, _ = per_example.per_example_grads(full, draws)
    grads_without, _ = per_example.per_example_grads(without, draws_without)
    for name in grads_full:  # the shared examples' gradients do not see the extra one
        torch.testing.assert_close(grads_full[name][:-1], grads_without[name], atol=1e-5, rtol=1e-4)
    c = 0.5 * float(per_example_norms(grads_full).median())  # some examples are clipped, some not
    sum_full, stats = clip_and_sum(grads_full, max_grad_norm=c)
    sum_without, _ = clip_and_sum(grads_without, max_grad_norm=c)
    difference = torch.sqrt(sum(((sum_full[n] - sum_without[n]) ** 2).sum() for n in sum_full))
    assert stats.clipped >= 1 and float(difference) <= c * (1 + 1e-4)


def test_the_student_step_trains_the_student_only(config):
    cfg, teacher, student, disc, levels = parts(config)
    loss = dpsad.StudentLoss(student, teacher, disc, levels, 1.0, 10, 0.1)
    batch = neighbouring_batches(torch.Generator().manual_seed(2))
    draws = loss.draw(batch, torch.Generator().manual_seed(3))
    assert draws["sigma"].shape == (6, 1)  # one level r per example (K = 1), not an average over all T
    loss(student, batch, draws).sum().backward()
    assert all(p.grad is None for p in disc.parameters()) and all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_the_composed_plan_meets_the_total_target(config):
    cfg = load_config(config)
    plan = dpsad.resolve_dpsad_plan(cfg, 1437)
    assert [name for name, _ in plan.parts] == ["teacher", "student", "discriminator"]
    assert 4.95 < plan.planned_epsilon <= 5.0
    alone = max(p.planned_epsilon for _, p in plan.parts)
    assert alone < plan.planned_epsilon  # composition costs more than any one part
    public = dpsad.resolve_dpsad_plan(load_config(config, ["dpsad.teacher=public"]), 1437)
    assert [name for name, _ in public.parts] == ["student", "discriminator"]
    assert public.plan("student").noise_multiplier < plan.plan("student").noise_multiplier  # one mechanism fewer
    with pytest.raises(ConfigError, match="multiplicity"):
        dpsad.resolve_dpsad_plan(load_config(config, ["privacy.multiplicity=2"]), 1437)


def test_train_release_and_report_compose_every_mechanism(config, tmp_path):
    run = tmp_path / "run"
    assert main(["train", config, "--run-dir", str(run)]) == 0
    report = json.loads((run / "release/privacy.json").read_text())
    assert report["private"] is True and report["method"] == "DP-SAD" and report["teacher"]["mode"] == "dp"
    assert report["spent"]["steps"] == {"teacher": 2, "student": 3, "discriminator": 3}
    plan = dpsad.resolve_dpsad_plan(load_config(config), 1437)
    assert report["spent"]["epsilon"] == pytest.approx(plan.planned_epsilon, rel=1e-3) and report["spent"]["epsilon"] <= 5
    assert json.loads((run / "teacher/release/privacy.json").read_text())["spent"]["steps"] == 2
    assert main(["sample", str(run), "--num", "3", "--out", str(tmp_path / "s.npz"), "--steps", "3"]) == 0


def test_resume_continues_both_mechanisms_exactly(config, tmp_path):
    cfg = load_config(config, ["dpsad.teacher=public", "pretrain.data={name: digits, subset: ':500'}",
                               "data.subset='500:'", "pretrain.steps=2",
                               "pretrain.batch_size=32", "training.checkpoint_every=1"])
    data = ArrayDataset(torch.randn(200, 1, 8, 8), torch.arange(200) % 10)
    plan = dpsad.resolve_dpsad_plan(cfg, len(data))

    def trainer(run):
        torch.manual_seed(0)
        teacher, info = dpsad.build_teacher(cfg, data, plan, run, resume=True, allow_non_private_teacher=False,
                                            progress=False)
        student = build_denoiser(dpsad.student_model(cfg), cfg.diffusion)
        return dpsad.DPSADTrainer(student, teacher, cfg, data, plan, run_dir=run, teacher_info=info,
                                  stages=[], secret_seed=7, progress=False, provenance={})

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b")
    first.fit(max_steps=2)
    second = trainer(tmp_path / "b")
    second.fit(resume=True)
    assert second.mechanisms["discriminator"].ledger.steps_taken == 3 and second.ledger.steps_taken == 3
    for a, b in zip(straight.ema.model.parameters(), second.ema.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(straight.discriminator.parameters(), second.discriminator.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_the_papers_non_private_teacher_needs_a_flag_and_is_reported_as_such(config, tmp_path, capsys):
    common = ["--set", "dpsad.teacher=none", "--run-dir", str(tmp_path / "run")]
    assert main(["train", config, *common]) == 2
    assert "--allow-non-private-teacher" in capsys.readouterr().err
    assert main(["train", config, "--dry-run", *common]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["teacher"]["end_to_end_private"] is False and "NOT differentially private" in dry["teacher"]["warning"]
    assert main(["train", config, *common, "--allow-non-private-teacher"]) == 0
    assert "NOT differentially private" in capsys.readouterr().out
    report = json.loads((tmp_path / "run/release/privacy.json").read_text())
    assert report["private"] is False and "NOT differentially private end to end" in report["warning"]
    assert report["teacher"]["mode"] == "none"


def test_dry_run_shows_the_teacher_mode_and_the_total_epsilon(config, capsys):
    assert main(["train", config, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["teacher"] == {"mode": "dp", "end_to_end_private": True}
    assert 4.9 < out["privacy"]["total_epsilon"] <= 5 and set(out["privacy"]["parts"]) == {"teacher", "student", "discriminator"}


def test_the_distance_is_configurable_and_checked(config):
    cfg, teacher, student, disc, levels = parts(config)
    batch = neighbouring_batches(torch.Generator().manual_seed(4))
    draws = dpsad.StudentLoss(student, teacher, disc, levels).draw(batch, torch.Generator().manual_seed(5))
    with torch.no_grad():
        l2 = dpsad.StudentLoss(student, teacher, disc, levels, adversarial_weight=0.0)(student, batch, draws)
        l1 = dpsad.StudentLoss(student, teacher, disc, levels, adversarial_weight=0.0, distance="l1")(student, batch, draws)
    assert l1.shape == l2.shape == (6,) and not torch.allclose(l1, l2)
    with pytest.raises(ConfigError, match="dpsad.distance"):
        dpsad.resolve_dpsad_plan(load_config(config, ["dpsad.distance=huber"]), 1437)


@pytest.mark.parametrize("teacher", ["dp", "none"])
def test_a_start_checkpoint_is_only_a_public_teachers_start(config, teacher):
    """The DP-SAD plan composes no start's spend: a dp or none teacher that started from finetune.init (a DP
    release of the same data, say) would leave that spend out; and the DP warm-up is not a DP-SAD start."""
    with pytest.raises(ConfigError, match="finetune.init with method dpsad is the start of a public teacher"):
        dpsad.resolve_dpsad_plan(load_config(config, [f"dpsad.teacher={teacher}", "finetune.init=some/release"]), 1437)
    with pytest.raises(ConfigError, match="a start for method dpdm"):
        dpsad.resolve_dpsad_plan(load_config(config, [f"dpsad.teacher={teacher}", "warmup.central_rounds=2"]), 1437)
