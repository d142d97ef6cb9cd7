import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpdiffusion.io import json_safe
from dpdiffusion.runconfig import ConfigError, RunConfig, changed_settings, load_config, parse_override


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_sections_become_typed_dataclasses(tmp_path):
    config = load_config(write(tmp_path, """
privacy: {target_epsilon: 1, batch_size: 128, epochs: 10, multiplicity: 4}
model: {num_classes: 10, channel_mult: [1, 2], attn_resolutions: [14]}
"""))
    assert isinstance(config, RunConfig) and config.name == "run"
    assert config.privacy.target_epsilon == 1.0 and isinstance(config.privacy.target_epsilon, float)
    assert config.model.channel_mult == (1, 2) and config.model.num_classes == 10
    assert config.training.lr == 3e-4  # defaults fill the rest


def test_overrides_apply_in_order(tmp_path):
    config = load_config(write(tmp_path, "privacy: {batch_size: 128}\n"),
                         ["privacy.batch_size=64", "training.seed=7", "privacy.batch_size=32", "sampling.sampler=churn"])
    assert config.privacy.batch_size == 32 and config.training.seed == 7 and config.sampling.sampler == "churn"


@pytest.mark.parametrize(
    "text,overrides,match",
    [
        ("privacy: {batch_sise: 1}\n", [], "unknown configuration key 'privacy.batch_sise'"),
        ("privcy: {}\n", [], "unknown configuration key 'privcy'"),
        ("", ["model.nonsense=3"], "unknown configuration key 'model.nonsense'"),
        ("privacy: {batch_size: many}\n", [], "privacy.batch_size: expected a whole number"),
        ("privacy: {batch_size: 1.5}\n", [], "privacy.batch_size: expected a whole number"),
        ("privacy: 3\n", [], "privacy: expected a mapping"),
        ("model: {img_resolution: 30}\n", [], "divisible"),
        ("performance: {engine: warp}\n", [], "unknown engine"),
        ("- a list\n", [], "expected a mapping"),
        ("privacy: {batch_size: [\n", [], "not valid YAML"),
        ("model: {num_classes: 2}\ndata: {class_names: [a, b, c]}\n", [], "3 names declared but model.num_classes is 2"),
        ("model: {num_classes: 0}\ndata: {class_names: [a]}\n", [], r"model.num_classes is 0 \(unconditional\)"),
        ("model: {num_classes: 2}\ndata: {class_names: [a, a]}\n", [], "'a' is declared more than once"),
    ],
)
def test_bad_configurations_name_the_problem(tmp_path, text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, text), overrides)


def test_unknown_preset_is_named():
    with pytest.raises(ConfigError, match="no preset or file named 'nope'"):
        load_config("nope")


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError):
        parse_override(text)


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
yaml_values = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.text(alphabet="abcxyz", min_size=1, max_size=8))


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(["privacy", "training", "model", "sampling", "data", "diffusion", "performance"]),
       key=keys, value=yaml_values)
def test_any_override_either_applies_or_fails_with_a_config_error(section, key, value):
    """Property: the parser never crashes with anything but ConfigError, and a key it accepts is really set."""
    try:
        config = load_config_from_defaults([f"{section}.{key}={value}"])
    except ConfigError:
        return
    assert getattr(getattr(config, section), key) == value


def load_config_from_defaults(overrides):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "empty.yaml"
        path.write_text("{}\n")
        return load_config(str(path), overrides)


def test_an_unquoted_colon_value_gets_a_hint_to_quote_it():
    with pytest.raises(ConfigError, match="quote text that holds ':'"):
        load_config("digits-eps10-cpu", ["data.subset=400:"])
    assert load_config("digits-eps10-cpu", ["data.subset='400:'"]).data.subset == "400:"


def test_enum_like_settings_are_literals_checked_when_the_config_loads():
    import dataclasses
    import typing

    from dpdiffusion.methods import METHODS, dpsad
    from dpdiffusion.privacy import ACCOUNTANTS
    from dpdiffusion.runconfig import DPSADConfig, FinetuneConfig, PrivacyConfig

    def choices(cls, name):
        hints = typing.get_type_hints(cls)
        return set(typing.get_args(hints[name]))

    assert choices(RunConfig, "method") == set(METHODS)
    assert choices(PrivacyConfig, "accountant") == set(ACCOUNTANTS)
    assert choices(DPSADConfig, "teacher") == set(dpsad.TEACHERS)
    assert choices(DPSADConfig, "distance") == set(dpsad.DISTANCES)
    assert choices(FinetuneConfig, "init_private_data") == {"same", "other"}
    assert dataclasses.fields(RunConfig)  # frozen dataclasses all the way down
    for key, value in [("method", "dpsd"), ("privacy.accountant", "rpd"), ("dpsad.teacher", "private"),
                       ("finetune.init_private_data", "maybe")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config("mnist-eps10-cpu", [f"{key}={value}"])


def test_changed_settings_name_every_key_a_resume_may_not_change(tmp_path):
    was = load_config(write(tmp_path, "model: {num_classes: 10}\n")).to_dict()
    now = load_config(write(tmp_path, "model: {num_classes: 10}\n"), [
        "training.lr=0.01", "model.channel_mult=[1, 2, 4]", "privacy.max_grad_norm=inf", "sampling.steps=30",
        "performance.micro_batch_size=8", "performance.device=cpu", "training.log_every=1",
        "training.checkpoint_every=9", "data.data_dir=/elsewhere", "name=other"]).to_dict()
    changed = changed_settings(json.loads(json.dumps(json_safe(was))), now)  # as a checkpoint reads it back
    assert changed == {"model.channel_mult": ([1, 2, 2], [1, 2, 4]), "privacy.max_grad_norm": (1.0, "inf"),
                       "sampling.steps": (18, 30), "training.lr": (0.0003, 0.01)}
    assert changed_settings(was, was) == {}
    older = json.loads(json.dumps(json_safe(was)))
    del older["training"]["lr"], older["warmup"]  # written before these settings existed: they had their defaults
    assert changed_settings(older, was) == {}
