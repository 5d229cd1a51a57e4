"""
Speed, memory and FLOPs of DIS2, and a self-check of the GPU path: times
training steps (full plus one missing scenario, every term of Eq. 14, backward
and optimiser step, as train.py runs them) or, with --inference, forward passes
as evaluate.py runs them, on random inputs (docs/speed.md).

    python bench.py --device cpu --patch 256 --batch-size 2        # self-check, then a training step
    python bench.py --inference --device cpu --patch 256 --batch-size 2
    python bench.py --device cuda --compile                       # 512x512, batch 8, the default precision

The training benchmark first runs the self-check: one training step and one
evaluation window in each precision, which finds on a new GPU what a long run
would otherwise meet in its first step or first validation. Speed claims are
ratios of runs side by side on one machine: these numbers move with the load.
"""

import json
import resource
import sys
import time

import numpy as np
import torch
from torch.utils import flop_counter

import data
from dis2 import SCENARIOS
from evaluate import evaluate_tiles
from runtime import (PRECISIONS, autocast_dtype, check_patch, default_overlap, native_bf16, precision, prepared,
                     resolve_device, use_channels_last)
from train import (
    NonFiniteLoss,
    build_model,
    fill_budget,
    make_optimizer,
    objective,
    train_step,
    training_parser,
    wrap_model,
)

BENCHMARK_WARMUP = 2


def measure(step, images_per_step, device, warmup, repeats):
    """Runs `step` `warmup` times, then times `repeats` calls. Peak memory is
    the process's peak resident set on CPU; on CUDA the allocator's peak of
    tensors, and what the GPU must hold: the allocator's peak reserve plus the
    CUDA context (the device's memory in use before the first tensor)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    memory = {}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        free, total = torch.cuda.mem_get_info(device)
        context = (total - free - torch.cuda.memory_reserved(device)) / 2**20  # used, not by this allocator
        memory = dict(peak_reserved_mb=torch.cuda.max_memory_reserved(device) / 2**20, context_mb=context)
        memory["gpu_needs_mb"] = memory["peak_reserved_mb"] + context
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    median = float(np.median(seconds))
    return dict(step_s_median=median, step_s_min=min(seconds), step_s_max=max(seconds),
                images_per_s=images_per_step / median, peak_mem_mb=peak, repeats=repeats, **memory)


# FlopCounterMode knows the attention kernels of CUDA but not the one that
# F.scaled_dot_product_attention runs on CPU; the same formulas count it there.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: flop_counter.sdpa_backward_flop_count(grad_out, q, k, v),
}


def count_flops(step):
    """Runs `step` once and returns its floating-point operations as
    FlopCounterMode counts them: matrix products, convolutions and attention
    (forward and backward), a multiply-add being two; element-wise work,
    normalisation, pooling and resampling are left out."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step()
    return counter.get_total_flops()


def matmul_rate(device, dtype=torch.float32):
    """GFLOP/s of a large square matrix product: what the machine's matrix
    units deliver, the yardstick for a step's achieved GFLOP/s. The side doubles
    from 256 until one product takes 0.1 s, up to 4096 on CUDA and 2048 on CPU:
    large enough for the peak rate of real matrix units, and quick where a CPU
    without bf16 or fp16 units emulates them (about 1 GFLOP/s, where a 2048
    product would take a minute)."""
    largest, n = (4096 if device.type == "cuda" else 2048), 256
    while True:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        seconds = measure(lambda: torch.mm(a, b), 1, device, BENCHMARK_WARMUP, repeats=5)["step_s_median"]
        if seconds >= 0.1 or n >= largest:
            return 2 * n**3 / seconds / 1e9
        n *= 2


def report_benchmark(what, result, flops, args, device, amp_dtype, **extra):
    """Two readable lines, then the result as one JSON object (the last line
    printed): timing and memory from measure(), GFLOP per step (`flops`,
    from count_flops), the achieved GFLOP/s and the matrix-product rate of
    the machine in fp32 and in the autocast dtype, measured after the steps.
    `args.channels_last` is the resolved setting (see use_channels_last)."""
    precision_name = str(amp_dtype).replace("torch.", "") if amp_dtype else None
    rates = {"mm_gflop_s_float32": matmul_rate(device)}
    if amp_dtype:
        rates[f"mm_gflop_s_{precision_name}"] = matmul_rate(device, amp_dtype)
    result = dict(what=what, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  threads=torch.get_num_threads(), patch=args.patch, batch_size=args.batch_size,
                  amp=precision_name, channels_last=args.channels_last,
                  compile=args.compile, torch=torch.__version__, **result, gflop_per_step=flops / 1e9,
                  gflop_s=flops / 1e9 / result["step_s_median"], **rates, **extra)
    print(f"{what}: median {result['step_s_median']:.3f} s (min {result['step_s_min']:.3f}, max "
          f"{result['step_s_max']:.3f}, {result['repeats']} steps), {result['images_per_s']:.2f} images/s, "
          f"peak memory {result['peak_mem_mb']:.0f} MB")
    print(f"{what}: {result['gflop_per_step']:.1f} GFLOP per step, {result['gflop_s']:.1f} GFLOP/s achieved; "
          "matrix product " + ", ".join(f"{r:.0f} GFLOP/s in {k.rsplit('_', 1)[1]}" for k, r in rates.items()))
    print(json.dumps(result))


