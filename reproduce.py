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
reused and a stopped run resumes from its last.pt.
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
import stats
import synth
import train
from data import DataError
from dis2 import SCENARIOS
from evaluate import COLUMN_NAMES, DISTANCE_PAIRS, ROW_NAMES, SCORED, SHORT_NAMES, distances_by_name, evaluate_tiles
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
    found = comparisons(results)
    (out / "tables.md").write_text(tables_markdown(results, training, title, found))
    (out / "results.json").write_text(json.dumps(dict(title=title, protocols=stats.PROTOCOLS, runs=results,
                                                      differences=comparisons_json(found), training_curves=curves), indent=2))
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


def has_channel_sums(result):
    """Whether a test.json holds, per tile, the sums of the standardised distance of Z."""
    return all("z_channels" in tile for tile in result["per_tile"].values())


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
    if scored_on(run, test_name) and (has_channel_sums(json.loads((run / "test.json").read_text()))
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


# -----------------------------------------------------------------------------
# Statistics over seeds, the claims, tables.md


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x):
    return "-" if x is None else f"{x:.2f}"


SCORE_HEADER = ["", *COLUMN_NAMES, "mF1", "mIoU", "OA"]
VARIANT_NAMES = {"hf": "Hierarchical Fusion (HF)", "hf+cw": "HF + Classwise (CW)", "hf+dlkd": "HF + DLKD",
                 "dis2": "HF + CW + DLKD (DIS2)", "dis2-per-scenario": "DIS2, per-scenario layout (authors')",
                 "dis2-authors": "DIS2, authors' DLKD recipe", "shaspec": "ShaSpec, alignment over the levels",
                 "shaspec-authors": "ShaSpec at its authors' strength",
                 "hf-2x": "HF, twice the budget", "dis2-2x": "DIS2, twice the budget"}
# What moves DIS2's margin over HF: each row a contrast [(coefficient, variant)] of the runs' mF1.
MARGINS = {
    "DIS2 - HF, the paper's recipe": [(1, "dis2"), (-1, "hf")],
    "DIS2 - HF, the authors' recipe": [(1, "dis2-authors"), (-1, "hf")],
    "DIS2 - HF, twice the budget": [(1, "dis2-2x"), (-1, "hf-2x")],
    "authors' minus paper's recipe (DIS2)": [(1, "dis2-authors"), (-1, "dis2")],
    "the margin at twice minus at the budget": [(1, "dis2-2x"), (-1, "hf-2x"), (-1, "dis2"), (1, "hf")],
}
# The contrasts above that are a change of DIS2 - HF, and the factor each one changes.
MARGIN_FACTORS = {"authors' minus paper's recipe (DIS2)": "the authors' recipe",
                  "the margin at twice minus at the budget": "twice the budget"}
SHASPEC_PAPER = {"full": 2.26, "missing_rgir": 5.84, "missing_ndsm": 6.52}  # DIS2 - ShaSpec, Table 1, Vaihingen
HF_PAPER = {"full": 0.69, "missing_rgir": 5.62, "missing_ndsm": 1.88}  # DIS2 - HF, Table 2, Vaihingen
SHASPECS = ("shaspec-authors", "shaspec")  # the ShaSpec of the primary family first
# The primary family, named before its runs (docs/reproduction.md, "The questions asked before the
# runs"): (label, the contrast, the ShaSpec or None for HF, scenario), mF1 with clutter counted,
# decided by Holm at a family-wise 5%; every other contrast is exploratory.
PRIMARY = [("P1", "DIS2 - HF", None, "missing_rgir"), ("P2", "DIS2 - HF", None, "missing_ndsm"),
           ("P3", "DIS2 - ShaSpec at its authors' strength", "shaspec-authors", "full"),
           ("P4", "DIS2 - ShaSpec at its authors' strength", "shaspec-authors", "missing_rgir"),
           ("P5", "DIS2 - ShaSpec at its authors' strength", "shaspec-authors", "missing_ndsm")]
