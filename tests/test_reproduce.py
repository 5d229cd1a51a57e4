"""reproduce.py at a toy budget (every table and figure, resumption), and the statistics of its tables."""

import json

import numpy as np
import pytest
from PIL import Image

import data
import evaluate
import reproduce
import runtime
import synth
import train
from dis2 import SCENARIOS
from tools import hf_calibration

TOY = ["--epochs", "1", "--width", "4", "--patch", "32", "--samples-per-epoch", "4", "--batch-size", "2"]


def test_reproduce_writes_tables_and_figures_and_reuses_finished_runs(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "reproduction"
    synth.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    reproduce.main([str(out), "--data", str(root), "--seeds", "2", *TOY])
    for variant, settings in reproduce.REPRODUCTION.items():
        for seed in (0, 1):
            run = out / "runs" / variant / f"seed{seed}"
            assert (run / "best.pt").is_file() and (run / "test.json").is_file()
            config = runtime.load_checkpoint(run / "best.pt")["config"]
            assert config["layout"] == settings["layout"] and runtime.load_checkpoint(run / "best.pt")["train_args"]["seed"] == seed
            seconds = json.loads((run / "test.json").read_text())["train_seconds"]
            assert seconds > 0 and seconds == runtime.load_checkpoint(run / "last.pt")["state"]["train_seconds"]

    tables = (out / "tables.md").read_text()
    for heading in ("## Table 1 analogue", "## Table 2 analogue", "## Paired differences against HF",
                    "## The two DIS2 layouts", "## Table 3 analogue", "## Training: has the loss flattened?", "## The paper's claims"):
        assert tables.count(heading) == 1, heading
    table2 = tables.split("## Table 2 analogue")[1].split("## Paired")[0]
    for name in reproduce.VARIANT_NAMES.values():
        assert table2.count(f"| {name} (2 seeds) |") == 3, name  # one row per scenario
        assert " ± " in table2
    paired = tables.split("## Paired differences")[1].split("## The two DIS2 layouts")[0]
    assert paired.count("(n=2)") == 3 * 4  # every scenario, every variant but HF
    layouts = tables.split("## The two DIS2 layouts")[1].split("## Table 3")[0]
    assert layouts.count("(n=2)") == 3  # one row per scenario
    claims = [line for line in tables.split("## The paper's claims")[1].splitlines() if line.startswith("- ")]
    assert len(claims) == 7  # beats HF and shrinks the distance (two layouts each), hardest scenario (three variants)
    assert all(any(f"**{o}**" in c for o in ("holds", "does not hold", "not resolved")) for c in claims)

    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == set(reproduce.REPRODUCTION)
    assert all(set(run["scores"]) == set(SCENARIOS) for runs in results["runs"].values() for run in runs.values())
    assert all(len(curve) == 1 for runs in results["training_curves"].values() for curve in runs.values())  # one epoch

    test_tiles = data.load_split(root, "test")
    H, W = test_tiles[0].label.shape
    # grid_image: a 150 px label column, a 28 px header, 6 px gaps; cells resized to a fixed height
    figures = {
        "figure3_predictions.png": (150 + 9 * (round(200 * W / H) + 6), 28 + len(test_tiles[:3]) * 206),
        "figure6_attention.png": (150 + 7 * 166, 28 + 3 * 166),
        "figure_training_loss.png": (760, 420),
    }
    for name, size in figures.items():
        image = Image.open(out / name)
        assert image.format == "PNG" and image.size == size, name
        assert np.asarray(image.convert("RGB")).std() > 0, name  # not blank
    shared, per_scenario = Image.open(out / "figure4_queries.png"), Image.open(out / "figure4_queries_per_scenario.png")
    assert per_scenario.size[0] > shared.size[0]  # one query heatmap per scenario instead of one shared
    # Every run draws its own Figures 4 and 6 (seeds may run in parallel); the reproduction shows the first seed's.
    for variant, name in [*reproduce.FIGURE4_NAMES.items(), ("dis2", reproduce.FIGURE6_NAME)]:
        first, second = (out / "runs" / variant / f"seed{seed}" / name for seed in (0, 1))
        assert (out / name).read_bytes() == first.read_bytes() and second.is_file()

    # Run again: every run is reused; a run without its scores is scored again, and only it.
    (out / "runs" / "hf+cw" / "seed1" / "test.json").unlink()
    capsys.readouterr()
    reproduce.main([str(out), "--data", str(root), "--seeds", "2", *TOY])
    printed = capsys.readouterr().out
    assert printed.count("trained and scored already") == 9
    assert (out / "runs" / "hf+cw" / "seed1" / "test.json").is_file()


def test_a_calibration_run_trains_only_the_variants_asked_for(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "reproduction"
    synth.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    reproduce.main([str(out), "--data", str(root), "--variants", "hf", *TOY])
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["hf"]
    assert sorted(p.name for p in (out / "runs" / "hf").iterdir()) == ["seed0", "seed1", "seed2"]
    tables = (out / "tables.md").read_text()
    assert "## Table 1 analogue" not in tables and "| Hierarchical Fusion (HF) (3 seeds) |" in tables
    capsys.readouterr()
    hf_calibration.main([str(out)])  # the calibration rule, checked on these runs
    printed = capsys.readouterr().out
    assert "HF, 3 seeds (seed0, seed1, seed2)" in printed
    assert sum(line.startswith(("holds: ", "DOES NOT HOLD: ")) for line in printed.splitlines()) == 3


def paper_hf_scores(ndsm_only=(66.07, 82.50, 40.23, 68.36, 30.02), irrg_only=(81.88, 85.37, 70.87, 81.86, 62.94)):
    """The paper's HF (Table 2, Vaihingen) as one run's test.json scores, clutter left out as in mF1."""
    rows = {"full": (85.76, 89.38, 74.51, 83.00, 68.28), "missing_rgir": ndsm_only, "missing_ndsm": irrg_only}
    return {s: dict(f1=dict(zip(data.CLASSES, f1)), mF1=float(np.mean(f1))) for s, f1 in rows.items()}


def test_calibration_rule_holds_on_the_papers_hf_and_fails_where_it_should():
    table = hf_calibration.mean_scores([paper_hf_scores()])
    assert [holds for _, holds in hf_calibration.rule_checks(table)] == [True, True, True]
    assert table["missing_rgir"]["mF1"][0] == pytest.approx(57.44, abs=0.01)
    # With the NDSM alone, impervious surfaces worst and low vegetation best: the second part fails.
    swapped = hf_calibration.mean_scores([paper_hf_scores(ndsm_only=(40.23, 82.50, 66.07, 68.36, 30.02))])
    assert [holds for _, holds in hf_calibration.rule_checks(swapped)] == [True, False, True]
    # Buildings below 75 with the IRRG alone, and missing NDSM as hard as missing RGIR.
    weak = hf_calibration.mean_scores([paper_hf_scores(irrg_only=(66.07, 70.0, 40.23, 68.36, 30.02))])
    assert [holds for _, holds in hf_calibration.rule_checks(weak)] == [False, True, False]
    # Means over seeds: the rule is read on the mean, the spread is the sample standard deviation.
    two = hf_calibration.mean_scores([paper_hf_scores(), paper_hf_scores(ndsm_only=(62.07, 82.50, 44.23, 68.36, 30.02))])
    assert two["missing_rgir"]["impervious_surface"] == pytest.approx((64.07, np.std([66.07, 62.07], ddof=1)))


def test_reproduction_flags_moved_to_reproduce_py(capsys):
    for flags in (["--reproduce", "x"], ["--data", "x", "--seeds", "2"], ["--data", "x", "--variants=hf"]):
        with pytest.raises(data.DataError, match="has moved: use `python reproduce.py DIR"):
            train.parse_args(flags)
    with pytest.raises(SystemExit):
        reproduce.parse_args(["x", "--variants", "hf,dis3"])
    assert "give names from" in capsys.readouterr().err


def test_paired_difference_and_verdict_match_a_hand_computation():
    a, b = {0: 70.0, 1: 74.0, 2: 72.0, 3: 50.0}, {0: 65.0, 1: 66.0, 2: 70.0}  # seed 3 has no pair
    mean, se, n = reproduce.paired_difference(a, b)
    d = np.array([5.0, 8.0, 2.0])
    assert n == 3 and mean == pytest.approx(5.0) and se == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert reproduce.verdict((mean, se, n)) == "above"  # 5 > 2 * 1.73
    assert reproduce.verdict((1.0, 1.0, 3)) == "not resolved"
    assert reproduce.verdict((-3.0, 1.0, 3)) == "below"
    assert reproduce.verdict(reproduce.paired_difference({0: 1.0}, {0: 0.0})) == "not resolved"  # one pair: no spread


def fake_run(mf1, distance):
    """A run's test.json with these mF1 per scenario and full-vs-missing distances."""
    score = lambda m: {"f1": {c: m for c in data.CLASSES}, "mF1": m, "mIoU": m, "OA": m}
    return {"scores": {s: score(m) for s, m in zip(SCENARIOS, mf1)},
            "feature_distance": {f"{a}_vs_{b}": distance for a, b in evaluate.DISTANCE_PAIRS}}


def test_claims_hold_only_beyond_two_standard_errors():
    hf = {seed: fake_run((90, 60 + seed, 85 + seed), 1.0 + 0.01 * seed) for seed in range(3)}
    clear = {seed: fake_run((90, 66 + seed, 88 + seed), 0.5 + 0.01 * seed) for seed in range(3)}  # +6, +3 on every seed
    noisy = {seed: fake_run((90, 60 + 4 * (seed - 1) + seed, 85 + seed), 1.0 + 0.01 * seed) for seed in range(3)}
    def outcome(results, fragment):
        return next(o for statement, o, _ in reproduce.claims(results) if fragment in statement and "per-scenario" not in statement)

    beats, shrinks, hardest = "(DIS2) beats HF", "shrinks the full-vs-missing distance", "hardest scenario for HF + CW + DLKD"
    assert [outcome({"hf": hf, "dis2": clear}, f) for f in (beats, shrinks, hardest)] == ["holds"] * 3
    assert outcome({"hf": hf, "dis2": noisy}, beats) == "not resolved"  # differences -4, 0, +4
    assert outcome({"hf": hf, "dis2": noisy}, shrinks) == "not resolved"  # identical distances
    worse = {seed: fake_run((90, 50 + seed, 85 + seed), 1.0) for seed in range(3)}
    assert outcome({"hf": hf, "dis2": worse}, beats) == "does not hold"


def test_the_layout_table_compares_per_scenario_with_shared_on_the_same_seeds():
    hf = {seed: fake_run((90, 60 + seed, 85 + seed), 1.0) for seed in range(3)}
    shared = {seed: fake_run((92, 64 + seed, 87 + seed), 0.5) for seed in range(3)}
    per_scenario = {seed: fake_run((92, 66 + 2 * seed, 86 + seed), 0.5) for seed in range(3)}  # +2, +3, +4; -1 always
    tables = reproduce.tables_markdown({"hf": hf, "dis2": shared, "dis2-per-scenario": per_scenario}, {}, "toy")
    rows = [line for line in tables.split("## The two DIS2 layouts")[1].split("## Table 3")[0].splitlines()
            if line.startswith("| ") and "(n=3)" in line]
    assert [row.split(" | ")[3] for row in rows] == ["not resolved", "per-scenario better", "shared better"]
    assert "+3.00 ± 0.58 (n=3)" in rows[1] and "-1.00 ± 0.00 (n=3)" in rows[2]
