"""The secret stream: keyed from the OS, Gaussian with the right law, fresh across draws, resumes and runs,
independent of the thread count; a run's report names its randomness, and a fixed secret_seed is NOT private."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from dpdiffusion.cli import main
from dpdiffusion.dpsgd import secret_random
from dpdiffusion.dpsgd.secret_random import SecretStream
from dpdiffusion.data.datasets import load_dataset
from dpdiffusion.methods import dpdm
from dpdiffusion.runconfig import load_config, resolve_plan
from tests.tiny import TINY_RUN, write_config


def test_normals_follow_n01_and_uniforms_have_53_bits():
    z = SecretStream.fresh(b"noise").normal(200_001).numpy()
    assert z.dtype == np.float64 and z.shape == (200_001,)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert stats.kstest(z, "norm", args=(0.0, 1.1)).pvalue < 1e-6  # not another scale
    u = SecretStream.fresh(b"u").uniform(10_000).numpy()
    assert ((u >= 0) & (u < 1)).all() and stats.kstest(u, "uniform").pvalue > 1e-3
    assert np.all(np.mod(u * 2.0**53, 1) == 0) and len(np.unique(u)) == len(u)


def test_draws_are_fresh_and_independent_across_draws_purposes_and_keys():
    a = SecretStream.fresh(b"noise")
    first, second = a.normal(50_000), a.normal(50_000)
    other_purpose = SecretStream(a.key, b"sampling").normal(50_000)
    other_key = SecretStream.fresh(b"noise").normal(50_000)
    for x, y in ((first, second), (first, other_purpose), (first, other_key)):
        assert abs(float(np.corrcoef(x.numpy(), y.numpy())[0, 1])) < 0.03
        assert not torch.equal(x, y)
    assert SecretStream.fresh(b"noise").key != SecretStream.fresh(b"noise").key  # no repeats across runs


def test_a_stream_resumes_bit_exactly_from_its_state():
    stream = SecretStream.fresh(b"noise")
    stream.normal(10)
    tensors: dict[str, torch.Tensor] = {}
    state = json.loads(json.dumps(stream.state_dict(tensors, "noise")))
    expected = stream.normal(1000)
    resumed = SecretStream.fresh(b"noise")
    resumed.load_state_dict(tensors, "noise", state)
    assert torch.equal(resumed.normal(1000), expected)


def test_a_draw_is_the_same_however_it_is_split_into_chunks():
    """A draw longer than a chunk is the concatenation of its chunks: the first chunk of a long draw equals a
    one-chunk draw of the same key, purpose and position."""
    key = bytes(range(32))
    long = SecretStream(key, b"noise").random_bytes(secret_random.CHUNK_BYTES * 2 + 5)
    short = SecretStream(key, b"noise").random_bytes(secret_random.CHUNK_BYTES)
    assert len(long) == secret_random.CHUNK_BYTES * 2 + 5 and long[:len(short)] == short
    assert long[len(short):2 * len(short)] != short  # chunks differ


def test_a_wrong_key_length_is_refused():
    with pytest.raises(ValueError, match="32-byte key"):
        SecretStream(b"short", b"noise")


def test_a_run_names_its_randomness_and_a_fixed_secret_seed_is_not_private(tmp_path):
    config_path = write_config(tmp_path, TINY_RUN)
    assert main(["train", config_path, "--run-dir", str(tmp_path / "secure")]) == 0
    report = json.loads((tmp_path / "secure" / "release" / "privacy.json").read_text())
    assert report["private"] is True and report["randomness"]["reproducible"] is False
    assert "OS CSPRNG" in report["randomness"]["source"]

    config = load_config(config_path)
    data = load_dataset(config.data, "train")
    trainer = dpdm.train(config, data, resolve_plan(config.privacy, len(data)), tmp_path / "seeded", progress=False,
                         secret_seed=3)
    seeded = json.loads((tmp_path / "seeded" / "release" / "privacy.json").read_text())
    assert seeded["private"] is False and seeded["randomness"]["reproducible"] is True
    assert "secret_seed" in seeded["warning"] and trainer.mechanism.reproducible


def test_resume_continues_the_secret_streams_of_the_checkpoint(tmp_path):
    """Two resumes of one checkpoint (fresh OS keys in each process) train the same steps: the keys and the
    streams' positions come from the checkpoint, not from the resuming process."""
    import shutil

    from tests.test_training import make_trainer

    def secure_trainer(run_dir):
        trainer = make_trainer(run_dir)
        trainer.mechanism.sampling, trainer.mechanism.noise = (SecretStream.fresh(b"sampling"),
                                                               SecretStream.fresh(b"noise"))
        trainer.mechanism.dp.noise = trainer.mechanism.noise
        return trainer

    secure_trainer(tmp_path / "a").fit(max_steps=5)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed = [secure_trainer(tmp_path / name) for name in ("a", "b")]
    for trainer in resumed:
        trainer.fit(resume=True)
        assert not trainer.mechanism.reproducible and trainer.mechanism.noise.draws == 12
    for name, value in resumed[0].model.state_dict().items():
        assert torch.equal(resumed[1].model.state_dict()[name], value), name
