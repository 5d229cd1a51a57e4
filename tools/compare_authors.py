"""
Our DIS2 (both scenario layouts) beside the authors' model (nhikieu/DIS2,
models_bank/DLKD_ver4.py), measured the same way in one command, so that a
speed-up splits into less arithmetic (GFLOP per step) and faster arithmetic
(achieved GFLOP/s):

    git clone https://github.com/nhikieu/DIS2 ../DIS2-authors
    python tools/compare_authors.py --authors-code ../DIS2-authors

The authors' code is imported from the folder given, never copied. For each
model: GFLOP per training step and per full-modality inference (counted once
with FlopCounterMode, as `--benchmark` counts them), the time of each (warm-up
steps, then rounds in which every model and a large fp32 matrix product take
one timed step each, so that a change of machine load touches all alike), the
achieved GFLOP/s and the peak resident memory (each model in a process of its
own). docs/speed.md has a table from it and says what is counted.

With --predict it times prediction instead: predict.py's path over one random
area (predict.predict_strips: sliding windows at the default overlap, stitched)
with our model and with theirs, in turns, in megapixels per second beside the
limit the machine's fp32 matrix-product rate sets (docs/predict.md):

    python tools/compare_authors.py --authors-code ../DIS2-authors --predict --threads 1
"""

import functools
import importlib.util
import json
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules, from any directory

import bench
import data
import predict
import runtime
import train
from dis2 import DIS2, DIS2Config, LAYOUTS

MODELS = ("authors", *(f"ours-{layout}" for layout in LAYOUTS))
MM_SIZE = 2048  # the fp32 matrix product timed beside the models: about 0.1 s on 2 quiet cores
# The authors' per-step scenario masks (their forward compares masks[0] with these).
AUTHORS_MISSING_NDSM, AUTHORS_MISSING_RGIR, AUTHORS_FULL = [True, False], [False, True], [True, True]


def parse_args(argv=None):
    p = data.ArgumentParser(description="Time, GFLOP and memory of our DIS2 beside the authors' model.")
    p.add_argument("--authors-code", required=True, metavar="DIR",
                   help="a checkout of the authors' repository (the folder holding models_bank/ and run_experiment_35.py)")
    p.add_argument("--patch", type=data.positive_int, default=256, help="side of the square inputs (a multiple of 16)")
    p.add_argument("--batch-size", type=data.positive_int, default=2, help="inputs per step (default %(default)s)")
    p.add_argument("--repeats", type=data.positive_int, default=5, help="timed rounds")
    p.add_argument("--threads", type=data.positive_int,
                   help="CPU threads (default: torch's, one per core); 1 is steadier on a machine shared with other "
                        "work, where threads of a parallel operation wait for each other")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--peak-memory-of", choices=MODELS,
                   help="only run two training steps of this model and print the peak resident memory in MB "
                        "(the comparison runs one such process per model and step)")
    p.add_argument("--inference", action="store_true", help="with --peak-memory-of: inference steps instead")
    p.add_argument("--predict", action="store_true",
                   help="time prediction of one random area as predict.py runs it (windows of --patch at the "
                        "default overlap, a quarter window, stitched), ours beside theirs, in megapixels per second")
    p.add_argument("--area", type=data.positive_int, default=640,
                   help="with --predict: side of the square area in pixels (default 640: 3 x 3 windows of 256)")
    args = p.parse_args(argv)
    runtime.check_patch(args.patch)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


# -----------------------------------------------------------------------------
# The authors' code


@functools.cache
def import_authors(root):
    """Their model, and their training loss from run_experiment_35.py. That
    script imports, at the top, modules for data loading and logging that
    this comparison does not use, some not published (models_bank.VaihingenDataset,
    models_bank.DLKD.DLKD_ver4: the model sits in models_bank/ in the
    snapshot) and some not installed here (wandb; kornia, albumentations,
    scikit-image and earthpy through train_util and PotsdamDataset). Those
    are stubbed as empty modules; the model, criterion_rs and cal_train_loss
    run as published."""
    root = Path(root).resolve()
    script = root / "run_experiment_35.py"
    if not (root / "models_bank" / "DLKD_ver4.py").is_file() or not script.is_file():
        raise data.DataError(f"--authors-code {root}: no models_bank/DLKD_ver4.py and run_experiment_35.py there; "
                             "pass the folder of a checkout of the authors' repository")
    sys.path.insert(0, str(root))
    from models_bank import DLKD_ver4 as model_module

    stubs = {
        "wandb": {},
        "models_bank.PotsdamDataset": {"PotsdamDataset_noNVDI": None},
        "models_bank.VaihingenDataset": {"VaihingenDataset": None},
        "models_bank.train_util": {"save_model": None},
        "models_bank.DLKD": {},
        "models_bank.DLKD.DLKD_ver4": {"DLKD_ver4": model_module.DLKD_ver4},
    }
    for name, attributes in stubs.items():
        stub = sys.modules.setdefault(name, types.ModuleType(name))
        stub.__dict__.update(attributes)
    # Two warnings their code raises at every step (an InstanceNorm given a
    # num_features it ignores; kl_div's 'mean' reduction), silenced so the rounds stay readable.
    warnings.filterwarnings("ignore", message="input's size at dim=0 does not match num_features")
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")
    spec = importlib.util.spec_from_file_location("authors_run_experiment", script)
    run_experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_experiment)  # at import it only seeds the RNGs and names its device
    return model_module.DLKD_ver4, run_experiment