# -----------------------------------------------------------------------------
# Inference and training steps


def inference_benchmark(args, device, amp_dtype):
    """Full-modality forward passes on random inputs, as evaluation runs them."""
    torch.manual_seed(args.seed)
    net = prepared(build_model(args), device, channels_last=args.channels_last)
    model = torch.compile(net) if args.compile else net
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    B, p = args.batch_size, args.patch
    rgir = torch.randn(B, 3, p, p, device=device).contiguous(memory_format=memory_format)
    ndsm = torch.randn(B, 1, p, p, device=device).contiguous(memory_format=memory_format)

    @torch.inference_mode()
    def step(model=model):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(rgir, ndsm)

    flops = count_flops(lambda: step(net))  # net, not model: a compiled graph hides its operations from the counter
    result = measure(step, B, device, BENCHMARK_WARMUP, args.repeats)
    # predict.py's windows overlap by a quarter window, so a large area has (4/3)^2 windows per pixel
    windows_per_pixel = (p / (p - default_overlap(p))) ** 2
    prediction = dict(prediction_mpx_s=result["images_per_s"] * p * p / windows_per_pixel / 1e6,
                      gflop_per_predicted_mpx=flops / (B * p * p) * windows_per_pixel * 1e6 / 1e9)
    print(f"prediction of a large area at the default overlap ({windows_per_pixel:.2f} windows per pixel), windows "
          f"only: {prediction['prediction_mpx_s']:.3f} megapixels/s, {prediction['gflop_per_predicted_mpx']:.0f} GFLOP "
          "per megapixel")
    report_benchmark("inference", result, flops, args, device, amp_dtype, **prediction)


def training_benchmark(args, device, amp_dtype):
    """Runs self_check, then times training steps on random inputs: full plus
    one missing scenario, every term of Eq. 14, backward and optimiser step,
    as training runs them. Exits with status 1 when the self-check failed."""
    checked = self_check(args, device)
    failed = [name for name, outcome in checked.items() if outcome != "ok"]
    if args.amp in failed:
        sys.exit(1)  # the self-check's line says what failed; the timing would fail the same way
    if args.compile:
        # The self-check's small inputs in three precisions filled Dynamo's recompile slots and
        # turned its shapes dynamic; the timed steps compile afresh, static, as training's do.
        torch._dynamo.reset()
    torch.manual_seed(args.seed)
    net = build_model(args).to(device)
    config = net.config
    model = wrap_model(net, device, 1, args.compile, args.channels_last)
    loss_fn = objective(args, config, step=1, total_steps=1)  # past any warm-up: every term counts
    optimizer, scheduler = make_optimizer(net, args, steps_per_epoch=args.repeats + BENCHMARK_WARMUP)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    rgir, ndsm, label = random_batch(args.batch_size, args.patch, config, device, args.channels_last)
    class_weights = torch.ones(config.num_classes, device=device)
    steps = iter(range(10**9))

    def step(model=model):
        return train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, ("rgir", "ndsm")[next(steps) % 2],
                          class_weights, amp_dtype, loss_fn=loss_fn)

    flops = count_flops(lambda: step(net))  # net, not model: a compiled graph hides its operations from the counter
    result = measure(step, args.batch_size, device, BENCHMARK_WARMUP, args.repeats)
    report_benchmark("training step", result, flops, args, device, amp_dtype, self_check=checked, ablation=args.ablation,
                     parameters=sum(p.numel() for p in net.parameters()))
    if failed:
        sys.exit(1)


