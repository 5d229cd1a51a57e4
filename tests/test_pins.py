"""Behaviours users and results depend on, each pinned against literals or a hand computation, so that a
one-line slip fails here (issue 50: they survived the suite before): which run --resume and the default
--checkpoint take, the reproduction's seeds and scoring overlap, its contrasts and loss figure, the
official splits, the normalisation constants, the warm-up, Table 3's mean over windows, overlapping windows'
mean, the transformer's token slots, the synthetic set's tiles, and flags refused in one line."""

import argparse
import json
import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import data
import evaluate
import report
import reproduce
import runtime
import synth
import train
from dis2 import DIS2, DIS2Config, SCENARIOS, TransformerFusion

TINY = dict(width=4, embed_dim=16, heads=2, depth=1, class_width=2, pos_size=32)
TOY = ["--epochs", "1", "--width", "4", "--patch", "32", "--samples-per-epoch", "4", "--batch-size", "2"]


# ----------------------------------------------------------------- the latest run


def test_resume_and_the_default_checkpoint_take_the_latest_run_not_the_first_by_name(tmp_path, monkeypatch):
    """Three runs whose names sort against their age: --resume takes the newest run's last.pt, evaluate.py and
    predict.py without --checkpoint its best.pt."""
    monkeypatch.chdir(tmp_path)
    now = 1_700_000_000
    for age, name in enumerate(["a-newest", "c-middle", "b-oldest"]):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        for file in ("last.pt", "best.pt"):
            checkpoint = dict(format=runtime.CHECKPOINT_FORMAT, config=dict(num_classes=6), state=dict(epoch=1),
                              train_args=dict(patch=32, seed=age, epochs=2, data="d"))
            torch.save(checkpoint, run / file)
            os.utime(run / file, (now - 1000 * age, now - 1000 * age))
    args, checkpoint = train.prepare(["--resume"])
    assert args.resume == os.path.join("runs", "a-newest", "last.pt") and args.seed == 0
    assert args.out == os.path.join("runs", "a-newest")
    _, _, path, checkpoint, window, overlap = runtime.inference_setup(evaluate.parse_args(["--device", "cpu"]))
    assert path == Path("runs/a-newest/best.pt") and checkpoint["train_args"]["seed"] == 0
    assert (window, overlap) == (32, 8)  # the training patch and a quarter of it


# ----------------------------------------------------------------- the reproduction


def test_reproduction_seeds_start_at_seed_and_score_with_a_quarter_window_overlap(tmp_path, monkeypatch):
    """As the reproduction's lanes were started (--seed 3 --seeds 2): seeds 3 and 4 trained and scored,
    every test tile scored with windows overlapping by a quarter (8 px of 32), as evaluate.py does."""
    root, out = tmp_path / "data", tmp_path / "reproduction"
    synth.synthesize(root, dataset="vaihingen", tiles=4, size=64, seed=1)
    scored = []

    def recording(model, tiles, scenarios, window, overlap, *args, **kwargs):
        scored.append((window, overlap))
        return evaluate.evaluate_tiles(model, tiles, scenarios, window, overlap, *args, **kwargs)

    monkeypatch.setattr(reproduce, "evaluate_tiles", recording)
    reproduce.main([str(out), "--data", str(root), "--variants", "hf", "--seed", "3", "--seeds", "2", *TOY])
    assert sorted(p.name for p in (out / "runs" / "hf").iterdir()) == ["seed3", "seed4"]
    for seed in (3, 4):
        run = out / "runs" / "hf" / f"seed{seed}"
        assert runtime.load_checkpoint(run / "best.pt")["train_args"]["seed"] == seed
    assert set(json.loads((out / "results.json").read_text())["runs"]["hf"]) == {"3", "4"}
    assert "seeds from 3;" in (out / "tables.md").read_text().splitlines()[0]
    assert scored == [(32, 8), (32, 8)]


