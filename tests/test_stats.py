"""stats.py: scores from per-tile confusions under both clutter protocols, Student-t quantiles, paired
differences with intervals over seeds and tiles, verdicts, the claims, and a feature distance that a
rescaling of Z cannot move."""

import math

import numpy as np
import pytest
import torch

import data
import evaluate
import report
import stats
from dis2 import DIS2, DIS2Config, SCENARIOS

trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it; numpy 1.24 has only trapz

CLUTTER = data.CLASSES.index("clutter")


def test_t_quantiles_match_the_integral_of_the_density():
    for df in (1, 2, 3, 4, 6, 10, 30, 40, 120):
        log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        q = stats.t_quantile(df)
        x = np.linspace(0, q, 200_001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
        assert 2 * trapezoid(density, x) == pytest.approx(0.95, abs=2e-5), df


def test_every_t_quantile_of_the_table_is_the_exact_one_rounded():
    """Each entry against the quantile found by a Newton step on the integral of the density: right to
    its 4 decimals, and what t_quantile gives up to the table's end."""
    for df, entry in enumerate(stats.T_QUANTILES, start=1):
        log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
        x = np.linspace(0, entry, 400_001)
        density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
        exact = entry + (0.475 - trapezoid(density, x)) / density[-1]
        assert abs(entry - exact) <= 0.5e-4 + 1e-7 and stats.t_quantile(df) == entry, (df, entry, exact)


def hand_f1(confusion, ignore_clutter):
    """F1 per class by counting, one class at a time."""
    K = len(confusion)
    rows = [r for r in range(K) if not (ignore_clutter and r == CLUTTER)]
    f1 = []
    for k in range(K):
        tp = confusion[k][k] if k in rows else 0
        fp = sum(confusion[r][k] for r in rows if r != k)
        fn = sum(confusion[k][c] for c in range(K) if c != k) if k in rows else 0
        f1.append(float("nan") if 2 * tp + fp + fn == 0 else 200 * tp / (2 * tp + fp + fn))
    return f1


def test_scores_from_confusions_under_both_protocols():
    rng = np.random.default_rng(3)
    confusion = rng.integers(0, 50, (6, 6)) + np.diag([500] * 6)
    confusion[CLUTTER, 4] = 400  # clutter taken for cars
    for protocol, ignore in (("counted", False), ("ignored", True)):
        expected = hand_f1(confusion.tolist(), ignore)
        np.testing.assert_allclose(stats.f1_per_class(confusion, protocol), expected)
        assert stats.mean_f1(confusion, protocol) == pytest.approx(np.mean(expected[:5]))
    assert stats.mean_f1(confusion, "counted") == pytest.approx(evaluate.scores(confusion)["mF1"])
    # Ignoring reference clutter removes the car false positives it caused.
    assert stats.f1_per_class(confusion, "ignored")[4] > stats.f1_per_class(confusion, "counted")[4] + 15


def run_with(confusions):
    """A test.json with these per-tile confusions ({scenario: [K x K per tile]})."""
    tiles = range(len(next(iter(confusions.values()))))
    return {"per_tile": {f"area{t}": {"confusion": {s: c[t] for s, c in confusions.items()}} for t in tiles}}


def diagonal(correct, wrong=0):
    """A confusion with `correct` pixels right in each scored class and `wrong` cars taken for roads."""
    c = np.diag([correct] * 5 + [0])
    c[4, 0] = wrong
    return c


def test_paired_difference_over_seeds_and_tiles_by_hand():
    statistic = stats.mf1_statistic("full")
    a = {s: run_with({"full": [diagonal(100, w) for w in (10 + s, 30, 5)]}) for s in range(3)}
    b = {s: run_with({"full": [diagonal(100, w) for w in (40, 30 + 2 * s, 5)]}) for s in range(4)}  # seed 3 unpaired
    d = stats.paired_difference(a, b, statistic, resamples=300)
    tiles = sorted(a[0]["per_tile"])
    per_seed = [stats.mean_f1(sum(np.array(a[s]["per_tile"][t]["confusion"]["full"]) for t in tiles))
                - stats.mean_f1(sum(np.array(b[s]["per_tile"][t]["confusion"]["full"]) for t in tiles)) for s in range(3)]
    assert d.n == 3 and d.mean == pytest.approx(np.mean(per_seed))
    se_seeds = np.std(per_seed, ddof=1) / math.sqrt(3)
    assert d.half_seeds == pytest.approx(4.3027 * se_seeds, rel=1e-4)
    # The same bootstrap by loops: the tiles drawn (with replacement) alike for every run.
    index = np.random.default_rng(stats.BOOTSTRAP_SEED).integers(0, 3, (300, 3))
    boot = []
    for draw in index:
        total = lambda runs, s: sum(np.array(runs[s]["per_tile"][tiles[i]]["confusion"]["full"]) for i in draw)
        boot.append(np.mean([stats.mean_f1(total(a, s)) - stats.mean_f1(total(b, s)) for s in range(3)]))
    assert d.se_tiles == pytest.approx(np.std(boot, ddof=1))
    assert d.half_tiles_twice == pytest.approx(4.3027 * math.hypot(se_seeds, np.std(boot, ddof=1)), rel=1e-4)


def test_a_gain_on_one_tile_is_resolved_over_seeds_but_not_over_seeds_and_tiles():
    """Every seed gains the same on tile 0 and nothing elsewhere: the seeds agree, the tiles do not."""
    noise = lambda s: [0, 1, 2, 1, 0][s]
    a = {s: run_with({"full": [diagonal(100, 2 + noise(s))] + [diagonal(100, 20)] * 5}) for s in range(5)}
    b = {s: run_with({"full": [diagonal(100, 60)] + [diagonal(100, 20)] * 5}) for s in range(5)}
    d = stats.paired_difference(a, b, stats.mf1_statistic("full"))
    assert d.mean > d.half_seeds > 0  # the Student-t interval over seeds alone excludes 0
    assert d.verdict == "not resolved" and d.half_both > d.mean
    # Spread over all tiles instead, the same gain is resolved.
    a = {s: run_with({"full": [diagonal(100, 10 + noise(s))] * 6}) for s in range(5)}
    b = {s: run_with({"full": [diagonal(100, 20)] * 6}) for s in range(5)}
    assert stats.paired_difference(a, b, stats.mf1_statistic("full")).verdict == "above"
    assert stats.paired_difference(b, a, stats.mf1_statistic("full")).verdict == "below"
    one_seed = stats.paired_difference({0: a[0]}, {0: b[0]}, stats.mf1_statistic("full"))
    assert one_seed.half_both is None and one_seed.verdict == "not resolved"


def fake_run(mf1_wrong, distance, clutter_as_car=0):
    """A run whose tiles have `mf1_wrong[scenario]` cars taken for roads, the same distance for
    every pair, Z of norm 1, and channel sums whose standardised distance is `distance` too (two
    channels of variance 1 over 100 pixels)."""
    def confusion(s):
        c = diagonal(100, mf1_wrong[s])
        c[CLUTTER, 4] = clutter_as_car
        return c
    channels = {"pixels": 100, "full_sum": [0.0, 0.0], "full_sumsq": [100.0, 100.0],
                **{f"{a}_vs_{b}": [50 * distance**2] * 2 for a, b in evaluate.DISTANCE_PAIRS}}
    tiles = {f"area{t}": {"confusion": {s: confusion(s).tolist() for s in SCENARIOS}, "windows": 4,
                          "feature_distance": {**{f"{a}_vs_{b}": distance for a, b in evaluate.DISTANCE_PAIRS}, "z_full": 1.0},
                          "z_channels": channels}
             for t in range(4)}
    total = {s: 4 * confusion(s) for s in SCENARIOS}
    return {"per_tile": tiles, "scores": {s: evaluate.scores(total[s]) for s in SCENARIOS}}


def outcome(results, fragment, protocol="counted"):
    found = report.comparisons(results)
    return next(o[protocol][0] for statement, o in report.claims(results, found)
                if fragment in statement and "per-scenario" not in statement)


def test_claims_under_both_protocols():
    beats, shrinks, hardest = "(DIS2) beats HF", "shrinks the full-vs-missing distance", "hardest scenario for HF + CW + DLKD"
    hf = {s: fake_run({"full": 5, "missing_rgir": 60 + s, "missing_ndsm": 30 + s}, 1.0 + 0.01 * s) for s in range(3)}
    clear = {s: fake_run({"full": 5, "missing_rgir": 40 + s, "missing_ndsm": 20 + s}, 0.5 + 0.01 * s) for s in range(3)}
    assert [outcome({"hf": hf, "dis2": clear}, f) for f in (beats, shrinks, hardest)] == ["holds"] * 3
    noisy = {s: fake_run({"full": 5, "missing_rgir": 60 + 8 * (s - 1), "missing_ndsm": 30 + s}, 1.0 + 0.01 * s) for s in range(3)}
    assert outcome({"hf": hf, "dis2": noisy}, beats) == "not resolved"
    assert outcome({"hf": hf, "dis2": noisy}, shrinks) == "not resolved"  # identical distances
    worse = {s: fake_run({"full": 5, "missing_rgir": 80 + s, "missing_ndsm": 30 + s}, 1.0) for s in range(3)}
    assert outcome({"hf": hf, "dis2": worse}, beats) == "does not hold"
    # Clutter taken for cars with the NDSM missing: worse when counted, level when ignored.
    cluttered = {s: fake_run({"full": 5, "missing_rgir": 40 + s, "missing_ndsm": 30 + s}, 0.5, clutter_as_car=150 + s)
                 for s in range(3)}
    hf_clean = {s: fake_run({"full": 5, "missing_rgir": 60 + s, "missing_ndsm": 30 + s}, 1.0) for s in range(3)}
    assert outcome({"hf": hf_clean, "dis2": cluttered}, beats, "counted") == "does not hold"
    assert outcome({"hf": hf_clean, "dis2": cluttered}, beats, "ignored") == "not resolved"


def test_tables_show_both_protocols_and_the_layout_comparison():
    hf = {s: fake_run({"full": 5, "missing_rgir": 60 + s, "missing_ndsm": 30 + s}, 1.0) for s in range(3)}
    shared = {s: fake_run({"full": 5, "missing_rgir": 40 + s, "missing_ndsm": 20 + s}, 0.5) for s in range(3)}
    per_scenario = {s: fake_run({"full": 5, "missing_rgir": 40 + s, "missing_ndsm": 40 + 2 * s}, 0.5) for s in range(3)}
    tables = report.tables_markdown({"hf": hf, "dis2": shared, "dis2-per-scenario": per_scenario}, {}, "toy")
    layouts = tables.split("## The two DIS2 layouts")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in layouts.splitlines()
            if line.startswith("| ") and "(n=3)" in line]
    assert [(row[2], row[4]) for row in rows] == [("not resolved", "not resolved"), ("not resolved", "not resolved"),
                                                  ("shared better", "shared better")]


