"""The calibration rule of the synthetic benchmark (docs/synthetic_benchmark.md), checked on the
HF runs of a reproduction:

    python tools/hf_calibration.py docs/reproduction

reads each HF run's scores on the tiles the benchmark was calibrated on (DIR/runs/hf/seed*/
calibration.json, the synthetic benchmark's own test split, which reproduce.py now scores as a
second validation set; test.json where there is none, as with --data), prints HF's F1 per class and
mF1 in each scenario (mean and standard deviation over the seeds found) and whether each part of the
rule holds on the means. It never reads the fresh test tiles.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
from evaluate import ROW_NAMES, SCORED  # noqa: E402
from report import spread  # noqa: E402

LARGE_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree")
GAP_RATIO = 3  # full minus missing-RGIR mF1 at least this many times full minus missing-NDSM
IRRG_BUILDING_F1 = 75


def mean_scores(runs: list[dict]) -> dict:
    """scenario -> {class or "mF1": (mean, std over runs or None for one run)}; NaN where a class is absent from the
    test tiles and never predicted (its F1 is undefined: None in test.json)."""
    table = {}
    for scenario in ROW_NAMES:
        columns = {name: [r[scenario]["f1"][name] for r in runs] for name in SCORED}
        columns["mF1"] = [r[scenario]["mF1"] for r in runs]
        table[scenario] = {name: spread([np.nan if x is None else x for x in values]) for name, values in columns.items()}
    return table


def rule_checks(table: dict) -> list[tuple[str, bool]]:
    """Each part of the rule, said with its numbers, and whether it holds on the means."""
    mean = {s: {k: v[0] for k, v in row.items()} for s, row in table.items()}
    gap_rgir = mean["full"]["mF1"] - mean["missing_rgir"]["mF1"]
    gap_ndsm = mean["full"]["mF1"] - mean["missing_ndsm"]["mF1"]
    ratio = gap_rgir / gap_ndsm if gap_ndsm > 0 else float("inf")  # missing NDSM costs nothing: any gap is larger
    ndsm_order = sorted(LARGE_CLASSES, key=lambda name: mean["missing_rgir"][name])
    irrg = mean["missing_ndsm"]
    irrg_worst = min(SCORED, key=lambda name: irrg[name])
    return [
        (f"missing RGIR is the hardest: full minus missing-RGIR mF1 {gap_rgir:.2f} is "
         f"{ratio:.1f} times full minus missing-NDSM {gap_ndsm:.2f} (at least {GAP_RATIO})",
         gap_rgir > 0 and ratio >= GAP_RATIO),
        ("NDSM alone, the four large classes from worst: " +
         ", ".join(f"{name} {mean['missing_rgir'][name]:.1f}" for name in ndsm_order) +
         " (low_vegetation worst, impervious_surface second)",
         ndsm_order[:2] == ["low_vegetation", "impervious_surface"]),
        (f"IRRG alone: building {irrg['building']:.1f} (at least {IRRG_BUILDING_F1}), "
         f"worst class {irrg_worst} {irrg[irrg_worst]:.1f} (car)",
         irrg["building"] >= IRRG_BUILDING_F1 and irrg_worst == "car"),
    ]


def main(argv=None):
    p = data.ArgumentParser(description="Check the synthetic benchmark's calibration rule on HF runs.")
    p.add_argument("reproduction", help="the reproduce.py directory (holding runs/hf/seed*/calibration.json)")
    args = p.parse_args(argv)
    runs = sorted(Path(args.reproduction).glob("runs/hf/seed*"))
    files = [run / "calibration.json" if (run / "calibration.json").exists() else run / "test.json" for run in runs]
    files = [f for f in files if f.exists()]
    if not files:
        raise data.DataError(f"no HF runs in {args.reproduction} (runs/hf/seed*/calibration.json): "
                             "run python reproduce.py DIR --variants hf first")
    table = mean_scores([json.loads(f.read_text())["scores"] for f in files])
    print(f"HF, {len(files)} seeds ({', '.join(f.parent.name for f in files)}): F1 % mean ± std")
    print(f"{'scenario':<26}" + "".join(f"{name[:12]:>14}" for name in table["full"]))
    for scenario, row in table.items():
        print(f"{ROW_NAMES[scenario]:<26}" + "".join(f"{m:8.2f} ±{s or 0:4.1f}" for m, s in row.values()))
    for text, holds in rule_checks(table):
        print(f"{'holds' if holds else 'DOES NOT HOLD'}: {text}")


if __name__ == "__main__":
    data.exit_on_user_error(main)