# -----------------------------------------------------------------------------
# One training step and one inference step of each model, on the same random batch


def steps(name, args):
    """(training step, inference step, parameter count) of model `name`, each
    step a function of no arguments. The training step is what each training
    script does per batch: forward of the full and one missing scenario (drawn
    alternately), every loss term, backward and the optimiser step (ours:
    train.train_step with AdamW; theirs: cal_train_loss of their script with
    the distillation weight of epoch > 5, and their SGD). The inference step
    is one full-modality forward pass in inference mode."""
    torch.manual_seed(0)
    B, p, cpu = args.batch_size, args.patch, torch.device("cpu")
    rgir, ndsm = torch.randn(B, 3, p, p), torch.randn(B, 1, p, p)
    label = torch.randint(0, 6, (B, p, p))
    turn = iter(range(10**9))
    if name == "authors":
        DLKD_ver4, run_experiment = import_authors(args.authors_code)
        # Six classes, as ours and the ISPRS labels (their script builds it with five).
        model = DLKD_ver4(num_classes=6, image_size=(p, p))
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)  # theirs
        images = torch.cat([rgir, ndsm], dim=1)  # their input: the modalities stacked, RGB first
        one_hot = run_experiment.criterion_rs.expand_target(label, n_class=6)

        def train_step():
            model.train()
            model.is_training = True
            masks = torch.tensor([(AUTHORS_MISSING_NDSM, AUTHORS_MISSING_RGIR)[next(turn) % 2]] * B)
            losses = run_experiment.cal_train_loss(model(images, masks, cpu), one_hot, epoch=6, device=cpu)
            optimizer.zero_grad()
            losses["total_loss"].backward()
            optimizer.step()

        @torch.inference_mode()
        def inference_step():
            model.eval()
            model.is_training = False
            model(images, torch.tensor([AUTHORS_FULL] * B), cpu)
    else:
        model = net = DIS2(DIS2Config(pos_size=p, layout=name.removeprefix("ours-")))
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        class_weights = torch.ones(6)

        def train_step():
            net.train()
            train.train_step(net, optimizer, scheduler, scaler, rgir, ndsm, label, ("rgir", "ndsm")[next(turn) % 2],
                             class_weights, None)

        @torch.inference_mode()
        def inference_step():
            net.eval()
            net(rgir, ndsm)
    return train_step, inference_step, sum(p.numel() for p in model.parameters())


def count(step):
    """count_flops with torch's fused transformer fast path off: the authors'
    nn.TransformerEncoderLayer takes it in inference mode, as one operation
    the counter cannot see into; off, the same arithmetic is counted op by op."""
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return bench.count_flops(step)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)


def peak_memory(name, inference, args):
    """Peak resident memory (MB) of a fresh process that runs two steps (a
    warm-up and one more) of one model: the process's whole footprint, as
    --benchmark reports it on CPU."""
    command = [sys.executable, __file__, "--authors-code", args.authors_code, "--patch", str(args.patch),
               "--batch-size", str(args.batch_size), "--threads", str(torch.get_num_threads()), "--peak-memory-of", name,
               *(["--inference"] if inference else [])]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{name}: the peak-memory process failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def interleaved_rounds(timed, repeats, warmup):
    """{key: [seconds per round]}: each step of `timed` run `warmup` times, then once per round, the
    steps in turn within a round, so that a load on the shared machine falls on all of them alike."""
    for step in timed.values():
        for _ in range(warmup):
            step()
    seconds = {key: [] for key in timed}
    for round_ in range(repeats):
        for key, step in timed.items():
            start = time.perf_counter()
            step()
            seconds[key].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(f"{k} {s[-1]:.3f} s" for k, s in seconds.items()), flush=True)
    return seconds


