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
import synth
import train
from data import DataError
from dis2 import SCENARIOS
from evaluate import COLUMN_NAMES, DISTANCE_PAIRS, ROW_NAMES, SCORED, SHORT_NAMES, distances_by_name, evaluate_tiles
from runtime import autocast_dtype, load_checkpoint, model_from_checkpoint, precision, resolve_device, use_channels_last, writable_dir

# Defaults of the flags that set the budget of every run: within 4 hours for all runs on 2 CPU cores, or,
# with --full, the paper's sizes on a GPU.
BUDGETS = {
    "reproduce": dict(epochs=20, batch_size=8, patch=128, samples_per_epoch=800, width=16),
    "reproduce-full": dict(epochs=100, batch_size=8, patch=512, samples_per_epoch=2000, width=32),
}
# The reproduction's runs: the four variants of Table 2 and DIS2 in the authors' per-scenario
# layout, each with its number of seeds (3 where a claim needs the spread over seeds).
REPRODUCTION = {
    "hf": dict(ablation="hf", layout="shared", seeds=3),
    "hf+cw": dict(ablation="hf+cw", layout="shared", seeds=1),
    "hf+dlkd": dict(ablation="hf+dlkd", layout="shared", seeds=1),
    "dis2": dict(ablation="dis2", layout="shared", seeds=3),
    "dis2-per-scenario": dict(ablation="dis2", layout="per-scenario", seeds=3),
}
# The synthetic benchmark of the reproduction (Vaihingen layout): tiles, tile side, generator seed.
SYNTHETIC_BENCHMARKS = {
    "reproduce": dict(tiles=33, size=640, seed=2026),
    "reproduce-full": dict(tiles=33, size=2000, seed=2026),
}


