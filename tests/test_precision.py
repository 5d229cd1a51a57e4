"""The GPU code path run on CPU: mixed precision (bf16, fp16 with the gradient
scaler) through training, validation, checkpoints, resume and evaluation;
channels-last memory; torch.compile; the benchmark's self-check and FLOP count."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import bench
import data
import evaluate
import runtime
import train
from dis2 import DIS2, DIS2Config, SCENARIOS

TINY_RUN = ["--patch", "32", "--batch-size", "2", "--samples-per-epoch", "2", "--width", "4", "--seed", "3"]
CPU = torch.device("cpu")
# Evaluation under autocast against fp32, on the windows of the fp32 checkpoint: the largest
# change of a logit, as a fraction of the fp32 logits' standard deviation (measured: 1.3% in
# bf16, 0.18% in fp16); the largest change of a class probability; the share of pixels whose
# class (argmax) is unchanged (measured: all of them).
LOGIT_TOLERANCE = {"bf16": 0.05, "fp16": 0.01}
PROBABILITY_TOLERANCE = {"bf16": 0.01, "fp16": 0.002}
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """One epoch trained in each precision: precision -> run directory. With SGD, whose warm
    restarts do not depend on the run's length, so that the tests below may resume a finished
    run with more epochs (a finished AdamW run has decayed to 0 and is refused)."""
    out = {}
    for name in runtime.PRECISIONS:
        out[name] = tmp_path_factory.mktemp(f"run-{name}")
        train.main(["--data", str(dataset), "--epochs", "1", "--out", str(out[name]), "--amp", name, "--optimizer", "sgd",
                    *TINY_RUN])
    return out


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / run.name)


def last_checkpoint(run):
    return runtime.load_checkpoint(run / "last.pt")


def assert_finite_losses(run, epochs):
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == epochs
    for row in rows:
        for column in ("loss", *train.TERMS):
            assert np.isfinite(float(row[column])), column


# ------------------------------------------------------ training in each precision


@pytest.mark.parametrize("name", list(runtime.PRECISIONS))
def test_each_precision_trains_validates_and_records_itself(runs, name):
    assert_finite_losses(runs[name], epochs=1)
    checkpoint = last_checkpoint(runs[name])
    assert checkpoint["train_args"]["amp"] == name and checkpoint["train_args"]["channels_last"] is False
    assert bool(checkpoint["scaler"]) == (name == "fp16")  # the scaler's state is saved when it is on
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", list(runtime.PRECISIONS))
def test_a_resumed_run_keeps_its_precision(runs, name, tmp_path):
    run = copy_run(runs[name], tmp_path)
    train.main(["--resume", str(run), "--epochs", "2"])
    checkpoint = last_checkpoint(run)
    assert checkpoint["train_args"]["amp"] == name and bool(checkpoint["scaler"]) == (name == "fp16")
    assert_finite_losses(run, epochs=2)


@pytest.mark.parametrize("trained, resumed", [("off", "fp16"), ("fp16", "bf16")])
def test_amp_given_on_resume_overrides_the_precision(runs, trained, resumed, tmp_path):
    """fp32 to fp16 starts a fresh gradient scale; fp16 to bf16 drops the scaler."""
    run = copy_run(runs[trained], tmp_path)
    train.main(["--resume", str(run), "--epochs", "2", "--amp", resumed])
    checkpoint = last_checkpoint(run)
    assert checkpoint["train_args"]["amp"] == resumed and bool(checkpoint["scaler"]) == (resumed == "fp16")
    assert_finite_losses(run, epochs=2)


def test_checkpoints_of_the_on_off_flag_still_resume(runs, tmp_path):
    """Checkpoints written before --amp took a precision hold amp = None, True
    or False (None: the device's default) and no channels_last."""
    assert [runtime.precision(CPU, legacy) for legacy in (None, True, False)] == ["off", "bf16", "off"]
    run = copy_run(runs["off"], tmp_path)
    checkpoint = last_checkpoint(run)
    checkpoint["train_args"]["amp"] = None
    del checkpoint["train_args"]["channels_last"]
    torch.save(checkpoint, run / "last.pt")
    train.main(["--resume", str(run), "--epochs", "2"])
    train_args = last_checkpoint(run)["train_args"]
    assert (train_args["amp"], train_args["channels_last"]) == ("off", False)
    assert_finite_losses(run, epochs=2)


# ----------------------------------------------------- evaluation in each precision


@pytest.mark.parametrize("trained, evaluated", [("off", "bf16"), ("off", "fp16"), ("bf16", "off"), ("fp16", "off")])
def test_checkpoints_evaluate_across_precisions(runs, trained, evaluated, tmp_path):
    report_path = tmp_path / "scores.json"
    evaluate.main(["--checkpoint", str(runs[trained] / "best.pt"), "--amp", evaluated, "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert list(report["scenarios"]) == list(SCENARIOS)
    assert all(0 <= r["OA"] <= 100 for r in report["scenarios"].values())


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_evaluation_under_autocast_agrees_with_fp32(runs, dataset, name):
    model = runtime.model_from_checkpoint(runtime.load_checkpoint(runs["off"] / "best.pt"), CPU)
    tiles = data.load_split(dataset, "test") + data.load_split(dataset, "val")
    scenarios = list(SCENARIOS)
    for tile in tiles:
        rgir, ndsm = data.normalise(data.pad_to_window(tile.rgir, 64)[None, :64, :64],
                                    data.pad_to_window(tile.ndsm, 64)[None, :64, :64])
        logits = {}
        for precision in ("off", name):
            with torch.inference_mode(), torch.autocast("cpu", dtype=runtime.PRECISIONS[precision],
                                                        enabled=precision != "off"):
                outputs = model(rgir, ndsm, scenarios=scenarios)
            logits[precision] = torch.stack([outputs[s].logits.float() for s in scenarios])
        reference, mixed = logits["off"], logits[name]
        assert (mixed - reference).abs().max() <= LOGIT_TOLERANCE[name] * reference.std()
        assert (mixed.softmax(2) - reference.softmax(2)).abs().max() <= PROBABILITY_TOLERANCE[name]

        # Whole tiles through the evaluation code: overlapping windows, averaged probabilities.
        maps = {p: evaluate.predict_tile(model, tile, scenarios, 32, 8, 2, CPU, runtime.PRECISIONS[p])
                for p in ("off", name)}
        for s in scenarios:
            assert (maps["off"][s] == maps[name][s]).mean() >= MIN_AGREEMENT, s


# ------------------------------------------------------------ channels-last, compile


def test_channels_last_trains_and_evaluates_on_cpu(dataset, tmp_path):
    net = DIS2(DIS2Config(width=4, pos_size=32))
    train.wrap_model(net, CPU, 1, channels_last=True)
    convolutions = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)

    out, report_path = tmp_path / "run", tmp_path / "scores.json"
    train.main(["--data", str(dataset), "--epochs", "1", "--out", str(out), "--channels-last", *TINY_RUN])
    assert last_checkpoint(out)["train_args"]["channels_last"] is True
    assert_finite_losses(out, epochs=1)
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--channels-last", "--json", str(report_path)])
    assert list(json.loads(report_path.read_text())["scenarios"]) == list(SCENARIOS)


@pytest.mark.slow  # one torch.compile of the tiny model's forward pass: about a minute on 2 CPU cores
def test_compiled_evaluation_on_cpu_matches_eager(runs, tmp_path):
    scores = {}
    for flags in ((), ("--compile",)):
        report_path = tmp_path / f"scores{len(flags)}.json"
        # One scenario and one window per batch: a single graph is compiled.
        evaluate.main(["--checkpoint", str(runs["off"] / "best.pt"), "--missing", "none", "--batch-size", "1",
                       "--json", str(report_path), *flags])
        scores[flags] = json.loads(report_path.read_text())["scenarios"]["full"]
    assert scores[()]["OA"] == pytest.approx(scores[("--compile",)]["OA"], abs=1.0)


# --------------------------------------------------------- benchmark and self-check

TINY_BENCHMARK = ["--device", "cpu", "--patch", "32", "--batch-size", "2", "--width", "4", "--repeats", "1"]


def test_benchmark_self_checks_every_precision_and_counts_flops(capsys):
    bench.main([*TINY_BENCHMARK, "--amp", "bf16", "--channels-last"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == ("self-check on cpu (channels-last, eager): one training step and one evaluation window "
                        "work with --amp off, bf16, fp16")
    result = json.loads(lines[-1])
    assert result["self_check"] == {"off": "ok", "bf16": "ok", "fp16": "ok"}
    assert (result["amp"], result["channels_last"]) == ("bfloat16", True)
    assert result["gflop_per_step"] > 0 and result["gflop_s"] > 0
    assert result["mm_gflop_s_float32"] > 0 and result["mm_gflop_s_bfloat16"] > 0

    bench.main(["--inference", "--device", "cpu", "--patch", "32", "--batch-size", "1", "--width", "4", "--repeats", "1"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["what"] == "inference" and result["gflop_per_step"] > 0 and result["mm_gflop_s_float32"] > 0


def test_self_check_says_what_failed(monkeypatch, capsys):
    real_step = bench.train_step

    def fp16_breaks(*args, **kwargs):
        if args[9] == torch.float16:  # amp_dtype
            raise RuntimeError("expected scalar type Half but found Float")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(bench, "train_step", fp16_breaks)
    with pytest.raises(SystemExit) as stopped:
        bench.main([*TINY_BENCHMARK, "--amp", "fp16"])
    assert stopped.value.code == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == ["self-check on cpu (contiguous memory, eager): FAILED --amp fp16: training step: RuntimeError: "
                       "expected scalar type Half but found Float; works with --amp off, bf16"]


def test_flops_of_attention_on_cpu_are_counted():
    b, h, s, d = 2, 4, 64, 16
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    # Forward: Q K^T and P V, 2 b h s^2 d each. Backward (flash): S recomputed, then dV, dP, dQ, dK.
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 4 * b * h * s * s * d
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 14 * b * h * s * s * d

    # The whole model: the same count as with attention decomposed into matrix products (the math kernel).
    model = DIS2(DIS2Config(width=4, pos_size=32)).eval()
    rgir, ndsm = torch.randn(1, 3, 32, 32), torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        fused = bench.count_flops(lambda: model(rgir, ndsm))
        with sdpa_kernel(SDPBackend.MATH):
            decomposed = bench.count_flops(lambda: model(rgir, ndsm))
    assert fused == decomposed > 0


def test_fp16_training_step_at_the_papers_size_stays_finite_with_peaked_attention():
    """At 512x512, M_k = h w alpha_k F_L (Eq. 10) is 1024 times F_L where alpha_k is peaked: past
    fp16's 65504 once alpha_k |F_L| > 64. Under fp16 autocast, in train mode, with F_L scaled so
    that this happens and attention one-hot at a position, the loss stays finite."""
    torch.manual_seed(0)
    model = DIS2(DIS2Config(width=4, embed_dim=16, heads=2, depth=1, class_width=2, pos_size=512)).train()
    attention = model.fusion_decoder("full").classwise_attention
    with torch.no_grad():
        attention.queries.fill_(1.0)

    def large_f_last(module, args):  # one position of F_L at 100: alpha peaks there, alpha |F_L| = 100
        f_last = torch.zeros_like(args[0])
        f_last[:, :, 5, 7] = 100.0
        return (f_last,)

    attention.register_forward_pre_hook(large_f_last)
    rgir, ndsm = torch.randn(2, 3, 512, 512), torch.randn(2, 1, 512, 512)
    target = torch.randint(0, 6, (2, 512, 512))
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(rgir, ndsm, scenarios=("full", "missing_rgir"))
    assert out["full"].attention.amax().item() > 0.99  # peaked as the hook makes it
    loss, terms = train.dis2_loss(out["full"], out["missing_rgir"], target, "rgir")
    assert torch.isfinite(loss), {k: v.item() for k, v in terms.items()}


@pytest.mark.parametrize("capability, chosen", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_default_precision_on_cuda_needs_native_bf16(monkeypatch, capability, chosen):
    """A V100 (7.0) or T4 (7.5) reports bf16 as supported, emulated and slow: fp16 there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    cuda = torch.device("cuda", 0)
    assert runtime.precision(cuda, None) == chosen
    if chosen == "fp16":
        with pytest.raises(data.DataError, match="no native bf16"):
            runtime.precision(cuda, "bf16")
    else:
        assert runtime.precision(cuda, "bf16") == "bf16"
