"""torchrun: two CPU processes (Gloo) against one process on the same global batch."""

import argparse
import copy
import csv
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import synth
import runtime
import train
from ddp_step import PATCH, tiles
from ddp_variants import configurations

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
        # Two processes sum in another order: float64 rounding, 1e-13 of the gradient's scale measured. The
        # floor is for the attention pools' score biases, whose gradient is 0 but for rounding (1e-18).
        assert grad.dtype == torch.float64, name
        scale = grad.abs().max().item()
        torch.testing.assert_close(two[name], grad, rtol=0, atol=1e-12 + 1e-10 * scale, msg=name)
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


def output_tensors(out):
    """Every tensor in a model's output: dataclasses, named tuples, dicts and lists opened."""
    if torch.is_tensor(out):
        return [out]
    if dataclasses.is_dataclass(out):
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    elif isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in output_tensors(item)] if isinstance(out, (list, tuple)) else []


@pytest.mark.parametrize("name, flags", list(configurations()))
def test_every_output_that_carries_gradient_enters_the_loss(name, flags):
    """What DistributedDataParallel (find_unused_parameters) needs, checked in
    one process: a parameter reachable from the forward outputs of a training
    step gets a gradient from its loss; else DDP waits for that gradient and
    the second step fails."""
    args = argparse.Namespace(width=4, patch=PATCH, seed=0, **flags)
    torch.manual_seed(0)
    net = train.build_model(args).train()
    params = list(net.parameters())
    patches = data.PatchDataset(tiles(), PATCH, samples_per_epoch=2, seed=0)
    rgir, ndsm, label = next(iter(torch.utils.data.DataLoader(patches, batch_size=2)))
    names = [n for n, _ in net.named_parameters()]
    for missing in ("rgir", "ndsm"):
        out = net(rgir, ndsm, scenarios=("full", f"missing_{missing}"))
        # Late in the run, where the authors' recipe weights its distillation 5, not 0.
        loss, _ = train.objective(args, net.config, 9, 10)(out["full"], out[f"missing_{missing}"], label, missing,
                                                           torch.linspace(0.5, 2, 6))
        carried = sum(t.float().sum() for t in output_tensors(out) if t.requires_grad)
        reached = torch.autograd.grad(carried, params, allow_unused=True, retain_graph=True)
        trained = torch.autograd.grad(loss, params, allow_unused=True)
        unused = [n for n, r, g in zip(names, reached, trained) if r is not None and g is None]
        assert not unused, f"{name}, {missing} missing: no loss reaches {unused[:5]}"
        assert sum(g is not None for g in trained) > 100


@pytest.mark.slow
def test_torchrun_trains_every_configuration_with_identical_weights_on_every_process(tmp_path):
    """Three steps of each --ablation, --layout and --recipe under torchrun
    (2 processes, Gloo), in float64: no configuration stalls DDP, and the
    processes end with the same weights, bit for bit, equal to one process's.
    In float64 one and two processes round apart by 1e-16, and three steps
    leave 1e-13 of a tensor's scale (measured: at most 6e-13 over 4 seeds and
    two CPU instruction sets); 1e-9 leaves a margin of 1000, while batch norm
    left unsynchronised, or a loss summed over a process's images instead of
    averaged, moves weights by 1e-1 of their scale. In float32 the comparison
    is chance: see tests/ddp_variants.py."""
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "tests/ddp_variants.py", str(single)], cwd=ROOT, env=env, check=True, timeout=600)
    result = torchrun("tests/ddp_variants.py", str(double))
    assert result.returncode == 0, result.stderr[-3000:]
    for name, _ in configurations():
        rank0, rank1 = (torch.load(double / f"{name}.rank{r}.pt") for r in (0, 1))
        one = torch.load(single / f"{name}.rank0.pt")
        for key, weight in one.items():
            assert weight.dtype == torch.float64, f"{name}: {key} is {weight.dtype}"
            assert torch.equal(rank0[key], rank1[key]), f"{name}: {key} differs between the processes"
            scale = weight.abs().max().item()
            torch.testing.assert_close(rank0[key], weight, rtol=0, atol=1e-9 * scale, msg=f"{name}: {key}")


class FloatingDtypes(torch.overrides.TorchFunctionMode):
    """Records the dtype of every floating-point tensor that a torch function returns."""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.dtypes.update(t.dtype for t in output_tensors(out) if t.is_floating_point())
        return out


@pytest.mark.parametrize("name, flags", list(configurations()))
def test_a_float64_model_computes_its_training_step_in_float64(name, flags):
    """What the float64 comparisons with one process (above) rest on: no
    tensor of a training step's forward pass and loss, and no gradient, is
    rounded to float32 on the way (a float32 cast meant to leave fp16 or bf16)."""
    args = argparse.Namespace(width=4, patch=PATCH, seed=0, **flags)
    torch.manual_seed(0)
    net = train.build_model(args).to(torch.float64).train()
    patches = data.PatchDataset(tiles(), PATCH, samples_per_epoch=2, seed=0)
    rgir, ndsm, label = next(iter(torch.utils.data.DataLoader(patches, batch_size=2)))
    with FloatingDtypes() as computed:
        out = net(rgir.double(), ndsm.double(), scenarios=("full", "missing_rgir"))
        loss, terms = train.objective(args, net.config, 9, 10)(out["full"], out["missing_rgir"], label, "rgir",
                                                               torch.linspace(0.5, 2, 6, dtype=torch.float64))
    loss.backward()
    assert computed.dtypes == {torch.float64}
    assert {value.dtype for value in terms.values()} == {torch.float64}
    assert {p.grad.dtype for p in net.parameters() if p.grad is not None} == {torch.float64}


