"""
The paper's experiments in one command: every variant of Table 2 and DIS2 in
the authors' per-scenario layout, over seeds, at one budget; each run scored
on the test tiles in the three scenarios; the analogues of Tables 1-3, the
paired differences, the outcome of the paper's claims and Figures 3, 4 and 6
(docs/reproduction.md).

    python reproduce.py docs/reproduction                  # synthetic benchmark, CPU budget
    python reproduce.py repro/ --variants hf,dis2 --seeds 2
    python reproduce.py repro/ --data vaihingen/ --full    # the paper's sizes, on the real data, for a GPU

The same command continues an interrupted reproduction: finished runs are
reused and a stopped run resumes from its last.pt. The tables and the claims
are report.py's, the figures figures.py's.
"""

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

import data
import figures
import report
import stats
import synth
import train
from data import DataError
from dis2 import SCENARIOS
from evaluate import distances_by_name, evaluate_tiles
from runtime import (autocast_dtype, default_overlap, load_checkpoint, model_from_checkpoint, precision, resolve_device,
                     use_channels_last, writable_dir)

# Defaults of the flags that set the budget of every run: within 4 hours for all runs on 2 CPU cores, or,
# with --full, the paper's sizes on a GPU.
BUDGETS = {
    "reproduce": dict(epochs=20, batch_size=8, patch=128, samples_per_epoch=800, width=16),
    "reproduce-full": dict(epochs=100, batch_size=8, patch=512, samples_per_epoch=2000, width=32),
}
# The reproduction's runs: the four variants of Table 2, DIS2 in the authors' per-scenario layout,
# DIS2 with the authors' DLKD recipe (train.py --recipe authors), ShaSpec (Table 1's comparison; its
# alignment averaged over the levels, and as its authors compute it, the primary one), and HF
# and DIS2 at twice the budget ("budget": a factor on the epochs), each with its number of seeds (10 for
# HF and DIS2, whose difference is the primary question of claim 1 (docs/reproduction.md); 5 where a
# claim rests on the spread over seeds, 3 where a comparison does, 1 for the rest) and the run its
# differences are paired against ("baseline", HF unless said).
REPRODUCTION = {
    "hf": dict(ablation="hf", layout="shared", seeds=10, baseline=None),
    "hf+cw": dict(ablation="hf+cw", layout="shared", seeds=1),
    "hf+dlkd": dict(ablation="hf+dlkd", layout="shared", seeds=1),
    "dis2": dict(ablation="dis2", layout="shared", seeds=10),
    "dis2-per-scenario": dict(ablation="dis2", layout="per-scenario", seeds=3),
    "dis2-authors": dict(ablation="dis2", layout="shared", recipe="authors", seeds=5),
    "shaspec": dict(ablation="shaspec", layout="shared", seeds=5),
    "shaspec-authors": dict(ablation="shaspec-authors", layout="shared", seeds=5),
    "hf-2x": dict(ablation="hf", layout="shared", budget=2, seeds=3, baseline=None),
    "dis2-2x": dict(ablation="dis2", layout="shared", budget=2, seeds=3, baseline="hf-2x"),
}
RUN_KEYS = ("seeds", "budget", "baseline")  # REPRODUCTION's keys that are not train.py flags
# The synthetic benchmark of the reproduction (Vaihingen layout): tiles, tile side, generator seed.
SYNTHETIC_BENCHMARKS = {
    "reproduce": dict(tiles=33, size=640, seed=2026),
    "reproduce-full": dict(tiles=33, size=2000, seed=2026),
}
# The test tiles: the test split of the same frozen generator with a seed no earlier run or calibration
# used, the same size and class shares. The benchmark's own test split (seed 2026) served to calibrate
# it against HF, so it is scored as a second validation set ("calibration"), not as the test.
TEST_TILES = {
    "reproduce": dict(tiles=33, size=640, seed=20261201),
    "reproduce-full": dict(tiles=33, size=2000, seed=20261201),
}


