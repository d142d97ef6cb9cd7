"""Checkpoints and released models never unpickle: a crafted file cannot run code when loaded."""

import os
import pickle

import pytest
import torch

from dpdiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dpdiffusion.cli import main


class Payload:
    """Unpickling this would create the marker file: what a malicious pickle does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_files(folder, marker):
    """A pickle, a torch.save zip holding the pickle, and a safetensors header followed by the pickle."""
    raw = pickle.dumps(Payload(str(marker)))
    files = {"pickle": raw}
    path = folder / "zip.pt"
    torch.save({"weights": Payload(str(marker))}, path)
    files["torch-save"] = path.read_bytes()
    header = b'{"__metadata__": {"dpdiffusion": "{}", "sha256": "0"}}'
    files["safetensors-prefix"] = len(header).to_bytes(8, "little") + header + raw
    return files


def test_a_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    for name, content in crafted_files(tmp_path, marker).items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        assert not marker.exists(), name
    pickle.loads(crafted_files(tmp_path, marker)["pickle"])  # the payload is live: unpickling it runs the command
    assert marker.exists()


def test_a_crafted_release_is_refused_by_sample_and_audit_without_running_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    for name, content in crafted_files(tmp_path, marker).items():
        run = tmp_path / name
        (run / "release").mkdir(parents=True)
        (run / "release" / "model.safetensors").write_bytes(content)
        assert main(["sample", str(run), "--num", "1", "--out", str(tmp_path / "s.npz")]) == 2
        assert main(["audit", str(run)]) == 2
        assert not marker.exists(), name
        assert not (tmp_path / "s.npz").exists()
    assert all(len(line) < 300 for line in capsys.readouterr().err.splitlines())


def test_a_good_checkpoint_round_trips(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.arange(4.0)}, {"step": 3})
    tensors, meta = load_checkpoint(path)
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == {"step": 3}