def test_synchronised_batch_norm_keeps_a_float64_models_precision(tmp_path):
    """synchronise_batch_norm keeps each replaced batch norm's precision, and in float64 a
    synchronised batch norm over one Gloo process is nn.BatchNorm2d to float64 rounding."""
    import torch.distributed as dist

    import distributed
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).double()
    with torch.no_grad():
        plain[1].weight.uniform_(0.5, 2), plain[1].bias.uniform_(-1, 1)
    synced = distributed.synchronise_batch_norm(copy.deepcopy(plain))
    assert isinstance(synced[1], distributed.CPUSyncBatchNorm)
    assert {t.dtype for t in [*synced.parameters(), synced[1].running_mean, synced[1].running_var]} == {torch.float64}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(4, 3, 10, 10, dtype=torch.float64) * 3 + 1
        expected, y = plain(x), synced(x)
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
        for stat in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(synced[1], stat), getattr(plain[1], stat), rtol=0, atol=1e-12)
    finally:
        dist.destroy_process_group()


def test_train_sets_the_processs_gpu_before_asking_cuda_anything(monkeypatch):
    """torchrun on GPUs: each rank's set_device must come before the bf16 question, or every rank
    opens a CUDA context on GPU 0."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: calls.append("capability") or (8, 0))
    monkeypatch.setattr(train, "setup_distributed", lambda device: calls.append("set_device") or (torch.device("cuda", 1), 1, 2))
    monkeypatch.setattr(train, "train", lambda *args: calls.append("train") or True)
    monkeypatch.setattr(train, "leave_distributed", lambda: None)
    monkeypatch.setattr(train, "set_cuda_backends", lambda amp_dtype: None)  # torch's backend flags are not monkeypatchable
    train.main(["--data", "unused", "--device", "cuda"])
    assert calls[0] == "set_device" and calls[-1] == "train" and set(calls[1:-1]) == {"capability"}


def test_rng_state_of_a_node_with_more_gpus_restores_on_one(monkeypatch):
    """A checkpoint holds this process's GPU's generator state; one of the earlier kind, a state per
    visible GPU, restores on a node with fewer GPUs from the state of this process's GPU."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(int(state[0])))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(range(len(states), 0, -1)[:2]))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    states = train.rng_states()
    assert int(states["cuda"][0]) == 7  # one state, not one per GPU
    train.set_rng_states(states)
    older = dict(states, cuda=[torch.tensor([s], dtype=torch.uint8) for s in (3, 4, 5, 6)])  # saved on 4 GPUs
    train.set_rng_states(older)
    assert restored == [7, 3]


def test_synchronised_batch_norm_keeps_a_large_mean_channels_variance(tmp_path):
    """A channel at 1e4 with a spread of 0.1: E[x^2] - mean^2 in float32 loses it (or goes
    negative, and rsqrt gives NaN); the centred float64 sum keeps it. One Gloo process."""
    import torch.distributed as dist

    import distributed
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x = torch.randn(4, 3, 8, 8) * torch.tensor([0.1, 1.0, 3.0]).view(1, 3, 1, 1) + torch.tensor([1e4, 0.0, -5.0]).view(1, 3, 1, 1)
        x.requires_grad_(True)
        weight, bias = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
        running_mean, running_var = torch.zeros(3), torch.ones(3)
        y = distributed.synchronised_batch_norm(x, running_mean, running_var, weight, bias, 0.1, 1e-5)
        x64 = x.detach().double()
        expected = (x64 - x64.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x64.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=2e-2)  # float32 holds 1e4 to 1e-3: 1% of 0.1
        naive = (x64.float().square().mean((0, 2, 3)) - x64.float().mean((0, 2, 3)).square())[0]
        assert abs(naive.item() - x64[:, 0].var(unbiased=False).item()) > 0.1  # what the float32 formula gives
        y.sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(weight.grad).all()
        torch.testing.assert_close(running_var[0].double(), 0.9 + 0.1 * x64[:, 0].var().double(), rtol=1e-3, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_resuming_with_another_number_of_processes_is_refused(dataset, tmp_path, capsys):
    """The steps per epoch and the position within the epoch belong to the processes that trained:
    one line, exit status 2, before anything trains."""
    out = tmp_path / "run"
    # SGD's warm restarts let a finished run go on (AdamW's schedule would have decayed to 0).
    train.main(["--data", str(dataset), "--out", str(out), "--device", "cpu", "--patch", "32", "--batch-size", "1",
                "--samples-per-epoch", "4", "--width", "4", "--epochs", "1", "--optimizer", "sgd"])
    args, checkpoint = train.prepare(["--resume", str(out), "--epochs", "2"])
    capsys.readouterr()
    assert checkpoint["state"]["world"] == 1
    with pytest.raises(SystemExit) as stop:
        data.exit_on_user_error(lambda: train.train(args, checkpoint, torch.device("cpu"), None, rank=0, world=2))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained by 1 process, resumed by 2" in err


@pytest.mark.parametrize("amp_dtype, tf32", [(None, False), (torch.bfloat16, True), (torch.float16, True)])
def test_amp_off_is_strict_fp32_and_mixed_precision_allows_tf32(amp_dtype, tf32):
    """--amp off promises fp32: neither matrix products nor cuDNN's convolutions in TF32."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
        runtime.set_cuda_backends(amp_dtype)
        assert torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