def parse_args(argv=None):
    cpu, full = BUDGETS["reproduce"], BUDGETS["reproduce-full"]
    p = train.training_parser("Train and score the reproduction's runs and write DIR/tables.md and the figures "
                              "(on the synthetic benchmark, or on --data); the same command resumes; "
                              "see docs/reproduction.md.",
                              budget_defaults={name: f"{cpu[name]}; with --full {full[name]}" for name in cpu})
    p.add_argument("out_dir", metavar="DIR", help="where the runs, tables and figures go (and the synthetic benchmark, without --data)")
    p.add_argument("--full", action="store_true", help="the paper's sizes, for a GPU")
    p.add_argument("--variants", type=variant_list,
                   help=f"the runs to train, comma-separated (default: all of {','.join(REPRODUCTION)})")
    p.add_argument("--seeds", type=data.positive_int,
                   help="seeds per variant (default: REPRODUCTION's, 1 to 5 per variant)")
    p.add_argument("--report", action="store_true",
                   help="train nothing: write the tables and figures from the runs finished so far, "
                        "naming those still to train (an interim look at a reproduction that takes several sessions)")
    args = train.check_args(p.parse_args(argv))
    if args.resume:
        raise DataError("--resume: reproduce.py resumes by itself; run the same command again")
    return train.fill_budget(args, BUDGETS[budget_name(args)])


def variant_list(text):
    variants = [v for v in text.split(",") if v]
    unknown = [v for v in variants if v not in REPRODUCTION]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"{text!r}: give names from {', '.join(REPRODUCTION)}, comma-separated")
    return variants


def budget_name(args):
    return "reproduce-full" if args.full else "reproduce"


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    args.amp = precision(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    reproduce(args, device, autocast_dtype(device, args.amp))


def reproduce(args, device, amp_dtype):
    """Trains every variant of REPRODUCTION with its seeds at one budget,
    scores each run on the test tiles in the three scenarios and writes
    DIR/tables.md (means and spreads over seeds, paired differences with
    their intervals, the claims), DIR/results.json and the figures. Without
    --data it first writes the synthetic benchmark (SYNTHETIC_BENCHMARKS) to
    DIR/data and its test tiles (TEST_TILES) to DIR/data-test. Runs go seed
    by seed (every variant's first seed, then the second, ...); finished runs
    are reused and a stopped run resumes, so the same command continues an
    interrupted reproduction, in as many parts as it takes. With --report
    nothing is trained: the tables and figures cover the finished runs
    and their title names the runs still to train."""
    out = writable_dir(args.out_dir, "DIR")
    mode = budget_name(args)
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data and not data_dir.exists():
        synth.synthesize(data_dir, "vaihingen", **SYNTHETIC_BENCHMARKS[mode])
    if not args.data and not (out / "data-test").exists():
        synth.synthesize(out / "data-test", "vaihingen", **TEST_TILES[mode])
    sets = evaluation_sets(args, out, data_dir, mode)
    variants = args.variants or list(REPRODUCTION)
    seeds = {v: [args.seed + k for k in range(args.seeds or REPRODUCTION[v]["seeds"])] for v in variants}
    pending = ""
    if args.report:
        seeds, pending = finished_runs(out, seeds, sets["test"][0])
    else:
        for k in range(max(len(s) for s in seeds.values())):
            for variant in variants:
                if k < len(seeds[variant]) and not reproduce_run(args, variant, seeds[variant][k], out, data_dir, sets,
                                                                 device, amp_dtype):
                    return  # stopped by Ctrl-C or SIGTERM; the same command resumes

    runs = {v: {seed: out / "runs" / v / f"seed{seed}" for seed in s} for v, s in seeds.items()}
    results = {v: {seed: json.loads((run / "test.json").read_text()) for seed, run in rs.items()} for v, rs in runs.items()}
    curves = {v: {seed: training_curve(run / "metrics.csv") for seed, run in rs.items()} for v, rs in runs.items()}
    training = {v: {seed: loss_flattening(curve) for seed, curve in cs.items()} for v, cs in curves.items()}
    hours = sum(r["train_seconds"] + r["evaluate_seconds"] for rs in results.values() for r in rs.values()) / 3600
    test_name, test_tiles = sets["test"]
    source = f"the data in {args.data}" if args.data else (
        "the synthetic benchmark `synth.synthesize(DIR, 'vaihingen', " +
        ", ".join(f"{k}={v}" for k, v in SYNTHETIC_BENCHMARKS[mode].items()) + ")`")
    budget = ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in BUDGETS[mode])
    title = (f"DIS2 reproduction on {source}, scored on {test_name}; budget per run: {budget}; "
             f"seeds from {args.seed}; {device}; {hours:.1f} h of training and evaluation in all{pending}")
    found = report.comparisons(results)
    (out / "tables.md").write_text(report.tables_markdown(results, training, title, found))
    (out / "results.json").write_text(json.dumps(dict(title=title, protocols=stats.PROTOCOLS, runs=results,
                                                      differences=report.comparisons_json(found),
                                                      primary_power=report.primary_power(report.primary_family(found)),
                                                      training_curves=curves), indent=2))
    reproduction_figures(out, seeds, test_tiles, curves)
    print((out / "tables.md").read_text())
    print(f"figures: {', '.join(str(p) for p in sorted(out.glob('figure*.png')))}")


