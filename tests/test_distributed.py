"""torchrun: two CPU processes (Gloo) against one process on the same global batch."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import synth

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, nproc=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("missing", ["rgir", "ndsm"])
def test_two_processes_give_the_gradients_of_one(tmp_path, missing):
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "tests/ddp_step.py", str(single), missing], cwd=ROOT, env=env, check=True, timeout=300)
    result = torchrun("tests/ddp_step.py", str(double), missing)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = torch.load(single), torch.load(double)
    compared = 0
    for name, grad in one.items():
        if grad is None:  # the Supplement encoder of the missing modality
            assert two[name] is None or not two[name].any(), name
            continue
        # Two processes sum in another order: float32 rounding, relative to the gradient's scale.
        scale = grad.abs().max().item()
        torch.testing.assert_close(two[name], grad, rtol=1e-4, atol=1e-6 + 1e-5 * scale, msg=name)
        compared += 1
    assert compared > 100


def test_torchrun_training_writes_one_run_from_rank_zero_and_resumes(tmp_path):
    root, out = tmp_path / "synthetic", tmp_path / "run"
    synth.synthesize(root, dataset="vaihingen", tiles=3, size=64, seed=1)
    # SGD's warm restarts do not depend on the run's length, so a finished run may go on (AdamW's
    # schedule has decayed to 0 there and train.py refuses: tests/test_train_eval.py).
    run = ["train.py", "--data", str(root), "--out", str(out), "--device", "cpu", "--patch", "32",
           "--batch-size", "1", "--samples-per-epoch", "4", "--width", "4", "--optimizer", "sgd"]
    first = torchrun(*run, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("epoch 1/1 ") == 1  # one process reports
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
    second = torchrun("train.py", "--resume", str(out), "--epochs", "2")
    assert second.returncode == 0, second.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    state = torch.load(out / "last.pt", weights_only=False)["state"]
    assert state["epoch"] == 2 and state["global_step"] == 4  # 2 steps of global batch 2 per epoch
