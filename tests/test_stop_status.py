"""A stopped training says it did not finish: 130 after Ctrl-C, 143 after SIGTERM, once last.pt is saved,
so the README's chain `python train.py ... && python evaluate.py ...` stops there."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import runtime
import train
from stopping import loss_signalling_at

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--patch", "32", "--batch-size", "2", "--samples-per-epoch", "6", "--width", "4", "--seed", "3"]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_run_returns_a_shells_status_for_its_signal_after_saving(dataset, tmp_path, monkeypatch, signum, status):
    loss_then_signal, real_loss = loss_signalling_at(1, signum)
    monkeypatch.setattr(train, "dis2_loss", loss_then_signal)
    out = tmp_path / "run"
    assert train.main(["--data", str(dataset), "--epochs", "2", "--out", str(out), *TINY_RUN]) == status
    assert runtime.load_checkpoint(out / "last.pt")["state"]["step_in_epoch"] == 1
    monkeypatch.setattr(train, "dis2_loss", real_loss)
    assert train.main(["--resume", str(out)]) == 0  # the resumed run finishes


def wait_for_training(log, process, timeout=240):
    """Until the progress bar of the first epoch shows (the signal handlers are in place then)."""
    deadline = time.monotonic() + timeout
    while "epoch 1/" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_quick_starts_chain_stops_at_a_stopped_training(dataset, tmp_path, signum, status):
    """As typed: Ctrl-C reaches the shell and the training (their process group); a scheduler's SIGTERM
    the command. The shell then skips the command after &&, and reports the training's status."""
    out, log, chained = tmp_path / "run", tmp_path / "output.txt", tmp_path / "evaluated"
    command = [sys.executable, "train.py", "--data", str(dataset), "--epochs", "1000", "--out", str(out), *TINY_RUN]
    chain = f"{' '.join(command)} && touch {chained}"
    with open(log, "w") as output:
        shell = subprocess.Popen(["bash", "-c", chain], cwd=ROOT, stdout=output, stderr=output,
                                 start_new_session=True)
        try:
            wait_for_training(log, shell)
            if signum == signal.SIGINT:
                os.killpg(shell.pid, signal.SIGINT)
            else:
                training = [int(pid) for pid in Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()]
                assert len(training) == 1
                os.kill(training[0], signal.SIGTERM)
            assert shell.wait(timeout=120) == status, log.read_text()
        finally:
            if shell.poll() is None:
                os.killpg(shell.pid, signal.SIGKILL)
    assert not chained.exists()
    assert runtime.load_checkpoint(out / "last.pt")["state"]["epoch"] < 1000
    assert f"continue with: python train.py --resume {out}" in log.read_text()
