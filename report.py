"""
The reproduction's report: from the runs' saved scores (variant -> seed ->
test.json), the paired differences with their intervals (comparisons), the
primary questions decided by Holm (primary_family, primary_power), the
outcome of the paper's claims (claims) and tables.md, the analogues of the
paper's Tables 1-3 (tables_markdown). reproduce.py trains and scores the
runs and writes tables.md and results.json with these; the statistics
themselves are stats.py's.
"""

import numpy as np

import stats
from dis2 import SCENARIOS
from evaluate import COLUMN_NAMES, DISTANCE_PAIRS, ROW_NAMES, SCORED, SHORT_NAMES


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


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


def has_channel_sums(result):
    """Whether a test.json holds, per tile, the sums of the standardised distance of Z."""
    return all("z_channels" in tile for tile in result["per_tile"].values())


def primary_family(found):
    """The primary questions: [(label, contrast, scenario, the paper's value, Difference or None,
    verdict after Holm's correction, where the paper's value lies, the threshold Holm compares its
    p-value with)]. A question without its runs keeps its place in the family with p = 1, so the
    correction stays that of five questions."""
    rows = []
    for label, contrast, shaspec, s in PRIMARY:
        if shaspec:
            d = found["shaspec"].get(shaspec, {}).get(PRIMARY_PROTOCOL, {}).get(s)
        else:
            d = found["vs_hf"].get(PRIMARY_PROTOCOL, {}).get(s, {}).get("dis2")
        rows.append((label, contrast, s, (SHASPEC_PAPER if shaspec else HF_PAPER)[s], d))
    p = [1.0 if d is None or d.p is None else d.p for *_, d in rows]
    return [(*row, ("better" if row[-1].mean > 0 else "worse") if rejected else "not resolved",
             "-" if row[-1] is None else row[-1].place(row[3]), threshold)
            for row, rejected, threshold in zip(rows, stats.holm(p), stats.holm_thresholds(p))]


def primary_power(family):
    """{label: stats.Difference.power_summary at its Holm threshold, or None} of the primary questions."""
    return {label: None if d is None else d.power_summary(threshold) for label, _, _, _, d, _, _, threshold in family}


def baseline(variant):
    from reproduce import REPRODUCTION  # the run plan; imported here because reproduce.py imports this module
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
               "so no factor tested moves DIS2 - HF beyond the noise of these seeds and tiles; a change smaller "
               "than an interval's half-width is not ruled out")
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
    power = primary_power(family)
    rows = [[label, contrast, ROW_NAMES[s], shown(d), "-" if d is None or d.df is None else d.df,
             "-" if d is None or d.p is None else f"{d.p:.4f}", f"{threshold:.4f}", verdict, f"{paper:+.2f}", place]
            for label, contrast, s, paper, d, verdict, place, threshold in family]
    parts += ["## The primary questions (mF1, clutter counted; Holm at a family-wise 5%)", "",
              "The paper's values are for the real Vaihingen at the paper's scale; ours for a synthetic benchmark at "
              "this budget, another population: \"smaller than the paper's\" places the paper's value against our "
              "interval, it does not test the paper. The intervals cover other seeds and other test tiles like "
              "these; every seed trains on the same training tiles, so another training set is not covered.", "",
              markdown_table(["", "Contrast", "Scenario", "Δ mF1", "df", "p", "Holm's threshold", "Holm",
                              "the paper (Vaihingen)", "the paper's value"], rows), "",
              "Power (the t test's, noncentral t): at the mean found, at 5% / at Holm's threshold; the margin these "
              "seeds resolve with 80% power; the seeds that would resolve the mean found with 80% power (the same "
              "test tiles, the spread over seeds found).", ""]
    pair = lambda x, f: f"{f(x['5%'])} / {f(x['holm'])}"
    rows = [[label, *(["-"] * 3 if power[label] is None else [
                pair(power[label]["power_at_mean"], lambda x: f"{100 * x:.0f}%"),
                pair(power[label]["margin_for_80_percent_power"], lambda x: f"{x:.2f}"),
                pair(power[label]["seeds_for_80_percent_power_at_mean"], lambda n: n or "over 1000")])]
            for label, *_ in family]
    parts += [markdown_table(["", "power at Δ (5% / Holm)", "margin at 80% power (5% / Holm)",
                              "seeds for Δ at 80% power (5% / Holm)"], rows), ""]
    if "dis2" in results and "hf" in results:  # where P1's margin lies
        by_class = {c: stats.paired_difference(results["dis2"], results["hf"], stats.class_f1_statistic("missing_rgir", c))
                    for c in SCORED}
        rows = [[name, shown(d), "-" if d is None or d.p is None else f"{d.p:.4f}"]
                for name, d in zip(COLUMN_NAMES, by_class.values())]
        parts += ["P1 by class: DIS2 - HF, F1 with the RGIR missing (exploratory, no correction)", "",
                  markdown_table(["Class", "Δ F1", "p"], rows), ""]
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