def scored_before_and_after_rescaling_z(dataset, factors):
    """A tiny model's test tiles scored (scores, distances, per tile), then again after channel j of
    Z is multiplied by factors(C)[j] > 0 through the merge batch norm's scale and shift, and the
    classifier's column j divided by it, which leaves the logits as they are."""
    torch.manual_seed(0)
    model = DIS2(DIS2Config(width=4, embed_dim=16, heads=2, depth=1, pos_size=32)).eval()
    tiles = data.load_split(dataset, "test")
    evaluation = lambda: evaluate.evaluate_tiles(model, tiles, list(SCENARIOS), 32, 8, 2, torch.device("cpu"), None,
                                                 feature_distance=True, progress=False)
    before = evaluation()
    head = model.fusion_decoder("full")
    c = factors(head.classifier.in_channels)
    with torch.no_grad():
        head.decoder.merge[1].weight *= c
        head.decoder.merge[1].bias *= c
        head.classifier.weight /= c[None, :, None, None]
    return before, evaluation()


def test_relative_distance_ignores_a_rescaling_of_z(dataset):
    """Batch norm's scale and shift before Z times 0.7, the classifier divided by 0.7: the
    logits stay, the raw distances shrink by 30%, the relative ones do not move."""
    (scores, raw, per_tile), (rescaled_scores, rescaled, rescaled_tiles) = scored_before_and_after_rescaling_z(
        dataset, lambda C: torch.full((C,), 0.7))
    assert rescaled_scores == scores
    run = lambda tiles_: {"per_tile": tiles_}
    for pair in evaluate.DISTANCE_PAIRS:
        assert rescaled[pair] == pytest.approx(0.7 * raw[pair], rel=1e-5)
        before, after = (report.whole_test_set({0: run(t)}, stats.distance_statistic(pair, True))[0]
                         for t in (per_tile, rescaled_tiles))
        assert after == pytest.approx(before, rel=1e-5)