def random_batch(batch_size, patch, config, device, channels_last):
    """Random inputs and labels of the model's shapes, for the benchmark and the self-check."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    rgir = torch.randn(batch_size, config.rgir_channels, patch, patch, device=device).contiguous(memory_format=memory_format)
    ndsm = torch.randn(batch_size, config.ndsm_channels, patch, patch, device=device).contiguous(memory_format=memory_format)
    return rgir, ndsm, torch.randint(0, config.num_classes, (batch_size, patch, patch), device=device)


def self_check(args, device):
    """One training step and one evaluation window (the three scenarios, scored
    as validation scores them) in each precision, with this command's model,
    channels-last and compile settings, on inputs of at most 64x64 pixels:
    the code paths are checked, not the sizes (fp16 is slow on CPU). On a new GPU this
    finds what a long run would otherwise meet in its first step or its first
    validation. Prints one line; returns precision -> "ok" or what failed."""
    window, outcome = min(args.patch, 64), {}
    for name in PRECISIONS:
        if name == "bf16" and device.type == "cuda" and not native_bf16(device):
            continue  # --amp refuses it on such a GPU
        amp_dtype, stage = autocast_dtype(device, name), "training step"
        try:
            torch.manual_seed(args.seed)
            net = build_model(args).to(device)
            config = net.config
            model = wrap_model(net, device, 1, args.compile, args.channels_last)
            optimizer = torch.optim.AdamW(net.parameters())
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
            rgir, ndsm, label = random_batch(2, window, config, device, args.channels_last)
            class_weights = torch.ones(config.num_classes, device=device)
            train_step(model, optimizer, scheduler, scaler, rgir, ndsm, label, "rgir", class_weights, amp_dtype,
                       loss_fn=objective(args, config, step=1, total_steps=1))
            if not all(torch.isfinite(p).all() for p in net.parameters()):
                raise NonFiniteLoss("non-finite weights after the step")
            stage = "evaluation window"
            rng = np.random.default_rng(args.seed)
            tile = data.Tile("self-check", rng.integers(0, 256, (window, window, 3), np.uint8),
                             rng.integers(0, 256, (window, window), np.uint8),
                             rng.integers(0, config.num_classes, (window, window), np.uint8), None)
            evaluate_tiles(model, [tile], list(SCENARIOS), window, 0, 1, device, amp_dtype, progress=False,
                           channels_last=args.channels_last)
            outcome[name] = "ok"
        except Exception as e:  # what failed, and where, is the answer of the check
            outcome[name] = f"{stage}: {type(e).__name__}: {next(iter(str(e).strip().splitlines()), '')}"
    settings = f"{'channels-last' if args.channels_last else 'contiguous memory'}, {'compiled' if args.compile else 'eager'}"
    works = [name for name, result in outcome.items() if result == "ok"]
    failures = [f"--amp {name}: {result}" for name, result in outcome.items() if result != "ok"]
    line = f"self-check on {device.type} ({settings}): "
    if failures:
        line += "FAILED " + "; ".join(failures) + (f"; works with --amp {', '.join(works)}" if works else "")
    else:
        line += f"one training step and one evaluation window work with --amp {', '.join(works)}"
    print(line)
    return outcome


# -----------------------------------------------------------------------------
# Command line


# The flags of train.py that shape the timed step; its data and run flags (--data, --epochs, --out,
# --resume, ...) would be accepted here and never read.
TIMED_FLAGS = ("batch_size", "patch", "width", "ablation", "recipe", "layout", "optimizer", "lr", "device", "amp",
               "channels_last", "seed", "compile")


def parse_args(argv=None):
    p = data.ArgumentParser(description="Time training steps (or, with --inference, forward passes) of DIS2 on "
                            "random inputs, count their GFLOP and peak memory (docs/speed.md).")
    for action in training_parser()._actions:
        if action.dest in TIMED_FLAGS:
            p._add_action(action)  # as argparse's parents= shares them: train.py's flags, help and defaults
    p.add_argument("--inference", action="store_true", help="time full-modality forward passes, as evaluate.py "
                   "runs them (default batch 4), instead of the self-check and training steps")
    p.add_argument("--repeats", type=data.positive_int, default=5, help="timed steps (default 5)")
    # Not flags: make_optimizer plans the schedule of train.py's default run, whose first steps are timed.
    p.set_defaults(epochs=None, samples_per_epoch=None)
    args = p.parse_args(argv)
    if args.patch is not None:
        check_patch(args.patch)
    if args.inference and args.batch_size is None:
        args.batch_size = 4  # evaluate.py's default
    return fill_budget(args)


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.amp = precision(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    amp_dtype = autocast_dtype(device, args.amp)
    if args.inference:
        return inference_benchmark(args, device, amp_dtype)
    return training_benchmark(args, device, amp_dtype)


if __name__ == "__main__":
    data.exit_on_user_error(main)