PRIMARY_PROTOCOL = "counted"
OUTCOMES_VS_HF = {"above": "better", "below": "worse"}
CHANGES = {"above": "larger", "below": "smaller"}


def spread(values):
    """Mean and sample standard deviation (None for a single value) of a list of numbers."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def mean_std(values, digits=2):
    """'mean ± std' over seeds, or the single value, or '-' when there is none."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    mean, std = spread(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def per_seed(runs, scenario, key):
    """{seed: score} of one variant's runs; key is "mF1", "mIoU", "OA" or a class name (its F1)."""
    get = lambda r: r[key] if key in r else r["f1"][key]
    return {seed: get(run["scores"][scenario]) for seed, run in runs.items()}


def whole_test_set(runs, statistic):
    """{seed: the statistic over all the run's test tiles}."""
    tiles = stats.tile_names(runs)
    return {seed: float(statistic(run, tiles, np.arange(len(tiles))[None])[0]) for seed, run in runs.items()}


def class_means(a_runs, b_runs, scenario):
    """The mean per-seed difference of each class's F1 (clutter counted), or '-'."""
    seeds = sorted(set(a_runs) & set(b_runs))
    cells = []
    for c in SCORED:
        d = [a_runs[s]["scores"][scenario]["f1"][c] - b_runs[s]["scores"][scenario]["f1"][c] for s in seeds
             if a_runs[s]["scores"][scenario]["f1"][c] is not None and b_runs[s]["scores"][scenario]["f1"][c] is not None]
        cells.append(f"{np.mean(d):+.2f}" if d else "-")
    return cells


def comparisons(results):
    """Every paired difference the tables and claims rest on, each a stats.Difference:
    "vs_hf": protocol -> scenario -> variant -> its mF1 minus HF's;
    "layouts": protocol -> scenario -> per-scenario minus shared DIS2;
    "hardest": protocol -> variant -> scenario -> that scenario's mF1 minus missing RGIR's;
    "distance": pair -> variant -> {"raw", "relative", "standardised"} -> its distance of Z minus its baseline's
    (HF at its budget; "standardised" over the seeds whose test.json holds the channel sums);
    "margins": protocol -> MARGINS label -> scenario; "shaspec": ShaSpec variant -> protocol -> scenario -> DIS2 minus it."""
    found = {"vs_hf": {}, "layouts": {}, "hardest": {}, "distance": {}, "margins": {}, "shaspec": {}}
    for protocol in stats.PROTOCOLS:
        mf1 = lambda s: stats.mf1_statistic(s, protocol)
        if "hf" in results:
            found["vs_hf"][protocol] = {s: {v: stats.paired_difference(runs, results["hf"], mf1(s))
                                            for v, runs in results.items() if baseline(v) == "hf"} for s in SCENARIOS}
        found["margins"][protocol] = {
            label: {s: stats.paired_contrast([(c, results[v], mf1(s)) for c, v in terms]) for s in SCENARIOS}
            for label, terms in MARGINS.items() if all(v in results for _, v in terms)}
        for shaspec in SHASPECS:
            if "dis2" in results and shaspec in results:
                found["shaspec"].setdefault(shaspec, {})[protocol] = {
                    s: stats.paired_difference(results["dis2"], results[shaspec], mf1(s)) for s in SCENARIOS}
        if "dis2" in results and "dis2-per-scenario" in results:
            found["layouts"][protocol] = {s: stats.paired_difference(results["dis2-per-scenario"], results["dis2"], mf1(s))
                                          for s in SCENARIOS}
        found["hardest"][protocol] = {
            v: {s: stats.paired_difference(runs, runs, mf1(s), mf1("missing_rgir")) for s in ("full", "missing_ndsm")}
            for v, runs in results.items() if v in ("hf", "dis2", "dis2-per-scenario")}
    summed = {v: with_channel_sums(runs) for v, runs in results.items()}
    for pair in DISTANCE_PAIRS:
        found["distance"][pair] = {
            v: {**{kind: stats.paired_difference(runs, results[baseline(v)], stats.distance_statistic(pair, kind == "relative"))
                   for kind in ("raw", "relative")},
                "standardised": stats.paired_difference(summed[v], summed[baseline(v)],
                                                        stats.standardised_distance_statistic(pair))}
            for v, runs in results.items() if baseline(v) in results}
    return found