def test_standardised_distance_ignores_a_rescaling_of_each_channel_of_z(dataset):
    """Each channel j of Z times its own c_j > 0 (the merge batch norm's scale and shift), the
    classifier's column j divided by c_j: the logits stay, the raw and relative distances move,
    the standardised distance (claim 2's measure), per tile and over the tiles, does not."""
    (scores, raw, per_tile), (rescaled_scores, rescaled, rescaled_tiles) = scored_before_and_after_rescaling_z(
        dataset, lambda C: torch.linspace(0.3, 3.0, C))
    assert rescaled_scores == scores
    run = lambda tiles_: {0: {"per_tile": tiles_}}
    for pair in evaluate.DISTANCE_PAIRS:
        assert rescaled[pair] != pytest.approx(raw[pair], rel=0.05)
        relative = [report.whole_test_set(run(t), stats.distance_statistic(pair, True))[0] for t in (per_tile, rescaled_tiles)]
        assert relative[1] != pytest.approx(relative[0], rel=1e-3)  # moved, if less than the raw one
        assert rescaled["standardised"][pair] == pytest.approx(raw["standardised"][pair], rel=1e-5)
        assert raw["standardised"][pair] > 0
        statistic = stats.standardised_distance_statistic(pair)
        over_tiles = [report.whole_test_set(run(t), statistic)[0] for t in (per_tile, rescaled_tiles)]
        assert over_tiles[1] == pytest.approx(over_tiles[0], rel=1e-5)
        assert over_tiles[0] == pytest.approx(raw["standardised"][pair], rel=1e-9)


