"""Several processes, pinned where a slip gives no error (issue 50): the losses metrics.csv logs are one
process's, not their sum; a run stopped mid-epoch resumes at the global batch it stopped at; synchronised
batch norm's running variance is unbiased over the global batch; each process takes the GPU of its
LOCAL_RANK. Two CPU processes (Gloo) under torchrun; the GPU's choice with torchrun's variables of a
second node set by hand."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import runtime
import train

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args, nproc=2):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run):
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [{name: float(value) for name, value in row.items() if name not in ("epoch", "step", "lr") and
             not name.startswith("val_")} for row in rows]


@pytest.mark.slow
def test_two_processes_log_one_processs_losses_and_resume_mid_epoch_at_the_global_batch(dataset, tmp_path):
    """Two processes of batch 1 and one of batch 2 train on the same global batches: metrics.csv's losses
    agree (the processes' mean, not their sum; the per-process means of a batch of 1 differ from a batch of
    2's by up to 1%, and the weights drift apart as much). A two-process run stopped after its second step (of 3 per
    epoch) and resumed ends with the weights and metrics of one never stopped."""
    flags = lambda out, batch: ["--data", str(dataset), "--out", str(out), "--device", "cpu", "--patch", "32",
                                "--batch-size", str(batch), "--samples-per-epoch", "6", "--width", "4", "--epochs", "2",
                                "--seed", "3"]
    straight, single, stopped = tmp_path / "straight", tmp_path / "single", tmp_path / "stopped"
    torchrun("train.py", *flags(straight, 1))
    assert train.main(flags(single, 2)) == 0
    two, one = losses(straight), losses(single)
    assert len(two) == len(one) == 2 and len(two[0]) == 9  # the total and Eq. 14's eight terms
    for a, b in zip(two, one):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=0.03), name

    assert "status 143" in torchrun("tests/ddp_pins.py", "stop", "2", *flags(stopped, 1)).stdout
    state = runtime.load_checkpoint(stopped / "last.pt")["state"]
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 2, 2)
    torchrun("train.py", "--resume", str(stopped))
    resumed = runtime.load_checkpoint(stopped / "last.pt")
    assert resumed["state"]["global_step"] == 6  # 3 global batches of 2 per epoch
    expected = runtime.load_checkpoint(straight / "last.pt")["model"]
    for name, weight in resumed["model"].items():
        torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    for a, b in zip(losses(stopped), two, strict=True):
        for name in a:
            assert a[name] == pytest.approx(b[name], rel=1e-5), name


def test_synchronised_batch_norms_running_variance_is_the_global_batchs_unbiased_one(tmp_path):
    """Momentum 1: the running statistics are the last batch's. 8 values per channel and process, 16 in all:
    the unbiased variance is n/(n-1) = 16/15 of the biased one (a 7% gap), and 16/15, not 8/7."""
    import ddp_pins

    out = tmp_path / "stats.pt"
    torchrun("tests/ddp_pins.py", "batchnorm", str(out))
    saved = torch.load(out)
    assert saved["type"] == "CPUSyncBatchNorm"
    x = ddp_pins.global_batch().double()
    torch.testing.assert_close(saved["mean"].double(), x.mean((0, 2, 3)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(saved["var"].double(), x.var((0, 2, 3), unbiased=True), rtol=1e-6, atol=0)


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    """The second node of two with 2 GPUs each: process RANK 3 is LOCAL_RANK 1 there, and GPU 3 does not exist."""
    chosen, backends = [], []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kwargs: backends.append(backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 4)
    device, rank, world = distributed.setup_distributed(torch.device("cuda"))
    assert device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert (rank, world, backends) == (3, 4, ["nccl"])