def measure_all(args):
    """Returns {model: figures} and the matrix-product rates, all measured in this one run."""
    a, b = torch.randn(MM_SIZE, MM_SIZE), torch.randn(MM_SIZE, MM_SIZE)
    timed = {"mm": lambda: torch.mm(a, b)}
    figures = {}
    for name in MODELS:
        train_step, inference_step, parameters = steps(name, args)
        figures[name] = dict(parameters_m=parameters / 1e6, train_gflop=count(train_step) / 1e9,
                             inference_gflop=count(inference_step) / 1e9)
        timed[f"{name} train"], timed[f"{name} inference"] = train_step, inference_step
        print(f"{name}: {parameters / 1e6:.2f} M parameters, {figures[name]['train_gflop']:.1f} GFLOP per training step, "
              f"{figures[name]['inference_gflop']:.1f} GFLOP per inference", flush=True)
    seconds = interleaved_rounds(timed, args.repeats, bench.BENCHMARK_WARMUP)
    mm_rates = [2 * MM_SIZE**3 / s / 1e9 for s in seconds["mm"]]
    for name in MODELS:
        for kind in ("train", "inference"):
            s = seconds[f"{name} {kind}"]
            median = float(np.median(s))
            figures[name][kind] = dict(s_median=median, s_min=min(s), s_max=max(s),
                                       gflop_s=figures[name][f"{kind}_gflop"] / median,
                                       peak_mb=peak_memory(name, kind == "inference", args))
    return figures, dict(gflop_s_median=float(np.median(mm_rates)), gflop_s_min=min(mm_rates), gflop_s_max=max(mm_rates))