def with_channel_sums(runs):
    """The runs ({seed: test.json}) that hold the channel sums of the standardised distance of Z."""
    return {seed: run for seed, run in runs.items() if has_channel_sums(run)}


def primary_family(found):
    """The primary questions: [(label, contrast, scenario, the paper's value, Difference or None,
    verdict after Holm's correction, where the paper's value lies)]. A question without its runs
    keeps its place in the family with p = 1, so the correction stays that of five questions."""
    rows = []
    for label, contrast, shaspec, s in PRIMARY:
        if shaspec:
            d = found["shaspec"].get(shaspec, {}).get(PRIMARY_PROTOCOL, {}).get(s)
        else:
            d = found["vs_hf"].get(PRIMARY_PROTOCOL, {}).get(s, {}).get("dis2")
        rows.append((label, contrast, s, (SHASPEC_PAPER if shaspec else HF_PAPER)[s], d))
    p = [1.0 if d is None or d.p is None else d.p for *_, d in rows]
    return [(*row, ("better" if row[-1].mean > 0 else "worse") if rejected else "not resolved",
             "-" if row[-1] is None else row[-1].place(row[3]))
            for row, rejected in zip(rows, stats.holm(p))]


def baseline(variant):
    return REPRODUCTION.get(variant, {}).get("baseline", "hf")


def comparisons_json(found):
    """comparisons() with every Difference as a dict and every pair as "a_vs_b"."""
    def convert(x):
        if isinstance(x, stats.Difference):
            return x.as_dict()
        if isinstance(x, dict):
            return {(f"{k[0]}_vs_{k[1]}" if isinstance(k, tuple) else k): convert(v) for k, v in x.items()}
        return x
    return convert(found)


def shown(difference, digits=2):
    return "-" if difference is None else difference.show(digits)


def named_verdict(difference, names):
    """A difference's verdict in the table's words: names["above"] or names["below"] where it is resolved."""
    return names.get("not resolved" if difference is None else difference.verdict, "not resolved")


def margin_reading(margins):
    """The sentence under "What moves the margin": how each factor changes DIS2 - HF in the missing
    scenarios, and whether any moves it beyond the noise. `margins`: found["margins"]."""
    missing = {"missing_rgir": "RGIR", "missing_ndsm": "NDSM"}
    effects, moved = [], False
    for label, factor in MARGIN_FACTORS.items():
        if label not in margins.get("counted", {}):
            continue
        parts = []
        for s, modality in missing.items():
            named = {p: named_verdict(margins[p][label][s], CHANGES) for p in stats.PROTOCOLS}
            moved |= any(v in CHANGES.values() for v in named.values())
            said = (named["counted"] if len(set(named.values())) == 1 else
                    "; ".join(f"{v} with clutter {p}" for p, v in named.items()))
            parts.append(f"{shown(margins['counted'][label][s])} with the {modality} missing ({said})")
        effects.append(f"{factor} changes the margin by " + " and ".join(parts))
    if not effects:
        return ""
    verdict = ("so at least one factor moves DIS2 - HF beyond the noise" if moved else
               "so no factor tested moves DIS2 - HF beyond the noise of these seeds and tiles")
    return "Reading (clutter counted; intervals over seeds / over seeds and tiles): " + "; ".join(effects) + f": {verdict}."


def claim(differences, direction, digits=2):
    """(outcome, evidence) of a claim resting on `differences` ({label: Difference}), each to be resolved in `direction`."""
    return (stats.claim_outcome(differences.values(), direction),
            "; ".join(f"{label}: {shown(d, digits)}" for label, d in differences.items()))


