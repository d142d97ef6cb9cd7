"""Property-based tests of the configuration parser: whatever the input, a RunConfig or one ConfigError."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from dpdiffusion.runconfig import ConfigError, RunConfig, config_from_dict, load_config, parse_override

SECTIONS = [f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.type) or f.name in
            ("data", "model", "diffusion", "privacy", "training", "sampling", "performance")]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=6)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=16)


def parses_or_refuses(overrides: list[str]) -> RunConfig | None:
    try:
        return load_config("digits-eps10-cpu", overrides)
    except ConfigError as error:
        message = str(error)
        assert message and "\n" not in message  # one line, printable as the CLI's error
        return None


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(SECTIONS), key=names, value=values)
def test_any_override_gives_a_config_or_one_config_error(section, key, value):
    import yaml

    parses_or_refuses([f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


@settings(max_examples=100, deadline=None)
@given(section=st.sampled_from(SECTIONS), key=names)
def test_unknown_keys_are_named(section, key):
    config = load_config("digits-eps10-cpu")
    known = set(getattr(config, section).__dataclass_fields__) if hasattr(getattr(config, section), "__dataclass_fields__") else set()
    if key in known:
        return
    try:
        load_config("digits-eps10-cpu", [f"{section}.{key}=1"])
    except ConfigError as error:
        assert key in str(error)
    else:
        raise AssertionError(f"{section}.{key} was accepted")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_override_text_never_crashes(text):
    try:
        parse_override(text)
    except ConfigError:
        pass


@settings(max_examples=50, deadline=None)
@given(batch=st.integers(1, 4096), steps=st.integers(1, 10**5), epsilon=st.floats(0.01, 100), lr=st.floats(1e-6, 1))
def test_valid_configs_round_trip_through_their_dict(batch, steps, epsilon, lr):
    config = parses_or_refuses([f"privacy.batch_size={batch}", f"privacy.steps={steps}",
                                f"privacy.target_epsilon={epsilon!r}", f"training.lr={lr!r}"])
    assert config is not None
    assert config_from_dict(config.to_dict()) == config
    assert (config.privacy.batch_size, config.privacy.steps, config.training.lr) == (batch, steps, lr)


def test_numbers_in_scientific_notation_without_a_dot_are_numbers():
    # YAML 1.1 reads "1e-6" as text; a float setting takes it as the number it means
    assert load_config("digits-eps10-cpu", ["training.lr=1e-6"]).training.lr == 1e-6
    for text in ("nan", "fast"):
        try:
            load_config("digits-eps10-cpu", [f"training.lr={text}"])
        except ConfigError as error:
            assert "training.lr" in str(error)
        else:
            raise AssertionError(text)