def markdown(figures, mm, args):
    """The tables of docs/speed.md: the figures, then each ratio to the authors' model."""
    lines = [f"{args.patch}x{args.patch}, batch {args.batch_size}, CPU, {torch.get_num_threads()} threads, fp32, "
             f"torch {torch.__version__}; median [min, max] of {args.repeats} rounds; fp32 matrix product "
             f"({MM_SIZE}x{MM_SIZE}): {mm['gflop_s_median']:.0f} GFLOP/s [{mm['gflop_s_min']:.0f}, {mm['gflop_s_max']:.0f}]", "",
             "| model | M parameters | step | GFLOP | time (s) | achieved GFLOP/s | share of the mm rate | peak memory (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        for kind, label in (("train", "training"), ("inference", "inference")):
            t = f[kind]
            lines.append(f"| {name} | {f['parameters_m']:.2f} | {label} | {f[f'{kind}_gflop']:.1f} | "
                         f"{t['s_median']:.3f} [{t['s_min']:.3f}, {t['s_max']:.3f}] | {t['gflop_s']:.0f} | "
                         f"{100 * t['gflop_s'] / mm['gflop_s_median']:.0f}% | {t['peak_mb']:.0f} |")
    lines += ["", "| authors' / ours | step | time ratio | = GFLOP ratio (less arithmetic) | "
                  "x GFLOP/s ratio, ours / authors' (faster arithmetic) | peak memory ratio |", "|---|---|---|---|---|---|"]
    authors = figures["authors"]
    for name in MODELS[1:]:
        for kind, label in (("train", "training"), ("inference", "inference")):
            ours = figures[name]
            lines.append(f"| {name} | {label} | {authors[kind]['s_median'] / ours[kind]['s_median']:.2f} | "
                         f"{authors[f'{kind}_gflop'] / ours[f'{kind}_gflop']:.2f} | "
                         f"{ours[kind]['gflop_s'] / authors[kind]['gflop_s']:.2f} | "
                         f"{authors[kind]['peak_mb'] / ours[kind]['peak_mb']:.2f} |")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Prediction of one area, as predict.py runs it, with each model


class AuthorsForPrediction(torch.nn.Module):
    """Their model behind the interface predict.predict_strips calls: model(rgir, ndsm) with both modalities
    (the only scenario an area with data everywhere runs), their input stacked and their full-modality mask."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, SimpleNamespace(num_classes=6)

    def forward(self, rgir, ndsm):
        masks = torch.tensor([AUTHORS_FULL] * len(rgir))
        seg_pred = self.model(torch.cat([rgir, ndsm], dim=1), masks, torch.device("cpu"))["seg_pred"]
        return SimpleNamespace(logits=seg_pred, attention=None)


def measure_predictions(args):
    """{model: figures} of predicting one random area of args.area pixels a side with each model (ours in the
    default layout; both layouts infer alike), its FLOPs counted once, then, after a warm-up area each,
    rounds in which each model predicts the area and the fp32 matrix product runs once, in turn; and the
    matrix product's rates. Window args.patch, overlap a quarter window, batch args.batch_size."""
    rng = np.random.default_rng(0)
    rgir = rng.integers(0, 256, (args.area, args.area, 3), np.uint8)
    ndsm = rng.integers(0, 256, (args.area, args.area), np.uint8)
    window, overlap = args.patch, runtime.default_overlap(args.patch)
    DLKD_ver4, _ = import_authors(args.authors_code)
    torch.manual_seed(0)
    authors = DLKD_ver4(num_classes=6, image_size=(window, window)).eval()
    authors.is_training = False
    models = {"authors": AuthorsForPrediction(authors), "ours": DIS2(DIS2Config(pos_size=window)).eval()}
    a, b = torch.randn(MM_SIZE, MM_SIZE), torch.randn(MM_SIZE, MM_SIZE)
    timed = {"mm": lambda: torch.mm(a, b)}
    for name, model in models.items():
        settings = predict.Settings(model, window, overlap, args.batch_size, torch.device("cpu"))
        timed[name] = lambda settings=settings: [*predict.predict_strips(settings, rgir, ndsm)]
    windows = len(data.sliding_windows(args.area, args.area, window, overlap))
    megapixels = args.area**2 / 1e6
    figures = {name: dict(gflop_per_mpx=count(timed[name]) / 1e9 / megapixels) for name in models}
    seconds = interleaved_rounds(timed, args.repeats, warmup=1)
    mm_rates = [2 * MM_SIZE**3 / s / 1e9 for s in seconds["mm"]]
    mm = dict(gflop_s_median=float(np.median(mm_rates)), gflop_s_min=min(mm_rates), gflop_s_max=max(mm_rates))
    for name, f in figures.items():
        median = float(np.median(seconds[name]))
        f.update(s_median=median, s_min=min(seconds[name]), s_max=max(seconds[name]), mpx_s=megapixels / median,
                 gflop_s=f["gflop_per_mpx"] * megapixels / median, limit_mpx_s=mm["gflop_s_median"] / f["gflop_per_mpx"])
    return figures, mm, dict(windows=windows, windows_per_pixel=windows * window**2 / args.area**2)


def prediction_markdown(figures, mm, area, args):
    """The table of docs/predict.md's Throughput: each model's prediction of the area, then the ratio."""
    lines = [f"{args.area}x{args.area} area, {args.patch} px windows overlapping by {runtime.default_overlap(args.patch)} "
             f"({area['windows']} windows, {area['windows_per_pixel']:.2f} per pixel), batch {args.batch_size}, CPU, "
             f"{torch.get_num_threads()} threads, fp32, torch {torch.__version__}; median [min, max] of {args.repeats} "
             f"rounds; fp32 matrix product ({MM_SIZE}x{MM_SIZE}): {mm['gflop_s_median']:.0f} GFLOP/s "
             f"[{mm['gflop_s_min']:.0f}, {mm['gflop_s_max']:.0f}]", "",
             "| model | GFLOP per megapixel | time per area (s) | megapixels/s | achieved GFLOP/s | "
             "limit: mm rate / GFLOP per megapixel | share of the limit |", "|---|---|---|---|---|---|---|"]
    for name, f in figures.items():
        lines.append(f"| {name} | {f['gflop_per_mpx']:.0f} | {f['s_median']:.2f} [{f['s_min']:.2f}, {f['s_max']:.2f}] | "
                     f"{f['mpx_s']:.3f} | {f['gflop_s']:.0f} | {f['limit_mpx_s']:.3f} | "
                     f"{100 * f['mpx_s'] / f['limit_mpx_s']:.0f}% |")
    authors, ours = figures["authors"], figures["ours"]
    lines += ["", f"authors' / ours: time {authors['s_median'] / ours['s_median']:.2f} = GFLOP "
                  f"{authors['gflop_per_mpx'] / ours['gflop_per_mpx']:.2f} x GFLOP/s (ours / authors') "
                  f"{ours['gflop_s'] / authors['gflop_s']:.2f}"]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.peak_memory_of:
        train_step, inference_step, _ = steps(args.peak_memory_of, args)
        step = inference_step if args.inference else train_step
        step()
        step()
        # VmHWM, the peak of this process's own memory image: ru_maxrss would
        # also hold the parent's, which Linux carries across fork and exec.
        status = Path("/proc/self/status").read_text()
        print(int(status.split("VmHWM:")[1].split()[0]) / 1024)  # kB
        return
    import_authors(args.authors_code)  # a wrong path fails here, before anything is measured
    if args.predict:
        figures, mm, area = measure_predictions(args)
        print()
        print(prediction_markdown(figures, mm, area, args))
        if args.json:
            Path(args.json).write_text(json.dumps(dict(area=args.area, patch=args.patch, batch_size=args.batch_size,
                                                       repeats=args.repeats, threads=torch.get_num_threads(),
                                                       torch=torch.__version__, mm_fp32=mm, **area, models=figures),
                                                  indent=2))
        return
    figures, mm = measure_all(args)
    print()
    print(markdown(figures, mm, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(patch=args.patch, batch_size=args.batch_size, repeats=args.repeats,
                                                   threads=torch.get_num_threads(), torch=torch.__version__,
                                                   mm_fp32=mm, models=figures), indent=2))


if __name__ == "__main__":
    data.exit_on_user_error(main)