def parse_args(argv=None):
    p = train.training_parser("Train and score the reproduction's runs and write DIR/tables.md and the figures "
                              "(on the synthetic benchmark, or on --data); the same command resumes; "
                              "see docs/reproduction.md.")
    p.add_argument("out_dir", metavar="DIR", help="where the runs, tables and figures go (and the synthetic benchmark, without --data)")
    p.add_argument("--full", action="store_true", help="the paper's sizes, for a GPU")
    p.add_argument("--variants", type=variant_list,
                   help=f"the runs to train, comma-separated (default: all of {','.join(REPRODUCTION)})")
    p.add_argument("--seeds", type=data.positive_int,
                   help="seeds per variant (default: 3 for hf, dis2 and dis2-per-scenario, 1 for the others)")
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
    DIR/tables.md (means and spreads over seeds, paired differences against
    HF, the claims), DIR/results.json and the figures. Without --data it
    first writes the synthetic benchmark (SYNTHETIC_BENCHMARKS) to DIR/data.
    Runs go seed by seed (every variant's first seed, then the second, ...);
    finished runs are reused and a stopped run resumes, so the same command
    continues an interrupted reproduction, in as many parts as it takes."""
    out = writable_dir(args.out_dir, "DIR")
    mode = budget_name(args)
    data_dir = Path(args.data) if args.data else out / "data"
    if not args.data and not data_dir.exists():
        synth.synthesize(data_dir, "vaihingen", **SYNTHETIC_BENCHMARKS[mode])
    variants = args.variants or list(REPRODUCTION)
    seeds = {v: [args.seed + k for k in range(args.seeds or REPRODUCTION[v]["seeds"])] for v in variants}
    for k in range(max(len(s) for s in seeds.values())):
        for variant in variants:
            if k < len(seeds[variant]) and not reproduce_run(args, variant, seeds[variant][k], out, data_dir, device, amp_dtype):
                return  # stopped by Ctrl-C or SIGTERM; the same command resumes

    runs = {v: {seed: out / "runs" / v / f"seed{seed}" for seed in seeds[v]} for v in variants}
    results = {v: {seed: json.loads((run / "test.json").read_text()) for seed, run in rs.items()} for v, rs in runs.items()}
    curves = {v: {seed: training_curve(run / "metrics.csv") for seed, run in rs.items()} for v, rs in runs.items()}
    training = {v: {seed: loss_flattening(curve) for seed, curve in cs.items()} for v, cs in curves.items()}
    hours = sum(r["train_seconds"] + r["evaluate_seconds"] for rs in results.values() for r in rs.values()) / 3600
    test_tiles = data.load_split(data_dir, "test", args.dataset)
    source = f"the data in {args.data}" if args.data else (
        "the synthetic benchmark `data.synthesize(DIR, 'vaihingen', " +
        ", ".join(f"{k}={v}" for k, v in SYNTHETIC_BENCHMARKS[mode].items()) + ")`")
    budget = ", ".join(f"{k.replace('_', '-')} {getattr(args, k)}" for k in BUDGETS[mode])
    title = (f"DIS2 reproduction on {source}, {len(test_tiles)} test tiles; budget per run: {budget}; "
             f"seeds from {args.seed}; {device}; {hours:.1f} h of training and evaluation in all")
    (out / "tables.md").write_text(tables_markdown(results, training, title))
    (out / "results.json").write_text(json.dumps(dict(title=title, runs=results, training_curves=curves), indent=2))
    reproduction_figures(out, seeds, test_tiles, curves)
    print((out / "tables.md").read_text())
    print(f"figures: {', '.join(str(p) for p in sorted(out.glob('figure*.png')))}")


def reproduce_run(args, variant, seed, out, data_dir, device, amp_dtype):
    """Trains (or resumes) one run of the reproduction and scores its best
    checkpoint on the test tiles into run/test.json, with the wall time of
    both. Returns False when training was stopped."""
    run = out / "runs" / variant / f"seed{seed}"
    if (run / "test.json").exists():
        print(f"{variant}, seed {seed}: trained and scored already ({run})")
        return True
    checkpoint = load_checkpoint(run / "last.pt") if (run / "last.pt").exists() else None
    if not checkpoint or checkpoint["state"]["epoch"] < args.epochs:
        run_args = argparse.Namespace(**{**vars(args), **{k: v for k, v in REPRODUCTION[variant].items() if k != "seeds"},
                                         "seed": seed, "out": str(run), "data": str(data_dir), "resume": str(run / "last.pt") if checkpoint else None})
        if not train.train(run_args, checkpoint, device, amp_dtype, rank=0, world=1):
            return False
        checkpoint = load_checkpoint(run / "last.pt")
    # Training may take several sessions: last.pt holds its wall time summed over them.
    train_seconds = checkpoint["state"]["train_seconds"]
    start = time.perf_counter()
    model = model_from_checkpoint(load_checkpoint(run / "best.pt"), device, channels_last=args.channels_last)
    # Colour maps of HF's and DIS2's runs feed Figure 3.
    save_dir = writable_dir(run / "predictions", "DIR") if variant in ("hf", "dis2") else None
    test_tiles = data.load_split(data_dir, "test", args.dataset)
    scores, distances = evaluate_tiles(model, test_tiles, list(SCENARIOS),
                                       args.patch, args.patch // 4, args.batch_size, device, amp_dtype,
                                       feature_distance=True, save_dir=save_dir, channels_last=args.channels_last)
    result = dict(scores=scores, feature_distance=distances_by_name(distances),
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


def score_rows(label, result):
    return [label, *(pct(result["f1"][c]) for c in SCORED), pct(result["mF1"]), pct(result["mIoU"]), pct(result["OA"])]


SCORE_HEADER = ["", *COLUMN_NAMES, "mF1", "mIoU", "OA"]


VARIANT_NAMES = {"hf": "Hierarchical Fusion (HF)", "hf+cw": "HF + Classwise (CW)", "hf+dlkd": "HF + DLKD",
                 "dis2": "HF + CW + DLKD (DIS2)", "dis2-per-scenario": "DIS2, per-scenario layout (authors')"}
CLAIM_MARGIN = 2  # a difference counts only beyond this many standard errors of its mean


def spread(values):
    """Mean and sample standard deviation (None for a single value) of a list of numbers."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def mean_std(values, digits=2):
    """'mean ± std' over seeds, or the single value, or '-' when there is none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = spread(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_difference(a, b):
    """a - b over the seeds both have ({seed: value} each): (mean, standard error
    of the mean or None for one pair, number of pairs), or None without pairs."""
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if not seeds:
        return None
    mean, std = spread([a[s] - b[s] for s in seeds])
    return mean, (None if std is None else std / np.sqrt(len(seeds))), len(seeds)


def verdict(difference):
    """'above' when the mean paired difference exceeds CLAIM_MARGIN standard
    errors, 'below' when it is that far under 0, else 'not resolved'."""
    if difference is None or difference[1] is None:
        return "not resolved"
    mean, se, _ = difference
    return "above" if mean > CLAIM_MARGIN * se else "below" if mean < -CLAIM_MARGIN * se else "not resolved"


def show_difference(difference, digits=2):
    if difference is None:
        return "-"
    mean, se, n = difference
    return f"{mean:+.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "") + f" (n={n})"


def per_seed(runs, scenario, key):
    """{seed: score} of one variant's runs; key is "mF1", "mIoU", "OA" or a class name (its F1)."""
    get = lambda r: r[key] if key in r else r["f1"][key]
    return {seed: get(run["scores"][scenario]) for seed, run in runs.items()}


def distance_per_seed(runs, pair):
    return {seed: run["feature_distance"][f"{pair[0]}_vs_{pair[1]}"] for seed, run in runs.items()}


def claim_outcome(differences, direction):
    """"holds" when every paired difference is resolved in `direction` ("above"
    or "below" 0), "does not hold" when any is resolved the other way, else "not resolved"."""
    verdicts = {verdict(d) for d in differences}
    opposite = "below" if direction == "above" else "above"
    return "holds" if verdicts == {direction} else "does not hold" if opposite in verdicts else "not resolved"


def claims(results):
    """The paper's three claims, each (statement, outcome, evidence) with outcome
    "holds", "does not hold" (the opposite is resolved) or "not resolved".
    `results`: variant -> seed -> {"scores": ..., "feature_distance": ...}."""
    found = []
    missing = ("missing_rgir", "missing_ndsm")
    for variant in ("dis2", "dis2-per-scenario"):
        if variant not in results or "hf" not in results:
            continue
        gains = {s: paired_difference(per_seed(results[variant], s, "mF1"), per_seed(results["hf"], s, "mF1"))
                 for s in missing}
        found.append((f"{VARIANT_NAMES[variant]} beats HF in both missing scenarios (paired mF1 difference)",
                      claim_outcome(gains.values(), "above"),
                      "; ".join(f"{SHORT_NAMES[s]}: {show_difference(d)}" for s, d in gains.items())))
    for variant in ("dis2", "dis2-per-scenario"):
        if variant not in results or "hf" not in results:
            continue
        shrink = {pair: paired_difference(distance_per_seed(results[variant], pair), distance_per_seed(results["hf"], pair))
                  for pair in DISTANCE_PAIRS[:2]}
        found.append((f"distillation shrinks the full-vs-missing distance of Z ({VARIANT_NAMES[variant]} minus HF < 0)",
                      claim_outcome(shrink.values(), "below"),
                      "; ".join(f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}: {show_difference(d, 4)}" for (a, b), d in shrink.items())))
    for variant in ("dis2", "dis2-per-scenario", "hf"):
        if variant not in results:
            continue
        rgir = per_seed(results[variant], "missing_rgir", "mF1")
        margins = {s: paired_difference(per_seed(results[variant], s, "mF1"), rgir) for s in ("full", "missing_ndsm")}
        found.append((f"missing RGIR is the hardest scenario for {VARIANT_NAMES[variant]} (the others' mF1 minus missing RGIR's > 0)",
                      claim_outcome(margins.values(), "above"),
                      "; ".join(f"{SHORT_NAMES[s]}: {show_difference(d)}" for s, d in margins.items())))
    return found


def tables_markdown(results, training, title):
    """Analogues of the paper's Tables 1-3 over seeds, paired differences
    against HF, the training losses and the outcome of the claims.
    `results`: variant -> seed -> {"scores": scenario -> scores, "feature_distance": pair name -> d};
    `training`: variant -> seed -> (final training segmentation loss, its relative drop over the last quarter)."""
    seeds = lambda v: f"{len(results[v])} seed{'s' if len(results[v]) > 1 else ''}"
    row = lambda label, runs, s: [label, *(mean_std(per_seed(runs, s, k).values()) for k in (*SCORED, "mF1", "mIoU", "OA"))]
    parts = [f"# {title}", "",
             f"Scores are the mean ± standard deviation over seeds. A difference counts only where its mean over "
             f"the paired seeds is more than {CLAIM_MARGIN} standard errors from 0.", ""]
    if "dis2" in results:
        parts += [f"## Table 1 analogue: DIS2, F1 per class, mF1, mIoU (%), {seeds('dis2')}", "",
                  markdown_table(SCORE_HEADER, [row(ROW_NAMES[s], results["dis2"], s) for s in SCENARIOS]), ""]
    rows = []
    for s in SCENARIOS:
        rows.append([f"**{ROW_NAMES[s]}**", *[""] * (len(SCORE_HEADER) - 1)])
        rows += [row(f"{VARIANT_NAMES[v]} ({seeds(v)})", runs, s) for v, runs in results.items()]
    parts += ["## Table 2 analogue: the ablation (F1 %)", "", markdown_table(SCORE_HEADER, rows), ""]

    def paired_row(s, v, baseline, outcomes):
        d = paired_difference(per_seed(results[v], s, "mF1"), per_seed(results[baseline], s, "mF1"))
        class_means = [paired_difference(per_seed(results[v], s, c), per_seed(results[baseline], s, c)) for c in SCORED]
        per_class = ["-" if c is None else f"{c[0]:+.2f}" for c in class_means]
        return [ROW_NAMES[s], VARIANT_NAMES[v], show_difference(d), outcomes.get(verdict(d), "not resolved"), *per_class]

    delta_header = [f"Δ {c}" for c in COLUMN_NAMES]
    if "hf" in results and len(results) > 1:
        rows = [paired_row(s, v, "hf", {"above": "better", "below": "worse"}) for s in SCENARIOS for v in results if v != "hf"]
        parts += ["## Paired differences against HF (same seeds): mF1 mean ± standard error, and the mean per class", "",
                  markdown_table(["Scenario", "Variant", "Δ mF1", "vs HF", *delta_header], rows), ""]
    if "dis2" in results and "dis2-per-scenario" in results:
        rows = [paired_row(s, "dis2-per-scenario", "dis2", {"above": "per-scenario better", "below": "shared better"})
                for s in SCENARIOS]
        parts += ["## The two DIS2 layouts: per-scenario minus shared (same seeds)", "",
                  markdown_table(["Scenario", "Variant", "Δ mF1", "outcome", *delta_header], rows), ""]
    rows = []
    for a, b in DISTANCE_PAIRS:
        for v, runs in results.items():
            d = paired_difference(distance_per_seed(runs, (a, b)), distance_per_seed(results["hf"], (a, b))) \
                if "hf" in results and v != "hf" else None
            rows.append([f"{SHORT_NAMES[a]} vs {SHORT_NAMES[b]}", VARIANT_NAMES[v],
                         mean_std(distance_per_seed(runs, (a, b)).values(), 4), show_difference(d, 4)])
    parts += ["## Table 3 analogue: mean L2 distance between the penultimate features Z of two scenarios", "",
              markdown_table(["Scenario pair", "Variant", "distance", "minus HF (paired)"], rows), ""]
    rows = [[VARIANT_NAMES[v], mean_std([loss for loss, _ in training[v].values()], 3),
             mean_std([100 * drop for _, drop in training[v].values()], 1)] for v in results if v in training]
    parts += ["## Training: has the loss flattened?", "",
              "The training segmentation loss (full plus missing scenario) of the last epoch, and how much it fell "
              "over the last quarter of the epochs (figure_training_loss.png shows the curves).", "",
              markdown_table(["Variant", "final loss", "drop over the last quarter (%)"], rows), "",
              "## The paper's claims on this benchmark", ""]
    parts += [f"- {statement}: **{outcome}** ({evidence})" for statement, outcome, evidence in claims(results)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    data.exit_on_user_error(main)