def finished_runs(out, seeds, test_name):
    """The planned runs (variant -> seeds) that were trained and scored on the test tiles, and a note
    for the title naming the rest. A DataError when none is."""
    done = {v: [seed for seed in s if scored_on(out / "runs" / v / f"seed{seed}", test_name)] for v, s in seeds.items()}
    if not any(done.values()):
        raise DataError(f"--report: no run under {out / 'runs'} is trained and scored on {test_name}; "
                        f"run the command without --report first")
    todo = [f"{v} seed{'s' if len(s) - len(done[v]) > 1 else ''} "
            f"{', '.join(str(seed) for seed in s if seed not in done[v])}" for v, s in seeds.items() if len(done[v]) < len(s)]
    total, finished_count = sum(map(len, seeds.values())), sum(map(len, done.values()))
    pending = f"; interim: {finished_count} of {total} runs finished, still to train: {'; '.join(todo)}" if todo else ""
    return {v: s for v, s in done.items() if s}, pending


def scored_on(run, test_name):
    """Whether the run was trained and scored on these test tiles (its test.json names them)."""
    return (run / "test.json").exists() and json.loads((run / "test.json").read_text()).get("test_set") == test_name


def evaluation_sets(args, out, data_dir, mode):
    """name -> (description, tiles): "test", the tiles every run is scored on; on the synthetic
    benchmark also "calibration", its own test split, on which the benchmark was calibrated
    against HF (docs/synthetic_benchmark.md) and which is therefore no test set any more."""
    if args.data:
        return {"test": (f"the test split of {args.data}", data.load_split(data_dir, "test", args.dataset))}
    test = data.load_split(out / "data-test", "test", "vaihingen")
    calibration = data.load_split(data_dir, "test", "vaihingen")
    return {"test": (f"the {len(test)} test tiles of generator seed {TEST_TILES[mode]['seed']} (never used before)", test),
            "calibration": (f"the {len(calibration)} test tiles of generator seed {SYNTHETIC_BENCHMARKS[mode]['seed']}, "
                            "on which the benchmark was calibrated", calibration)}