def claims(results, found):
    """The paper's three claims, and Table 1's against ShaSpec, each (statement, {protocol:
    (outcome, evidence)}), the outcome "holds", "does not hold" (the opposite is resolved) or
    "not resolved". Claim 2 is about features, not labels: the same under both protocols."""
    found_claims = []
    by_scenario = lambda differences: {SHORT_NAMES[s]: d for s, d in differences.items()}
    for variant in ("dis2", "dis2-per-scenario"):
        if variant in results and "hf" in results:
            outcome = {p: claim(by_scenario({s: found["vs_hf"][p][s][variant] for s in ("missing_rgir", "missing_ndsm")}),
                                "above") for p in stats.PROTOCOLS}
            found_claims.append((f"{VARIANT_NAMES[variant]} beats HF in both missing scenarios (paired mF1 difference)", outcome))
    for variant in ("dis2", "dis2-per-scenario"):
        if variant in results and "hf" in results:
            shrink = claim({f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}": found["distance"][(a, b)][variant]["standardised"]
                            for a, b in DISTANCE_PAIRS[:2]}, "below", digits=4)
            found_claims.append((f"distillation shrinks the full-vs-missing distance of Z, each channel in units of its "
                                 f"spread in the full scenario ({VARIANT_NAMES[variant]} minus HF < 0)",
                                 {p: shrink for p in stats.PROTOCOLS}))
    paper = ", ".join(f"{g:+.2f}" for g in SHASPEC_PAPER.values())
    for shaspec, by_protocol in found["shaspec"].items():
        found_claims.append((f"DIS2 beats {VARIANT_NAMES[shaspec]} in all three scenarios (paper: {paper} mF1 on "
                             f"Vaihingen)", {p: claim(by_scenario(by_protocol[p]), "above") for p in stats.PROTOCOLS}))
    for variant in ("dis2", "dis2-per-scenario", "hf"):
        if variant in results:
            found_claims.append((f"missing RGIR is the hardest scenario for {VARIANT_NAMES[variant]} "
                                 f"(the others' mF1 minus missing RGIR's > 0)",
                                 {p: claim(by_scenario(found["hardest"][p][variant]), "above") for p in stats.PROTOCOLS}))
    return found_claims


