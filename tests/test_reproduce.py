"""train.py --reproduce at a toy budget: every table and figure, with the expected structure."""

import json

import numpy as np
from PIL import Image

import data
import train
from dis2 import ABLATIONS

TOY = ["--epochs", "1", "--width", "4", "--patch", "32", "--samples-per-epoch", "4", "--batch-size", "2"]


def test_reproduce_writes_tables_and_figures(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "reproduction"
    data.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    train.main(["--reproduce", str(out), "--data", str(root), *TOY])
    for variant in ABLATIONS:
        assert (out / "runs" / variant / "best.pt").is_file()

    tables = (out / "tables.md").read_text()
    for heading in ("## Table 1 analogue", "## Table 2 analogue", "## Table 3 analogue", "## The paper's claims"):
        assert tables.count(heading) == 1, heading
    table2 = tables.split("## Table 2 analogue")[1].split("## Table 3")[0]
    for variant in ("Hierarchical Fusion (HF)", "HF + Classwise (CW)", "HF + DLKD", "HF + CW + DLKD (DIS2)"):
        assert table2.count(f"| {variant} |") == 3, variant  # one row per scenario
    claims = [line for line in tables.split("## The paper's claims")[1].splitlines() if line.startswith("- ")]
    assert len(claims) == 3 and all("**holds**" in c or "**does not hold**" in c for c in claims)

    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == set(ABLATIONS)
    assert all(set(r) == {"full", "missing_rgir", "missing_ndsm"} for r in results["scores"].values())
    assert set(results["feature_distance"]["dis2"]) == {"full_vs_missing_rgir", "full_vs_missing_ndsm",
                                                         "missing_rgir_vs_missing_ndsm"}

    test_tiles = data.load_split(root, "test")
    H, W = test_tiles[0].label.shape
    # grid_image: a 150 px label column, a 28 px header, 6 px gaps; cells resized to a fixed height
    figures = {
        "figure3_predictions.png": (150 + 9 * (round(200 * W / H) + 6), 28 + len(test_tiles[:3]) * 206),
        "figure6_attention.png": (150 + 7 * 166, 28 + 3 * 166),
    }
    for name, size in figures.items():
        image = Image.open(out / name)
        assert image.format == "PNG" and image.size == size, name
    queries = Image.open(out / "figure4_queries.png")
    assert queries.format == "PNG" and queries.size[1] == 28 + 156
    assert np.asarray(queries.convert("RGB")).std() > 0  # not blank

    # Run again: the trained variants are reused, the outputs rewritten.
    capsys.readouterr()
    train.main(["--reproduce", str(out), "--data", str(root), *TOY])
    assert capsys.readouterr().out.count("trained already") == 4
