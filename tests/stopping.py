"""A training stopped as Ctrl-C or a scheduler stops one: a signal to this process during the n-th
computation of the loss (the step finishes, then the run saves last.pt and stops). For the tests in this
process (test_train_eval.py, test_stop_status.py) and for a process under torchrun (ddp_pins.py)."""

import os
import signal

import train


def loss_signalling_at(n, signum=signal.SIGTERM):
    """(train.dis2_loss that sends `signum` to this process during its n-th call, the real one to put back)."""
    calls = {"n": 0}
    real_loss = train.dis2_loss

    def loss_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return real_loss(*args, **kwargs)

    return loss_then_signal, real_loss
