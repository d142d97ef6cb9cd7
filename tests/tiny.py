"""A tiny class-conditional digits run that trains in seconds, for tests of the commands."""

TINY_RUN = """
data: {name: digits}
model: {img_resolution: 8, model_channels: 8, channel_mult: [1], num_blocks: 1, attn_resolutions: [], num_classes: 10}
privacy: {target_epsilon: 5, delta: 1.0e-4, batch_size: 64, steps: 2}
training: {checkpoint_every: 2, log_every: 1}
sampling: {steps: 4}
"""


def write_config(folder, text: str, name: str = "tiny.yaml") -> str:
    """``text`` as a YAML run configuration in ``folder``; its path, as the commands take it."""
    path = folder / name
    path.write_text(text)
    return str(path)