def hand_mf1(confusion):
    """mF1 over the five scored classes, clutter counted, from a (6, 6) confusion (rows: reference)."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    f1 = 200 * tp / (confusion.sum(0) + confusion.sum(1))
    return f1[:5].mean()


def made_up_run(rng, tiles=3):
    """A test.json of made-up per-tile confusions (every class present) and feature distances."""
    per_tile = {}
    for t in range(tiles):
        confusion = {s: (rng.integers(1, 20, (6, 6)) + np.diag(rng.integers(50, 200, 6))).tolist() for s in SCENARIOS}
        per_tile[f"area{t}"] = dict(confusion=confusion, windows=int(rng.integers(1, 5)), feature_distance={
            **{f"{a}_vs_{b}": float(rng.uniform(1, 2)) for a, b in evaluate.DISTANCE_PAIRS}, "z_full": 3.0})
    return dict(per_tile=per_tile)


def test_the_margins_contrasts_equal_a_hand_computation_from_made_up_scores():
    """tables.md's "What moves the margin": per seed, mF1 over all test tiles of each run; the budget row is
    (DIS2 2x - HF 2x) - (DIS2 - HF), averaged over the seeds."""
    rng = np.random.default_rng(50)
    variants = ("hf", "dis2", "dis2-authors", "hf-2x", "dis2-2x")
    results = {v: {seed: made_up_run(rng) for seed in (0, 1, 2)} for v in variants}

    def mf1(v, seed, scenario):
        return hand_mf1(sum(np.array(tile["confusion"][scenario]) for tile in results[v][seed]["per_tile"].values()))

    margins = report.comparisons(results)["margins"]["counted"]
    for scenario in SCENARIOS:
        m = {v: np.array([mf1(v, seed, scenario) for seed in (0, 1, 2)]) for v in variants}
        by_hand = {
            "DIS2 - HF, the paper's recipe": m["dis2"] - m["hf"],
            "DIS2 - HF, the authors' recipe": m["dis2-authors"] - m["hf"],
            "DIS2 - HF, twice the budget": m["dis2-2x"] - m["hf-2x"],
            "authors' minus paper's recipe (DIS2)": m["dis2-authors"] - m["dis2"],
            "the margin at twice minus at the budget": (m["dis2-2x"] - m["hf-2x"]) - (m["dis2"] - m["hf"]),
        }
        assert set(margins) == set(by_hand)
        for label, values in by_hand.items():
            d = margins[label][scenario]
            assert d.n == 3 and d.mean == pytest.approx(values.mean(), abs=1e-9), (label, scenario)
            assert d.se_seeds == pytest.approx(values.std(ddof=1) / np.sqrt(3), abs=1e-9), (label, scenario)


def test_loss_flattening_is_the_drop_over_the_last_quarter_relative_to_its_start(tmp_path):
    """tables.md's "has the loss flattened?": eight epochs, the last quarter is epochs 7 and 8: from the loss
    after epoch 6 (3 + 0.5) to the last (1 + 0.5), relative to the loss after epoch 6."""
    rows = ["epoch,step,seg_full,seg_miss,lr"] + [f"{e},{10 * e},{9 - e},0.5,0.001" for e in range(1, 9)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    curve = reproduce.training_curve(tmp_path / "metrics.csv")
    assert curve == [(10 * e, 9.5 - e) for e in range(1, 9)]
    final, drop = reproduce.loss_flattening(curve)
    assert final == 1.5 and drop == pytest.approx((3.5 - 1.5) / 3.5)
    assert reproduce.loss_flattening([(1, 8.0), (2, 4.0), (3, 2.0), (4, 1.5)]) == (1.5, pytest.approx(0.25))  # the last epoch


# ----------------------------------------------------------------- the data


OFFICIAL = {  # mmsegmentation's ISPRS splits; validation: the holdout taken out of the training tiles
    "vaihingen": {
        "train": ["area1", "area3", "area7", "area11", "area13", "area17", "area23", "area26", "area28", "area32",
                  "area34", "area37"],
        "val": ["area5", "area15", "area21", "area30"],
        "test": ["area2", "area4", "area6", "area8", "area10", "area12", "area14", "area16", "area20", "area22",
                 "area24", "area27", "area29", "area31", "area33", "area35", "area38"],
    },
    "potsdam": {
        "train": ["2_10", "2_11", "3_10", "3_11", "3_12", "4_11", "4_12", "5_10", "5_11", "5_12", "6_10", "6_11",
                  "6_12", "6_7", "6_9", "7_10", "7_12", "7_7", "7_8", "7_9"],
        "val": ["2_12", "4_10", "6_8", "7_11"],
        "test": ["2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13", "6_14",
                 "6_15", "7_13"],
    },
}


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_the_official_tile_ids_of_every_split(dataset):
    for split in data.SPLITS:
        assert data.split_names(dataset, split) == OFFICIAL[dataset][split], split


def test_normalisation_uses_the_imagenet_constants_and_the_ndsm_shift():
    """Literals, not the module's own constants: ImageNet's mean and std for IR, R, G in that order; the NDSM
    shifted by 0.14 and scaled by 0.19 after /255."""
    r, n = data.normalise(np.array([[[0, 128, 255]]], np.uint8), np.array([[51]], np.uint8))  # one pixel
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    torch.testing.assert_close(r.flatten(), torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert n.item() == pytest.approx((51 / 255 - 0.14) / 0.19, abs=1e-6)


def test_the_tiles_of_a_synthetic_set_differ(dataset):
    tiles = [tile for split in data.SPLITS for tile in data.load_split(dataset, split)]
    assert len(tiles) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = tiles[i], tiles[j]
            shape = tuple(min(x, y) for x, y in zip(a.label.shape, b.label.shape))
            crop = lambda x: x[: shape[0], : shape[1]]
            # Different scenes: most pixels of the label and the NDSM differ, not a shifted copy.
            assert (crop(a.label) != crop(b.label)).mean() > 0.2 and (crop(a.ndsm) != crop(b.ndsm)).mean() > 0.5


# ----------------------------------------------------------------- training


def test_the_first_steps_learning_rates_rise_linearly_from_one_warmup_step(dataset):
    """AdamW's warm-up: 100 steps warm up over 100 // 10 + 1 = 11, the first step at 1/11 of the peak; 10000
    steps over 500. The rate each optimiser step uses, as train.py builds and steps it."""
    net = nn.Linear(2, 2)
    args = argparse.Namespace(optimizer="adamw", lr=None, epochs=10)
    optimizer, scheduler = train.make_optimizer(net, args, steps_per_epoch=10)
    used = []
    for step in range(3):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    cosine = lambda step, total: 0.5 * (1 + np.cos(np.pi * step / total))
    assert used == pytest.approx([1e-3 * (s + 1) / 11 * cosine(s, 100) for s in range(3)], rel=1e-9)
    args.epochs = 1000
    optimizer, scheduler = train.make_optimizer(net, args, steps_per_epoch=10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 / 500, rel=1e-9)


# ----------------------------------------------------------------- evaluation


def test_table3s_distance_is_a_mean_over_windows_whatever_the_batches(dataset):
    """Two tiles of 4 and 2 windows, scored 3 windows a batch (batches of 3, 1 and 2): the distance of Z, and the
    norm of the full scenario's Z, are the mean over the 6 windows of each window's mean over its pixels,
    computed here window by window."""
    torch.manual_seed(0)
    model = DIS2(DIS2Config(**TINY)).eval()
    whole = data.load_split(dataset, "train")[0]
    tiles = [whole, data.Tile("half", whole.rgir[:32], whole.ndsm[:32], whole.label[:32], None)]
    _, distances, per_tile = evaluate.evaluate_tiles(model, tiles, list(SCENARIOS), 32, 0, 3, torch.device("cpu"),
                                                     None, feature_distance=True, progress=False)
    by_window = {pair: [] for pair in (*evaluate.DISTANCE_PAIRS, "z_full")}
    for tile in tiles:
        H, W = tile.label.shape
        for y in range(0, H - 31, 32):
            for x in range(0, W - 31, 32):
                r, n = data.normalise(tile.rgir[None, y : y + 32, x : x + 32], tile.ndsm[None, y : y + 32, x : x + 32])
                with torch.no_grad():
                    out = model(r, n, scenarios=list(SCENARIOS))
                for a, b in evaluate.DISTANCE_PAIRS:
                    by_window[(a, b)].append((out[a].z - out[b].z).norm(dim=1).mean().item())
                by_window["z_full"].append(out["full"].z.norm(dim=1).mean().item())
    assert [per_tile[t.name]["windows"] for t in tiles] == [4, 2]
    for pair, values in by_window.items():
        assert len(values) == 6 and distances[pair] == pytest.approx(np.mean(values), rel=1e-5), pair
        name = evaluate.distance_name(pair)
        assert per_tile["half"]["feature_distance"][name] == pytest.approx(np.mean(values[4:]), rel=1e-5), pair


# ----------------------------------------------------------------- the model


def test_each_slots_tokens_come_back_at_their_own_positions():
    """The transformer with its blocks and norm taken out and a 1x1 identity out: slot a's tokens come back as
    the first half of the channels, slot b's as the second, each at its own pixel of a 2 x 3 grid, and the fusion
    token as it went in."""
    dim = 4
    fusion = TransformerFusion(dim, dim, dim, heads=2, depth=1, mlp_ratio=2, pos_size=32)
    fusion.blocks, fusion.norm = nn.Identity(), nn.Identity()
    fusion.proj_out = nn.Identity()
    for proj in (fusion.proj_a, fusion.proj_b):
        nn.init.dirac_(proj.weight)
        nn.init.zeros_(proj.bias)
    torch.manual_seed(0)
    a, b, prev = torch.randn(2, dim, 2, 3), torch.randn(2, dim, 2, 3), torch.randn(2, dim, 4, 6)
    ab, token = fusion(a, b, prev)
    pos = fusion.positions(2, 3).transpose(1, 2).reshape(2, dim, 2, 3)
    torch.testing.assert_close(ab, torch.cat([a + pos[0], b + pos[1]], dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(token, fusion.fusion_token[0].expand(2, -1), rtol=0, atol=0)


class TwoWindowModel(nn.Module):
    """Logits constant over a window: class probabilities (0.6, 0.4) where the window's infrared is dark on
    average, (0.45, 0.55) where it is bright; the other classes never."""

    config = types.SimpleNamespace(num_classes=6)  # what predict_tile reads of a model

    def forward(self, rgir, ndsm, scenarios):
        dark = rgir[:, 0].mean((1, 2)) < (100 / 255 - 0.485) / 0.229  # (B,)
        probabilities = torch.where(dark[:, None], torch.tensor([0.6, 0.4]), torch.tensor([0.45, 0.55]))
        logits = torch.cat([probabilities.log(), torch.full((len(rgir), 4), -30.0)], 1)[..., None, None]
        return {s: types.SimpleNamespace(logits=logits.expand(-1, -1, *rgir.shape[-2:])) for s in scenarios}


def test_overlapping_windows_average_their_probabilities():
    """Windows at x = 0 and x = 16 of a 48 px wide tile: where they overlap the mean of (0.6, 0.4) and
    (0.45, 0.55) gives class 0; the first window alone class 0, the second alone class 1."""
    rgir = np.zeros((32, 48, 3), np.uint8)
    rgir[:, 16:32], rgir[:, 32:] = 100, 200  # the first window's mean 50, the second's 150
    tile = data.Tile("t", rgir, np.zeros((32, 48), np.uint8), np.zeros((32, 48), np.uint8), None)
    labels = evaluate.predict_tile(TwoWindowModel(), tile, ["full"], 32, 16, 1, torch.device("cpu"), None)["full"]
    expected = np.zeros((32, 48), np.uint8)
    expected[:, 32:] = 1
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("overlap, refused", [(31, False), (32, True), (-1, True)])
def test_an_overlap_of_a_whole_window_is_refused_in_one_line(overlap, refused):
    """Windows overlapping by the whole window would never advance: --overlap must be below --patch."""
    args, checkpoint = argparse.Namespace(patch=None, overlap=overlap), dict(train_args=dict(patch=32))
    if refused:
        with pytest.raises(data.DataError, match=f"--overlap {overlap}: must be at least 0 and smaller than the window"):
            runtime.windows_of(args, checkpoint)
    else:
        assert runtime.windows_of(args, checkpoint) == (32, 31)


@pytest.mark.parametrize("patch, refused", [(48, False), (40, True), (24, True)])
def test_a_patch_that_is_not_a_multiple_of_16_is_refused(patch, refused):
    """The encoders halve a patch four times: 40 is a multiple of 8, not of 16."""
    if refused:
        with pytest.raises(data.DataError, match=f"--patch {patch}: must be a multiple of 16"):
            train.parse_args(["--data", "d", "--patch", str(patch)])
    else:
        assert train.parse_args(["--data", "d", "--patch", str(patch)]).patch == patch


@pytest.mark.parametrize("device, flag, used", [("cuda", None, True), ("cuda", False, False), ("cpu", None, False),
                                                ("cpu", True, True)])
def test_channels_last_follows_the_flag_and_defaults_to_cuda_only(device, flag, used):
    """--channels-last / --no-channels-last as parsed (None: left out) on each device."""
    argv = {None: [], True: ["--channels-last"], False: ["--no-channels-last"]}[flag]
    args = evaluate.parse_args(argv)
    assert args.channels_last is flag and runtime.use_channels_last(torch.device(device), args.channels_last) is used


def test_a_negative_synthetic_seed_is_one_line_not_a_numpy_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        data.exit_on_user_error(lambda: synth.main([str(tmp_path / "out"), "--seed", "-1", "--tiles", "1", "--size", "32"]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and "--seed not negative" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
