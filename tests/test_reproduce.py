"""reproduce.py at a toy budget (every table and figure, resumption), and the statistics of its tables."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import figures
import report
import reproduce
import runtime
import stats
import stats
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
            checkpoint = runtime.load_checkpoint(run / "best.pt")
            assert checkpoint["train_args"]["ablation"] == settings["ablation"]
            assert checkpoint["train_args"]["layout"] == settings["layout"] and checkpoint["train_args"]["seed"] == seed
            assert checkpoint["train_args"]["recipe"] == settings.get("recipe", "paper")
            assert runtime.load_checkpoint(run / "last.pt")["state"]["epoch"] == settings.get("budget", 1)  # TOY: 1 epoch
            seconds = json.loads((run / "test.json").read_text())["train_seconds"]
            assert seconds > 0 and seconds == runtime.load_checkpoint(run / "last.pt")["state"]["train_seconds"]

    tables = (out / "tables.md").read_text()
    for heading in ("## The primary questions", "## Table 1 analogue", "## Table 2 analogue",
                    "## Paired differences against HF",
                    "## The two DIS2 layouts", "## What moves the margin", "## Table 1's comparison",
                    "## Table 3 analogue", "## Training: has the loss flattened?", "## The paper's claims"):
        assert tables.count(heading) == 1, heading
    table2 = tables.split("## Table 2 analogue")[1].split("## Paired")[0]
    for name in report.VARIANT_NAMES.values():
        assert table2.count(f"| {name} (2 seeds) |") == 3, name  # one row per scenario
        assert " ± " in table2
    paired = tables.split("## Paired differences")[1].split("## The two DIS2 layouts")[0]
    against_hf = [v for v in reproduce.REPRODUCTION if report.baseline(v) == "hf"]
    assert len(against_hf) == 7 and paired.count("(n=2)") == 3 * 7 * 2  # every scenario, both clutter protocols
    layouts = tables.split("## The two DIS2 layouts")[1].split("## What moves the margin")[0]
    assert layouts.count("(n=2)") == 3 * 2  # one row per scenario, both protocols
    claims = [line for line in tables.split("## The paper's claims")[1].splitlines() if line.startswith("- ")]
    assert len(claims) == 9  # beats HF, shrinks the distance (two layouts each), beats each ShaSpec, hardest (three)
    margins = tables.split("## What moves the margin")[1].split("## Table 1's comparison")[0]
    margin_rows = [line for line in margins.splitlines() if line.startswith("| ")]
    assert sum(row.count("(n=2)") for row in margin_rows) == len(report.MARGINS) * 2 * 2  # two scenarios, protocols
    assert margins.count("Reading (clutter counted") == 1 and all(f in margins for f in report.MARGIN_FACTORS.values())
    shaspec = tables.split("## Table 1's comparison: DIS2 minus ShaSpec")[1].split("## Table 3")[0]
    assert shaspec.count("(n=2)") == 3 * 2 * 2  # two ShaSpecs
    primary = tables.split("## The primary questions")[1].split("## Table 1 analogue")[0]
    rows = [line.split(" | ") for line in primary.splitlines() if line.startswith("| P") and "(n=" in line]
    assert [row[0] for row in rows] == ["| P1", "| P2", "| P3", "| P4", "| P5"]
    assert all("(n=2)" in row[3] and row[7] in ("better", "worse", "not resolved") for row in rows)
    assert sorted(float(row[6]) for row in rows) == pytest.approx([0.01, 0.0125, 0.0167, 0.025, 0.05], abs=1e-4)
    assert [row[8] for row in rows] == ["+5.62", "+1.88", "+2.26", "+5.84", "+6.52"]
    power = [line.split(" | ") for line in primary.splitlines() if line.startswith("| P") and "%" in line]
    assert [row[0] for row in power] == ["| P1", "| P2", "| P3", "| P4", "| P5"]
    assert tables.count("(exploratory") >= 9
    assert all(any(f"**{o}**" in c for o in ("holds", "does not hold", "not resolved")) for c in claims)

    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == set(reproduce.REPRODUCTION)
    test_tiles = data.load_split(root, "test")
    for runs in results["runs"].values():
        for run in runs.values():  # per-tile confusions: any statistic can be recomputed without the model
            assert run["test_set"] == f"the test split of {root}" and set(run["per_tile"]) == {t.name for t in test_tiles}
    difference = results["differences"]["vs_hf"]["ignored"]["missing_rgir"]["dis2"]
    assert difference["n"] == 2 and difference["ci95_seeds_and_tiles"] >= 0 and difference["ci95_seeds"] >= 0
    assert difference["df"] >= 1 and 0 <= difference["p"] <= 1
    # Table 3 pairs each variant with HF at its own budget: DIS2 at twice the budget with HF at twice it,
    # recomputed here from the per-tile distances (window-weighted means of Z's distance and norm).
    def relative_distance(run):
        tiles = run["per_tile"].values()
        distance = sum(t["feature_distance"]["full_vs_missing_rgir"] * t["windows"] for t in tiles)
        return distance / sum(t["feature_distance"]["z_full"] * t["windows"] for t in tiles)
    doubled = results["differences"]["distance"]["full_vs_missing_rgir"]["dis2-2x"]["relative"]
    by_hand = np.mean([relative_distance(results["runs"]["dis2-2x"][s]) - relative_distance(results["runs"]["hf-2x"][s])
                       for s in ("0", "1")])
    assert doubled["n"] == 2 and doubled["mean"] == pytest.approx(by_hand)
    table3 = tables.split("## Table 3 analogue")[1].split("## Training")[0]
    assert all(row.count("(n=2)") == 3 for row in table3.splitlines() if "| DIS2, twice the budget |" in row)
    assert all(set(run["scores"]) == set(SCENARIOS) for runs in results["runs"].values() for run in runs.values())
    assert all(len(curve) == reproduce.REPRODUCTION[v].get("budget", 1)  # one epoch per budget
               for v, runs in results["training_curves"].items() for curve in runs.values())

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
    assert printed.count("trained and scored already") == 2 * len(reproduce.REPRODUCTION) - 1
    assert (out / "runs" / "hf+cw" / "seed1" / "test.json").is_file()


def test_synthetic_reproduction_scores_fresh_test_tiles_and_retrains_what_is_gone(tmp_path, monkeypatch, capsys):
    """Without --data: the benchmark's own test split is the calibration set, the test tiles come
    from another generator seed; a test.json of other tiles is scored again from the checkpoints,
    and a run whose checkpoints are gone is trained again."""
    monkeypatch.setitem(reproduce.SYNTHETIC_BENCHMARKS, "reproduce", dict(tiles=4, size=64, seed=1))
    monkeypatch.setitem(reproduce.TEST_TILES, "reproduce", dict(tiles=4, size=64, seed=5))
    out = tmp_path / "reproduction"
    reproduce.main([str(out), "--variants", "hf", "--seeds", "2", *TOY])
    fresh, calibration = data.load_split(out / "data-test", "test"), data.load_split(out / "data", "test")
    assert not np.array_equal(fresh[0].rgir, calibration[0].rgir)
    run = out / "runs" / "hf" / "seed0"
    result = json.loads((run / "test.json").read_text())
    assert result["test_set"] == f"the {len(fresh)} test tiles of generator seed 5 (never used before)"
    model = runtime.model_from_checkpoint(runtime.load_checkpoint(run / "best.pt"), torch.device("cpu"))
    expected, _, _ = evaluate.evaluate_tiles(model, fresh, list(SCENARIOS), 32, 8, 2, torch.device("cpu"), None, progress=False)
    assert result["scores"] == expected
    calibrated, _, _ = evaluate.evaluate_tiles(model, calibration, list(SCENARIOS), 32, 8, 2, torch.device("cpu"), None,
                                               progress=False)
    assert json.loads((run / "calibration.json").read_text())["scores"] == calibrated
    # An earlier test.json (scored on other tiles): scored again from the checkpoint, not trained again.
    (run / "test.json").write_text(json.dumps({**result, "test_set": "older tiles"}))
    metrics = (run / "metrics.csv").read_text()
    # The same, but its checkpoints are gone (as after a fresh clone): trained again.
    gone = out / "runs" / "hf" / "seed1"
    (gone / "test.json").write_text(json.dumps({**result, "test_set": "older tiles"}))
    for name in ("best.pt", "last.pt"):
        (gone / name).unlink()
    capsys.readouterr()
    reproduce.main([str(out), "--variants", "hf", "--seeds", "2", *TOY])
    printed = capsys.readouterr().out
    assert "trained and scored already" not in printed and printed.count("epoch 1/1 ") == 1  # only seed 1 trained
    assert json.loads((run / "test.json").read_text())["test_set"] == result["test_set"]
    assert (run / "metrics.csv").read_text() == metrics
    assert len((gone / "metrics.csv").read_text().splitlines()) == 2  # header and one epoch: the old rows went
    # Scored before test.json kept the channel sums of Z: scored again where the checkpoints are, with its
    # sums and the same scores; without checkpoints it stays as it is (claim 2 leaves it out).
    scored = json.loads((run / "test.json").read_text())
    assert report.has_channel_sums(scored)
    without_sums = {**scored, "per_tile": {t: {k: v for k, v in tile.items() if k != "z_channels"}
                                           for t, tile in scored["per_tile"].items()}}
    for seed_run in (run, gone):
        (seed_run / "test.json").write_text(json.dumps(without_sums))
    for name in ("best.pt", "last.pt"):
        (gone / name).unlink()
    capsys.readouterr()
    reproduce.main([str(out), "--variants", "hf", "--seeds", "2", *TOY])
    printed = capsys.readouterr().out
    assert printed.count("trained and scored already") == 1 and "epoch 1/1 " not in printed  # nothing trained
    rescored = json.loads((run / "test.json").read_text())
    assert report.has_channel_sums(rescored) and rescored["scores"] == scored["scores"]
    assert not report.has_channel_sums(json.loads((gone / "test.json").read_text()))


def test_a_calibration_run_trains_only_the_variants_asked_for(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "reproduction"
    synth.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    reproduce.main([str(out), "--data", str(root), "--variants", "hf", "--seeds", "3", *TOY])
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["hf"]
    assert sorted(p.name for p in (out / "runs" / "hf").iterdir()) == [f"seed{k}" for k in range(3)]
    tables = (out / "tables.md").read_text()
    assert "## Table 1 analogue" not in tables and "| Hierarchical Fusion (HF) (3 seeds) |" in tables
    capsys.readouterr()
    hf_calibration.main([str(out)])  # the calibration rule, checked on these runs
    printed = capsys.readouterr().out
    assert "HF, 3 seeds (seed0, seed1, seed2)" in printed
    assert sum(line.startswith(("holds: ", "DOES NOT HOLD: ")) for line in printed.splitlines()) == 3


def test_report_tabulates_the_finished_runs_and_names_the_rest(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "reproduction"
    synth.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    with pytest.raises(SystemExit) as stop:
        data.exit_on_user_error(lambda: reproduce.main([str(out), "--data", str(root), "--report", *TOY]))
    assert stop.value.code == 2 and capsys.readouterr().err.startswith("error: --report: no run under ")
    reproduce.main([str(out), "--data", str(root), "--variants", "hf", "--seeds", "2", *TOY])
    reproduce.main([str(out), "--data", str(root), "--variants", "dis2", "--seeds", "1", *TOY])
    stale = out / "runs" / "shaspec" / "seed0"  # scored on other test tiles: not finished
    stale.mkdir(parents=True)
    hf_run = out / "runs" / "hf" / "seed1"
    (stale / "metrics.csv").write_text((hf_run / "metrics.csv").read_text())
    (stale / "test.json").write_text(json.dumps({**json.loads((hf_run / "test.json").read_text()), "test_set": "older"}))
    capsys.readouterr()
    reproduce.main([str(out), "--data", str(root), "--report", *TOY])
    assert "epoch 1/1 " not in capsys.readouterr().out  # nothing trained
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["dis2", "hf", "shaspec"]
    assert sorted(p.name for p in (out / "runs" / "dis2").iterdir()) == ["seed0"]
    tables = (out / "tables.md").read_text()
    title = tables.splitlines()[0]
    total = sum(settings["seeds"] for settings in reproduce.REPRODUCTION.values())
    assert f"; interim: 3 of {total} runs finished, still to train: hf seeds 2, 3, 4, 5, 6, 7, 8, 9; " in title
    assert "; dis2 seeds 1, 2, 3, 4, 5, 6, 7, 8, 9; " in title and "; hf+cw seed 0; " in title and "; shaspec seeds 0, 1, 2, 3, 4; " in title
    assert "| Hierarchical Fusion (HF) (2 seeds) |" in tables and "| HF + CW + DLKD (DIS2) (1 seed) |" in tables
    assert "## Table 1's comparison" not in tables and "## Paired differences against HF" in tables
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"hf", "dis2"} and set(results["runs"]["hf"]) == {"0", "1"}
    assert results["differences"]["vs_hf"]["counted"]["missing_rgir"]["dis2"]["n"] == 1  # paired on the common seed
    assert (out / "figure3_predictions.png").is_file() and (out / "figure6_attention.png").is_file()


def paper_hf_scores(ndsm_only=(66.07, 82.50, 40.23, 68.36, 30.02), irrg_only=(81.88, 85.37, 70.87, 81.86, 62.94)):
    """The paper's HF (Table 2, Vaihingen) as one run's test.json scores, clutter left out as in mF1."""
    rows = {"full": (85.76, 89.38, 74.51, 83.00, 68.28), "missing_rgir": ndsm_only, "missing_ndsm": irrg_only}
    return {s: dict(f1=dict(zip(data.CLASSES, f1)), mF1=float(np.mean(f1))) for s, f1 in rows.items()}


def test_training_loss_figure_draws_each_variant_in_its_own_colour(tmp_path):
    # One horizontal curve per variant of the reproduction, each at its own loss; PIL draws lines
    # without antialiasing, so the pixel in the middle of each is exactly that variant's colour.
    variants = list(reproduce.REPRODUCTION)
    curves = {v: {0: [(0, float(i)), (100, float(i))]} for i, v in enumerate(variants)}
    size, (left, right, top, bottom) = (760, 420), figures.LOSS_PLOT_MARGINS
    figures.figure_training_loss(curves, tmp_path / "loss.png", size)
    image = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    x = (left + size[0] - right) // 2
    ys = [round(top + (size[1] - top - bottom) * (len(variants) - 1 - i) / (len(variants) - 1)) for i in range(len(variants))]
    colours = {tuple(int(c) for c in image[y, x]) for y in ys}
    assert len(colours) == len(variants) and colours.isdisjoint({(255, 255, 255), (0, 0, 0)})


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


def test_margin_reading_says_which_factor_moves_the_margin():
    """The reading under "What moves the margin" follows the verdicts: a change resolved under one
    clutter protocol only is named with its protocol, and "no factor" is said only when none is resolved."""
    noise = stats.Difference(0.5, 5, 2.0, 2.5, 0.7, 0.4)  # interval over seeds and tiles holds 0
    larger = stats.Difference(3.0, 5, 1.0, 1.5, 0.4, 0.3)
    recipe, budget = report.MARGIN_FACTORS
    margins = {p: {recipe: {"missing_rgir": noise, "missing_ndsm": noise},
                   budget: {"missing_rgir": noise, "missing_ndsm": None}} for p in stats.PROTOCOLS}
    reading = report.margin_reading(margins)
    assert "no factor tested moves DIS2 - HF" in reading and "larger" not in reading
    assert "+0.50 ± 2.00 / ± 2.50 (n=5) with the RGIR missing (not resolved)" in reading and "- with the NDSM" in reading
    margins["ignored"][budget]["missing_rgir"] = larger
    reading = report.margin_reading(margins)
    assert "(not resolved with clutter counted; larger with clutter ignored)" in reading
    assert "at least one factor moves DIS2 - HF" in reading
    del margins["counted"][budget], margins["ignored"][budget]
    assert "twice the budget" not in report.margin_reading(margins)
    assert report.margin_reading({"counted": {}, "ignored": {}}) == ""


def test_primary_family_is_decided_by_holm_and_placed_against_the_paper():
    """Five p-values through Holm's step-down (an unrun question keeps p = 1), and the paper's value
    inside, above or below each 95% interval."""
    def difference(mean, se):  # df 9, as for 10 seeds with no shared tile noise
        return stats.Difference(mean, 10, 2.2622 * se, 2.2622 * se, se, 0.1, 0.0, 9)
    d = {"missing_rgir": difference(2.0, 0.5), "missing_ndsm": difference(1.5, 0.6)}  # p 0.0031 and 0.034
    found = {"vs_hf": {"counted": {s: {"dis2": d[s]} for s in d}},
             "shaspec": {"shaspec-authors": {"counted": {"full": difference(0.1, 1.0), "missing_rgir": difference(-3.0, 0.5),
                                                         "missing_ndsm": difference(6.0, 2.0)}}}}
    family = report.primary_family(found)
    assert [row[0] for row in family] == ["P1", "P2", "P3", "P4", "P5"]
    p = [row[4].p for row in family]
    assert p[0] == pytest.approx(0.0031, abs=1e-4) and p[3] < 3e-4 and p[4] == pytest.approx(0.015, abs=1e-3)
    # Sorted: P4 (< 0.01), P1 (<= 0.0125), P5 (0.015 <= 0.0167), P2 (0.034 > 0.025): stop; P3 not reached.
    assert [row[5] for row in family] == ["better", "not resolved", "not resolved", "worse", "better"]
    assert [row[6] for row in family] == ["smaller than the paper's", "consistent with the paper",
                                          "consistent with the paper", "smaller than the paper's", "consistent with the paper"]
    assert [row[7] for row in family] == pytest.approx([0.05 / 4, 0.05 / 2, 0.05, 0.05 / 5, 0.05 / 3])
    power = report.primary_power(family)
    assert power["P4"]["holm_threshold"] == pytest.approx(0.01)
    assert power["P1"]["power_at_mean"]["5%"] == pytest.approx(family[0][4].power())
    assert power["P1"]["power_at_mean"]["holm"] < power["P1"]["power_at_mean"]["5%"]
    del found["shaspec"]["shaspec-authors"]  # not yet run: P3-P5 count with p = 1
    assert [row[5] for row in report.primary_family(found)] == ["better", "not resolved", "not resolved",
                                                                   "not resolved", "not resolved"]