def tables_markdown(results, training, title, found=None):
    """Analogues of the paper's Tables 1-3 over seeds, the paired differences with their 95%
    intervals under both clutter protocols, the training losses and the outcome of the claims.
    `results`: variant -> seed -> test.json; `training`: variant -> seed -> (final training
    segmentation loss, its relative drop over the last quarter); `found`: comparisons(results)."""
    found = found or comparisons(results)
    seeds = lambda v: f"{len(results[v])} seed{'s' if len(results[v]) > 1 else ''}"
    ignored_mf1 = lambda runs, s: mean_std(whole_test_set(runs, stats.mf1_statistic(s, "ignored")).values())
    row = lambda label, runs, s: [label, *(mean_std(per_seed(runs, s, k).values()) for k in (*SCORED, "mF1", "mIoU", "OA")),
                                  ignored_mf1(runs, s)]
    header = [*SCORE_HEADER, "mF1, clutter ignored"]
    parts = [f"# {title}", "",
             "Scores are the mean ± standard deviation over seeds; F1 per class, mIoU and OA count clutter reference "
             "pixels as the ISPRS labels have them, the last column ignores them (the authors train 5 classes). "
             "A paired difference (same seeds, same test tiles) is shown as mean ± the half-width of its 95% interval "
             "over seeds (Student t) / ± that over seeds and test tiles, each source of noise counted once (the seed "
             "spread plus the tile noise all seeds share, from the tiles bootstrapped, "
             f"{stats.BOOTSTRAP_RESAMPLES} resamples), and counts only where the interval over seeds and tiles "
             "excludes 0; else it is \"not resolved\". One seed has no interval (docs/reproduction.md).", "",
             "Only the primary questions, named before their runs, are decided with a correction for testing "
             "several (Holm); every other section is exploratory: the same intervals, no correction.", ""]
    family = primary_family(found)
    rows = [[label, contrast, ROW_NAMES[s], shown(d), "-" if d is None or d.df is None else d.df,
             "-" if d is None or d.p is None else f"{d.p:.4f}", verdict, f"{paper:+.2f}", place]
            for label, contrast, s, paper, d, verdict, place in family]
    parts += ["## The primary questions (mF1, clutter counted; Holm at a family-wise 5%)", "",
              markdown_table(["", "Contrast", "Scenario", "Δ mF1", "df", "p", "Holm", "the paper (Vaihingen)",
                              "the paper's value"], rows), ""]
    if "dis2" in results:
        parts += [f"## Table 1 analogue: DIS2, F1 per class, mF1, mIoU (%), {seeds('dis2')} (exploratory)", "",
                  markdown_table(header, [row(ROW_NAMES[s], results["dis2"], s) for s in SCENARIOS]), ""]
    rows = []
    for s in SCENARIOS:
        rows.append([f"**{ROW_NAMES[s]}**", *[""] * (len(header) - 1)])
        rows += [row(f"{VARIANT_NAMES[v]} ({seeds(v)})", runs, s) for v, runs in results.items()]
    parts += ["## Table 2 analogue: the ablation (F1 %) (exploratory)", "", markdown_table(header, rows), ""]

    delta_header = [f"Δ {c}" for c in COLUMN_NAMES]
    if found["vs_hf"]:
        rows = [[ROW_NAMES[s], VARIANT_NAMES[v], *(x for p in stats.PROTOCOLS for x in (
                    shown(found["vs_hf"][p][s][v]), named_verdict(found["vs_hf"][p][s][v], OUTCOMES_VS_HF))),
                 *class_means(results[v], results["hf"], s)]
                for s in SCENARIOS for v in results if baseline(v) == "hf"]
        parts += ["## Paired differences against HF: mF1, mean ± 95% interval over seeds / over seeds and tiles "
                  "(exploratory)", "",
                  markdown_table(["Scenario", "Variant", "Δ mF1", "vs HF", "Δ mF1, clutter ignored", "vs HF", *delta_header],
                                 rows), ""]
    if found["layouts"]:
        names = {"above": "per-scenario better", "below": "shared better"}
        rows = [[ROW_NAMES[s], *(x for p in stats.PROTOCOLS for x in (shown(found["layouts"][p][s]),
                                                                         named_verdict(found["layouts"][p][s], names))),
                 *class_means(results["dis2-per-scenario"], results["dis2"], s)] for s in SCENARIOS]
        parts += ["## The two DIS2 layouts: per-scenario minus shared (same seeds, same tiles) (exploratory)", "",
                  markdown_table(["Scenario", "Δ mF1", "outcome", "Δ mF1, clutter ignored", "outcome", *delta_header], rows), ""]
    if found["margins"].get("counted"):
        rows = [[label, ROW_NAMES[s], *(x for p in stats.PROTOCOLS for x in (
                    shown(found["margins"][p][label][s]), named_verdict(found["margins"][p][label][s], CHANGES)))]
                for label in found["margins"]["counted"] for s in ("missing_rgir", "missing_ndsm")]
        parts += ["## What moves the margin (exploratory)", "",
                  "DIS2 minus HF in the missing scenarios with the paper's recipe (Eq. 14 as printed), with the authors' "
                  "DLKD recipe (distillation weighted 5 and off for the first 6% of the steps, L2-normalised feature "
                  "distillation, the KL averaged over the classes, the orthogonal loss on 3 levels) and at twice the "
                  "budget; then how the margin changes with each (same seeds, same tiles). A change is "
                  "\"larger\" or \"smaller\" only where its interval over seeds and tiles excludes 0.", "",
                  markdown_table(["Contrast", "Scenario", "Δ mF1", "resolved", "Δ mF1, clutter ignored", "resolved"],
                                 rows), ""]
        reading = margin_reading(found["margins"])
        if reading:
            parts += [reading, ""]
    if found["shaspec"]:
        rows = [[ROW_NAMES[s], VARIANT_NAMES[v], f"{SHASPEC_PAPER[s]:+.2f}", *(x for p in stats.PROTOCOLS for x in (
                    shown(found["shaspec"][v][p][s]), named_verdict(found["shaspec"][v][p][s],
                                                                   {"above": "DIS2 better", "below": "ShaSpec better"})))]
                for s in SCENARIOS for v in found["shaspec"]]
        parts += ["## Table 1's comparison: DIS2 minus ShaSpec (same seeds, same tiles) (exploratory; "
                  "at its authors' strength, the primary questions P3-P5 decide it)", "",
                  markdown_table(["Scenario", "ShaSpec", "paper (Vaihingen)", "Δ mF1", "outcome", "Δ mF1, clutter ignored",
                                  "outcome"], rows), ""]
    rows = []
    for pair in DISTANCE_PAIRS:
        for v, runs in results.items():
            d = found["distance"].get(pair, {}).get(v, {})
            summed = with_channel_sums(runs)
            rows.append([f"{SHORT_NAMES[pair[0]]} vs {SHORT_NAMES[pair[1]]}", VARIANT_NAMES[v],
                         mean_std(whole_test_set(runs, stats.distance_statistic(pair, False)).values(), 4),
                         shown(d.get("raw"), 4),
                         mean_std(whole_test_set(runs, stats.distance_statistic(pair, True)).values(), 4),
                         shown(d.get("relative"), 4),
                         mean_std(whole_test_set(summed, stats.standardised_distance_statistic(pair)).values(), 4)
                         if summed else "-",
                         shown(d.get("standardised"), 4), named_verdict(d.get("standardised"), CHANGES)
                         if d else "-"])
    parts += ["## Table 3 analogue: distance between the penultimate features Z of two scenarios (exploratory)", "",
              "The mean per-pixel L2 distance of Z (the paper's Table 3); the same divided by the mean norm of the "
              "full scenario's Z over the same windows, which one factor on all of Z cannot move; and the "
              "standardised distance, each channel of Z in units of its spread in the full scenario (RMS over the "
              "pixels), which no rescaling of Z's channels (batch norm's scale and shift, undone by the classifier) "
              "can move, so claim 2 is decided on it, over the seeds scored with its channel sums. \"Minus HF\": "
              "paired against HF trained at the same budget.", "",
              markdown_table(["Scenario pair", "Variant", "distance", "minus HF", "relative distance", "minus HF",
                              "standardised distance", "minus HF", "vs HF"], rows), ""]
    rows = [[VARIANT_NAMES[v], mean_std([loss for loss, _ in training[v].values()], 3),
             mean_std([100 * drop for _, drop in training[v].values()], 1)] for v in results if v in training]
    parts += ["## Training: has the loss flattened? (exploratory)", "",
              "The training segmentation loss (full plus missing scenario) of the last epoch, and how much it fell "
              "over the last quarter of the epochs (figure_training_loss.png shows the curves).", "",
              markdown_table(["Variant", "final loss", "drop over the last quarter (%)"], rows), "",
              "## The paper's claims on this benchmark (exploratory: claim 1 and DIS2 against ShaSpec at its "
              "authors' strength are decided by the primary questions above)", ""]
    for statement, outcome in claims(results, found):
        if len(set(outcome.values())) == 1:  # the same under both protocols
            protocols = "either protocol: **{}** ({})".format(*next(iter(outcome.values())))
        else:
            protocols = "; ".join(f"{stats.PROTOCOLS[p]}: **{o}** ({evidence})" for p, (o, evidence) in outcome.items())
        parts.append(f"- {statement}: {protocols}")
    return "\n".join(parts) + "\n"

if __name__ == "__main__":
    data.exit_on_user_error(main)