def reproduce_run(args, variant, seed, out, data_dir, sets, device, amp_dtype):
    """Trains (or resumes) one run of the reproduction and scores its best
    checkpoint on the test tiles into run/test.json (scores, feature
    distances, per-tile confusions, the wall time of both), and on the
    calibration tiles, if any, into run/calibration.json. A test.json of
    other test tiles is scored again, from the checkpoints if they are there,
    else after training the run again. Returns False when training was stopped."""
    run = out / "runs" / variant / f"seed{seed}"
    test_name, test_tiles = sets["test"]
    # A run scored before test.json kept the channel sums of Z (claim 2's measure) is scored again
    # where its checkpoints are still there.
    if scored_on(run, test_name) and (report.has_channel_sums(json.loads((run / "test.json").read_text()))
                                      or not (run / "best.pt").exists()):
        print(f"{variant}, seed {seed}: trained and scored already ({run})")
        return True
    checkpoint = load_checkpoint(run / "last.pt") if (run / "last.pt").exists() else None
    if checkpoint is None:
        for stale in ("metrics.csv", "best.pt", "test.json", "calibration.json"):  # of a run whose checkpoints are gone
            (run / stale).unlink(missing_ok=True)
    settings = REPRODUCTION[variant]
    epochs = args.epochs * settings.get("budget", 1)
    if not checkpoint or checkpoint["state"]["epoch"] < epochs:
        run_args = argparse.Namespace(**{**vars(args), **{k: v for k, v in settings.items() if k not in RUN_KEYS},
                                         "epochs": epochs, "seed": seed, "out": str(run), "data": str(data_dir),
                                         "resume": str(run / "last.pt") if checkpoint else None})
        if train.train(run_args, checkpoint, device, amp_dtype, rank=0, world=1) != 0:  # stopped
            return False
        checkpoint = load_checkpoint(run / "last.pt")
    # Training may take several sessions: last.pt holds its wall time summed over them.
    train_seconds = checkpoint["state"]["train_seconds"]
    start = time.perf_counter()
    model = model_from_checkpoint(load_checkpoint(run / "best.pt"), device, channels_last=args.channels_last)
    # Colour maps of HF's and DIS2's runs feed Figure 3.
    save_dir = writable_dir(run / "predictions", "DIR") if variant in ("hf", "dis2") else None
    score = lambda tiles, **kw: evaluate_tiles(model, tiles, list(SCENARIOS), args.patch, default_overlap(args.patch),
                                               args.batch_size, device, amp_dtype, channels_last=args.channels_last,
                                               **kw)
    scores, distances, per_tile = score(test_tiles, feature_distance=True, save_dir=save_dir)
    if "calibration" in sets:
        name, tiles = sets["calibration"]
        calibration_scores, _, calibration_tiles = score(tiles)
        (run / "calibration.json").write_text(json.dumps(dict(tiles=name, scores=calibration_scores,
                                                              per_tile=calibration_tiles), indent=2))
    result = dict(test_set=test_name, scores=scores, feature_distance=distances_by_name(distances), per_tile=per_tile,
                  train_seconds=train_seconds, evaluate_seconds=time.perf_counter() - start)
    # Figures 4 and 6 now, while the model is at hand: a later session may no longer have the
    # checkpoints (they are not committed). Each run keeps its own, so seeds can run in parallel;
    # reproduction_figures copies the first seed's.
    if variant == "dis2":
        figures.figure_attention(model, test_tiles[0], args.patch, device, run / FIGURE6_NAME)
    if variant in FIGURE4_NAMES:
        figures.figure_queries(model, test_tiles[0], args.patch, device, run / FIGURE4_NAMES[variant])
    (run / "test.json").write_text(json.dumps(result, indent=2))
    return True


def training_curve(metrics_csv):
    """[(step, training segmentation loss)] per epoch: L_seg of the full plus the missing scenario."""
    with open(metrics_csv) as f:
        return [(int(row["step"]), float(row["seg_full"]) + float(row["seg_miss"])) for row in csv.DictReader(f)]


def loss_flattening(curve):
    """(final loss, relative drop over the last quarter of the epochs): a flat curve drops little."""
    losses = [loss for _, loss in curve]
    before = losses[max(len(losses) - 1 - len(losses) // 4, 0)]
    return losses[-1], (before - losses[-1]) / before


FIGURE4_NAMES = {"dis2": "figure4_queries.png", "dis2-per-scenario": "figure4_queries_per_scenario.png"}
FIGURE6_NAME = "figure6_attention.png"  # of DIS2, shared layout


def reproduction_figures(out, seeds, test_tiles, curves):
    """Figure 3 (predictions of HF and DIS2 from the first seed's colour maps),
    the training-loss curves of every run, and Figures 4 and 6 of the first
    seed, which reproduce_run drew into its run directory."""
    figures.figure_training_loss(curves, out / "figure_training_loss.png")
    first_run = lambda v: out / "runs" / v / f"seed{seeds[v][0]}"
    for variant, name in [*FIGURE4_NAMES.items(), ("dis2", FIGURE6_NAME)]:
        if variant in seeds:
            shutil.copyfile(first_run(variant) / name, out / name)
    figure_tiles = test_tiles[:3]
    maps = lambda v: first_run(v) / "predictions"
    predictions = {v: {s: {t.name: data.rgb_to_labels(np.asarray(Image.open(maps(v) / f"{t.name}_{s}.png")))
                           for t in figure_tiles} for s in SCENARIOS} for v in ("hf", "dis2") if v in seeds}
    figures.figure_predictions(figure_tiles, predictions, out / "figure3_predictions.png")


if __name__ == "__main__":
    data.exit_on_user_error(main)
