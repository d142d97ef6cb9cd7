import json
import subprocess
import sys

import pytest

from dpdiffusion.cli import main
from dpdiffusion.privacy import epsilon


def test_privacy_prints_the_noise_multiplier(capsys):
    assert main(["privacy", "--epsilon", "2", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "500"]) == 0
    sigma = float(capsys.readouterr().out.strip())
    assert epsilon(noise_multiplier=sigma, sample_rate=0.01, steps=500, delta=1e-5) <= 2.0


def test_privacy_prints_epsilon_as_json(capsys):
    args = ["privacy", "--noise-multiplier", "1.0", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "500"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epsilon"] == pytest.approx(epsilon(noise_multiplier=1.0, sample_rate=0.01, steps=500, delta=1e-5))
    assert result["accountant"] == "prv" and result["noise_multiplier"] == 1.0


def test_zero_noise_reports_infinite_epsilon_as_valid_json(capsys):
    args = ["privacy", "--noise-multiplier", "0", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "5", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["epsilon"] == "inf"


@pytest.mark.parametrize(
    "args,word",
    [
        (["--epsilon", "-1", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "5"], "target epsilon"),
        (["--epsilon", "1", "--delta", "1.5", "--sample-rate", "0.01", "--steps", "5"], "delta"),
        (["--epsilon", "1", "--delta", "1e-5", "--sample-rate", "2", "--steps", "5"], "sample rate"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, word, capsys):
    assert main(["privacy", *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and word in err


def test_console_entry_point_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "dpdiffusion", "privacy", "--noise-multiplier", "1", "--delta", "1e-5",
         "--sample-rate", "0.01", "--steps", "10", "--accountant", "rdp"],
        capture_output=True, text=True, check=True,
    )
    assert float(out.stdout) > 0


@pytest.mark.parametrize("accountant", ["prv", "pld"])
def test_a_tiny_target_epsilon_is_calibrated_and_the_swamping_noise_named(accountant, capsys):
    """epsilon 1e-4 used to print 'cannot convert float NaN to integer' (prv; the calibration before it once took
    22.5 GB) or a traceback (pld)."""
    args = ["privacy", "--epsilon", "1e-4", "--delta", "1e-5", "--sample-rate", "0.004", "--steps", "1000",
            "--accountant", accountant]
    assert main(args) == 0
    captured = capsys.readouterr()
    sigma = float(captured.out.strip())
    assert epsilon(noise_multiplier=sigma, sample_rate=0.004, steps=1000, delta=1e-5, accountant="pld") <= 1e-4
    note = captured.err.strip().splitlines()
    assert note == [] if accountant == "pld" else (len(note) == 1 and "note:" in note[0] and "PLD bound" in note[0])
    assert main([*args, "--batch-size", "240"]) == 0  # sigma / B >= 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 + len(note) and err[0].startswith("dpdiffusion privacy: warning: the noise swamps the signal")