def test_standardised_distance_by_hand():
    """sqrt(mean_pixels sum_c (dZ_c / sigma_c)^2) from two tiles' sums, against the formula on the pixels."""
    rng = np.random.default_rng(0)
    z = {s: rng.normal(1, [0.5, 2.0, 0.0], (2, 10, 3)) for s in SCENARIOS}  # (tiles, pixels, channels); channel 2 constant
    z["full"][..., 2] = 4.0
    sums = lambda t: {"pixels": 10, "full_sum": z["full"][t].sum(0).tolist(), "full_sumsq": (z["full"][t] ** 2).sum(0).tolist(),
                      **{f"{a}_vs_{b}": ((z[a][t] - z[b][t]) ** 2).sum(0).tolist() for a, b in evaluate.DISTANCE_PAIRS}}
    run = {"per_tile": {f"t{t}": {"z_channels": sums(t)} for t in range(2)}}
    pixels = {s: z[s].reshape(20, 3) for s in SCENARIOS}
    sigma = pixels["full"].std(0)
    for a, b in evaluate.DISTANCE_PAIRS:
        expected = np.sqrt((((pixels[a] - pixels[b])[:, :2] / sigma[:2]) ** 2).sum(1).mean())
        value = stats.standardised_distance_statistic((a, b))(run, ["t0", "t1"], np.array([[0, 1]]))[0]
        assert value == pytest.approx(expected, rel=1e-12)
