"""train.py and evaluate.py end to end on a tiny synthetic dataset, metrics, resume, atomic saves, bad input."""

import csv
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import data
import evaluate
import predict
import runtime
import synth
import train
from stopping import loss_signalling_at

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--patch", "32", "--batch-size", "2", "--samples-per-epoch", "6", "--width", "4", "--seed", "3"]


@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train.main(["--data", str(dataset), "--epochs", "1", "--out", str(out), *TINY_RUN])
    return out


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------- end to end


def test_training_writes_checkpoints_and_metrics(trained_run):
    assert (trained_run / "last.pt").is_file() and (trained_run / "best.pt").is_file()
    checkpoint = runtime.load_checkpoint(trained_run / "last.pt")
    for key in ("model", "optimizer", "scheduler", "scaler", "rng", "state", "config", "train_args", "data", "dataset"):
        assert key in checkpoint, key
    assert checkpoint["state"]["epoch"] == 1 and checkpoint["state"]["global_step"] == 3
    rows = list(csv.DictReader(open(trained_run / "metrics.csv")))
    assert len(rows) == 1
    for column in ("loss", "seg_full", "seg_miss", "orth", "distill_feat", "distill_logit", "uni_rgir", "uni_ndsm", "aux",
                   "val_full_mF1", "val_missing_rgir_mF1", "val_missing_ndsm_mF1", "val_score"):
        assert column in rows[0] and np.isfinite(float(rows[0][column])), column


def test_evaluate_writes_the_json_table_and_colour_maps(trained_run, dataset, tmp_path, capsys):
    report_path, maps = tmp_path / "scores.json", tmp_path / "maps"
    evaluate.main(["--checkpoint", str(trained_run / "best.pt"), "--json", str(report_path),
                   "--save-predictions", str(maps), "--eroded", "--feature-distance"])
    printed = capsys.readouterr().out
    for row in ("Full Modality", "Missing RGIR - Only NDSM", "Missing NDSM - Only RGIR", "mF1", "mIoU", "OA"):
        assert row in printed
    written = sorted(maps.iterdir())
    assert f"wrote {report_path}:" in printed and f"wrote {len(written)} colour maps to {maps}/" in printed
    report = json.loads(report_path.read_text())
    assert report["checkpoint"] == str(trained_run / "best.pt")
    assert report["split"] == "test" and report["eroded"] is True
    assert list(report["scenarios"]) == ["full", "missing_rgir", "missing_ndsm"]
    for result in report["scenarios"].values():
        assert set(result) == {"f1", "mF1", "mIoU", "OA"}
        assert list(result["f1"]) == list(data.CLASSES)
        values = [*result["f1"].values(), result["mF1"], result["mIoU"], result["OA"]]
        assert all(v is None or 0 <= v <= 100 for v in values)
        assert result["OA"] is not None
    pairs = {"full_vs_missing_rgir", "full_vs_missing_ndsm", "missing_rgir_vs_missing_ndsm"}
    assert set(report["feature_distance"]) == pairs | {"z_full", "standardised"}
    assert set(report["feature_distance"]["standardised"]) == pairs
    # Per-tile confusions add up to the scores; per-tile distances, weighted by windows, to the distances.
    tiles = report["per_tile"]
    assert set(tiles) == {tile.name for tile in data.load_split(dataset, "test")}
    for scenario, result in report["scenarios"].items():
        total = sum(np.array(tile["confusion"][scenario]) for tile in tiles.values())
        assert evaluate.scores(total) == result
    for name in pairs | {"z_full"}:
        weighted = sum(t["feature_distance"][name] * t["windows"] for t in tiles.values()) / sum(t["windows"] for t in tiles.values())
        assert weighted == pytest.approx(report["feature_distance"][name])
    # The standardised distance, from the per-tile sums added up.
    sums = {k: sum(np.array(t["z_channels"][k]) for t in tiles.values()) for k in next(iter(tiles.values()))["z_channels"]}
    for name, distance in report["feature_distance"]["standardised"].items():
        assert evaluate.standardised_distance(sums, tuple(name.split("_vs_"))) == pytest.approx(distance)
    test_tiles = data.load_split(dataset, "test")
    for tile in test_tiles:
        for scenario in ("full", "missing_rgir", "missing_ndsm"):
            image = np.asarray(Image.open(maps / f"{tile.name}_{scenario}.png").convert("RGB"))
            assert image.shape == (*tile.label.shape, 3)
            colours = {tuple(c) for c in image.reshape(-1, 3)}
            assert colours <= {tuple(c) for c in data.PALETTE}


def test_evaluate_one_scenario_json_has_only_that_scenario(trained_run, tmp_path):
    report_path = tmp_path / "scores.json"
    evaluate.main(["--checkpoint", str(trained_run / "best.pt"), "--missing", "rgir", "--split", "val",
                   "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert list(report["scenarios"]) == ["missing_rgir"] and report["split"] == "val" and report["eroded"] is False



def test_evaluate_takes_the_dataset_of_a_folder_holding_both_and_says_when_it_is_not_the_checkpoints(
        trained_run, dataset, tmp_path, capsys):
    both = tmp_path / "both"
    shutil.copytree(dataset, both)
    synth.synthesize(both, "potsdam", tiles=3, size=64, seed=1)
    checkpoint = ["--checkpoint", str(trained_run / "best.pt"), "--data", str(both)]
    with pytest.raises(data.DataError, match=r"both Vaihingen and Potsdam.*--dataset"):
        evaluate.main(checkpoint)
    capsys.readouterr()
    evaluate.main([*checkpoint, "--dataset", "vaihingen", "--missing", "none"])
    assert "was trained on" not in capsys.readouterr().out
    evaluate.main([*checkpoint, "--dataset", "potsdam", "--missing", "none"])
    printed = capsys.readouterr().out
    assert f"notice: {trained_run / 'best.pt'} was trained on vaihingen, scored here on potsdam" in printed
    assert "test split, 1 tiles" in printed


def test_eroded_flag_scores_the_eroded_label(trained_run, dataset, tmp_path):
    """A test tile whose eroded label differs from its full label (a black band and a patch of
    another class); each score is the overall accuracy of the same prediction against the label
    asked for, counted by hand."""
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    tile = data.load_split(root, "test")[0]
    eroded = tile.label.copy()
    eroded[:, :20] = data.IGNORE_INDEX
    eroded[40:60, 30:50] = (tile.label[40:60, 30:50] + 1) % 5
    [eroded_path] = root.rglob(f"*{tile.name}_noBoundary.tif")
    tifffile.imwrite(eroded_path, data.labels_to_rgb(eroded), photometric="rgb")
    model = runtime.model_from_checkpoint(runtime.load_checkpoint(trained_run / "best.pt"), torch.device("cpu"))
    prediction = evaluate.predict_tile(model, tile, ["full"], 32, 8, 4, torch.device("cpu"), None)["full"]
    oa = {}
    for flags, label in (([], tile.label), (["--eroded"], eroded)):
        report_path = tmp_path / f"scores{len(flags)}.json"
        evaluate.main(["--checkpoint", str(trained_run / "best.pt"), "--data", str(root), "--missing", "none",
                       "--json", str(report_path), *flags])
        scored = label != data.IGNORE_INDEX
        hand_oa = 100 * sum(int(p == r) for p, r in zip(prediction[scored], label[scored])) / scored.sum()
        oa[bool(flags)] = json.loads(report_path.read_text())["scenarios"]["full"]["OA"]
        assert oa[bool(flags)] == pytest.approx(hand_oa)
    assert oa[True] != oa[False]

# -------------------------------------------------------------------- metrics


def test_scores_match_a_hand_computed_confusion_matrix():
    label = np.array([[0, 0, 1, 1], [2, 2, 3, 4], [5, 255, 0, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 3, 3, 4], [5, 0, 0, 0]], np.uint8)
    confusion = evaluate.confusion_matrix(pred, label)
    expected = np.zeros((6, 6), np.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (2, 3), (3, 3), (4, 4), (5, 5), (0, 0), (1, 0)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion, expected)
    s = evaluate.scores(confusion)
    # class 0: tp 2, fp 1 (a 1 predicted as 0), fn 1 -> F1 = 4/6; IoU = 2/4
    # class 1: tp 2, fp 1, fn 1 -> F1 = 4/6, IoU 2/4; class 2: tp 1, fn 1 -> F1 2/3, IoU 1/2
    # class 3: tp 1, fp 1 -> F1 2/3, IoU 1/2; class 4: F1 1, IoU 1; class 5 (clutter): F1 1
    f1 = [4 / 6, 4 / 6, 2 / 3, 2 / 3, 1.0, 1.0]
    iou = [0.5, 0.5, 0.5, 0.5, 1.0]
    assert [s["f1"][c] for c in data.CLASSES] == pytest.approx([100 * x for x in f1])
    assert s["mF1"] == pytest.approx(100 * np.mean(f1[:5]))
    assert s["mIoU"] == pytest.approx(100 * np.mean(iou))
    assert s["OA"] == pytest.approx(100 * 8 / 11)


def test_a_perfect_prediction_scores_100():
    label = np.random.default_rng(0).integers(0, 6, size=(20, 30)).astype(np.uint8)
    s = evaluate.scores(evaluate.confusion_matrix(label, label))
    assert s["mF1"] == s["mIoU"] == s["OA"] == 100.0
    assert all(v == 100.0 for v in s["f1"].values())


def test_sliding_window_prediction_covers_the_tile(trained_run, dataset):
    checkpoint = runtime.load_checkpoint(trained_run / "best.pt")
    model = runtime.model_from_checkpoint(checkpoint, torch.device("cpu"))
    tile = data.load_split(dataset, "test")[0]
    predictions = evaluate.predict_tile(model, tile, ["full"], 32, 8, 3, torch.device("cpu"), None)
    assert predictions["full"].shape == tile.label.shape
    # One window holding the whole (padded) tile gives the same map as its forward pass.
    window = -(-max(tile.label.shape) // 16) * 16
    whole = evaluate.predict_tile(model, tile, ["full"], window, 0, 1, torch.device("cpu"), None)["full"]
    rgir, ndsm = data.normalise(data.pad_to_window(tile.rgir, window)[None], data.pad_to_window(tile.ndsm, window)[None])
    with torch.inference_mode():
        direct = model(rgir, ndsm).logits.argmax(1)[0, : tile.label.shape[0], : tile.label.shape[1]].numpy()
    np.testing.assert_array_equal(whole, direct)


def test_evaluation_uses_running_statistics_and_changes_no_state(trained_run, dataset):
    checkpoint = runtime.load_checkpoint(trained_run / "best.pt")
    model = runtime.model_from_checkpoint(checkpoint, torch.device("cpu")).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate.evaluate_tiles(model, data.load_split(dataset, "val"), ["full"], 32, 8, 2, torch.device("cpu"), None,
                            progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------- resume, saving


def final_weights(out):
    return runtime.load_checkpoint(out / "last.pt")["model"]


def stop_at_loss_call(monkeypatch, n):
    """SIGTERM during the n-th computation of the loss (3 steps per epoch): the step finishes, then the run saves and stops."""
    loss_then_sigterm, real_loss = loss_signalling_at(n)
    monkeypatch.setattr(train, "dis2_loss", loss_then_sigterm)
    return real_loss


def test_interrupted_and_resumed_training_equals_uninterrupted(dataset, tmp_path, monkeypatch):
    run = ["--data", str(dataset), "--epochs", "2", *TINY_RUN]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main([*run, "--out", str(straight)])

    real_loss = stop_at_loss_call(monkeypatch, 2)  # mid-epoch 1
    train.main([*run, "--out", str(interrupted)])
    state = runtime.load_checkpoint(interrupted / "last.pt")["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (0, 2)
    assert not (interrupted / "metrics.csv").exists()
    monkeypatch.setattr(train, "dis2_loss", real_loss)
    train.main(["--resume", str(interrupted)])
    # The wall time of the run adds up over its parts.
    assert 0 < state["train_seconds"] < runtime.load_checkpoint(interrupted / "last.pt")["state"]["train_seconds"]

    a, b = final_weights(straight), final_weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (straight / "metrics.csv").read_text() == (interrupted / "metrics.csv").read_text()


def test_a_resumed_runs_metrics_are_its_checkpoints(dataset, tmp_path, monkeypatch):
    """Stopped in epoch 2, whatever metrics.csv holds then (a row written after the last checkpoint,
    another run's file), the resumed run's metrics.csv is the uninterrupted run's; also from a
    checkpoint that keeps no rows (written before they rode in it), whose metrics.csv has a row too many."""
    run = ["--data", str(dataset), "--epochs", "2", *TINY_RUN]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main([*run, "--out", str(straight)])
    real_loss = stop_at_loss_call(monkeypatch, 5)  # epoch 2, step 2
    train.main([*run, "--out", str(interrupted)])
    monkeypatch.setattr(train, "dis2_loss", real_loss)
    assert runtime.load_checkpoint(interrupted / "last.pt")["state"]["epoch"] == 1
    rows = list(csv.DictReader(open(straight / "metrics.csv")))
    header = ",".join(rows[0])
    other_run = header + "\n" + "\n".join(",".join("7" for _ in rows[0]) for _ in range(3)) + "\n"
    one_too_many = (interrupted / "metrics.csv").read_text() + ",".join("9" for _ in rows[0]) + "\n"

    new_format = tmp_path / "new-format"
    shutil.copytree(interrupted, new_format)
    (new_format / "metrics.csv").write_text(other_run)
    train.main(["--resume", str(new_format)])
    assert (new_format / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()

    old_format = tmp_path / "old-format"
    shutil.copytree(interrupted, old_format)
    checkpoint = runtime.load_checkpoint(old_format / "last.pt")
    del checkpoint["state"]["metrics"]
    torch.save(checkpoint, old_format / "last.pt")
    (old_format / "metrics.csv").write_text(one_too_many)
    train.main(["--resume", str(old_format)])
    assert (old_format / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()


def cosine_rate(step, total, peak=1e-3):
    """The AdamW schedule by hand: warm-up over min(500, total // 10 + 1) steps, cosine to 0 at `total`."""
    warmup = min(500, total // 10 + 1)
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


def test_learning_rate_after_n_steps_is_the_schedules_value(dataset, tmp_path):
    """3 steps per epoch, 2 epochs: the rate logged after epoch e is the schedule's at step 3e."""
    train.main(["--data", str(dataset), "--epochs", "2", "--out", str(tmp_path / "run"), *TINY_RUN])
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [float(row["lr"]) for row in rows] == pytest.approx([cosine_rate(3, 6), cosine_rate(6, 6)], abs=1e-12)
    assert float(rows[0]["lr"]) == pytest.approx(5e-4)


def test_a_longer_resumed_run_goes_on_from_its_learning_rate(dataset, tmp_path, monkeypatch):
    """Stopped after step 2 of 6 (rate r), resumed with 3 epochs instead of 2: from step 2 the rate
    decays by a cosine from r to 0 at step 9, with no jump."""
    out = tmp_path / "run"
    real_loss = stop_at_loss_call(monkeypatch, 2)
    train.main(["--data", str(dataset), "--epochs", "2", "--out", str(out), *TINY_RUN])
    monkeypatch.setattr(train, "dis2_loss", real_loss)
    rate = cosine_rate(2, 6)
    assert runtime.load_checkpoint(out / "last.pt")["scheduler"]["_last_lr"][0] == pytest.approx(rate)
    train.main(["--resume", str(out), "--epochs", "3"])
    replanned = lambda step: rate * 0.5 * (1 + math.cos(math.pi * (step - 2) / (9 - 2)))
    logged = [float(row["lr"]) for row in csv.DictReader(open(out / "metrics.csv"))]
    assert logged == pytest.approx([replanned(3), replanned(6), replanned(9)], abs=1e-12)
    assert logged[0] > cosine_rate(3, 6)  # slower than the old plan, and no jump up to the new full cosine's
    assert logged[0] < rate


def test_finished_adamw_run_asked_to_go_on_says_to_start_a_new_run(trained_run):
    with pytest.raises(data.DataError, match="learning-rate schedule .the rate is 0."):
        train.main(["--resume", str(trained_run), "--epochs", "2"])


def test_a_skipped_fp16_step_does_not_advance_the_schedule(monkeypatch, recwarn):
    """GradScaler skips the optimiser step when scaled gradients overflow; the schedule waits too."""
    model = torch.nn.Conv2d(3, 6, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # any gradient above 2 overflows
    outputs = lambda rgir, ndsm, scenarios: {s: types.SimpleNamespace(logits=model(rgir)) for s in scenarios}
    monkeypatch.setattr(train, "dis2_loss", lambda full, *rest: ((full.logits * 1e3).sum(), {"seg": torch.tensor(1.0)}))
    before = [p.detach().clone() for p in model.parameters()]
    train.train_step(outputs, optimizer, scheduler, scaler, torch.ones(1, 3, 4, 4), None, None, "ndsm", None, None)
    assert scaler.get_scale() < 2.0**127  # the scaler saw the overflow and skipped the step
    assert scheduler.last_epoch == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_the_missing_modality_is_rgir_at_rate_p():
    """Drawn per step from the seed and the step, as train_epoch draws it."""
    for p in (0.0, 0.25, 0.6, 1.0):
        drawn = [train.missing_modality(7, step, p) for step in range(4000)]
        share = drawn.count("rgir") / len(drawn)
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / len(drawn)), (p, share)
    assert set(train.missing_modality(3, step, 1.0) for step in range(500)) == {"rgir"}
    assert set(train.missing_modality(3, step, 0.0) for step in range(500)) == {"ndsm"}


def test_resume_of_a_finished_run_says_how_to_go_on(trained_run):
    with pytest.raises(data.DataError, match="already finished 1 epochs; its learning rate has decayed to 0"):
        train.main(["--resume", str(trained_run)])


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    runtime.save_checkpoint({"format": runtime.CHECKPOINT_FORMAT, "value": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        runtime.save_checkpoint({"format": runtime.CHECKPOINT_FORMAT, "value": 2}, path)
    assert runtime.load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_non_finite_loss_stops_with_the_step_and_term(dataset, tmp_path, monkeypatch, capsys):
    real_loss = train.dis2_loss
    calls = {"n": 0}

    def nan_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        total, terms = real_loss(*args, **kwargs)
        if calls["n"] == 5:
            terms["distill_logit"] = torch.tensor(float("nan"))
            total = total + terms["distill_logit"]
        return total, terms

    monkeypatch.setattr(train, "dis2_loss", nan_in_epoch_two)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train.main(["--data", str(dataset), "--epochs", "2", "--out", str(out), *TINY_RUN])
    assert stopped.value.code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "epoch 2, step 4" in message and "distill_logit" in message and str(out / "last.pt") in message
    assert runtime.load_checkpoint(out / "last.pt")["state"]["epoch"] == 1


# ----------------------------------------------------------------- bad input


def test_unknown_flag_value(trained_run):
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(trained_run / "best.pt"), "--missing", "foo"),
                          "--missing", "foo")


def test_checkpoint_that_does_not_exist(tmp_path):
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(tmp_path / "nope.pt")), "nope.pt", "not found")


def test_file_that_is_not_a_dis2_checkpoint(tmp_path):
    junk, other = tmp_path / "junk.pt", tmp_path / "other.pt"
    junk.write_bytes(b"not a checkpoint at all")
    torch.save({"model": {}}, other)
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(junk)), "junk.pt", "not a readable checkpoint")
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(other)), "other.pt", "not a DIS2 checkpoint")


def test_checkpoint_of_an_earlier_format_says_to_retrain(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"format": "dis2-checkpoint-1", "model": {}}, old)
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(old)), "old.pt", "dis2-checkpoint-1", "train again")


def test_checkpoint_whose_classes_do_not_match_the_data(trained_run, tmp_path):
    checkpoint = runtime.load_checkpoint(trained_run / "best.pt")
    checkpoint["config"]["num_classes"] = 5
    path = tmp_path / "five.pt"
    torch.save(checkpoint, path)
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(path)), "5 classes")


def test_resume_without_a_checkpoint(tmp_path):
    assert_one_line_error(run_script(str(ROOT / "train.py"), "--resume", cwd=tmp_path), "no runs/*/last.pt")
    assert_one_line_error(run_script(str(ROOT / "train.py"), "--resume", str(tmp_path / "gone")), "not found")


def test_output_directory_that_is_not_writable(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_script("train.py", "--data", str(dataset), "--out", str(blocker / "run"), *TINY_RUN)
    assert_one_line_error(result, "--out", "cannot write")


def test_existing_run_is_not_overwritten(dataset, trained_run):
    assert_one_line_error(run_script("train.py", "--data", str(dataset), "--out", str(trained_run), *TINY_RUN),
                          "already holds a run", "--resume")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(trained_run):
    assert_one_line_error(run_script("evaluate.py", "--checkpoint", str(trained_run / "best.pt"), "--device", "cuda"),
                          "--device cuda")


# ------------------------------------------------- the authors' recipe, ShaSpec


def test_authors_recipe_switches_distillation_on_after_six_percent_of_the_steps():
    paper, authors = types.SimpleNamespace(recipe="paper"), types.SimpleNamespace(recipe="authors")
    assert [train.distill_weight(paper, step, 2000) for step in (0, 119, 120, 1999)] == [1.0] * 4
    assert [train.distill_weight(authors, step, 2000) for step in (0, 119, 120, 1999)] == [0.0, 0.0, 5.0, 5.0]


def test_training_passes_the_recipe_and_its_weight_to_the_loss(dataset, tmp_path, monkeypatch):
    """In train mode, on the batches train.py builds: the authors' recipe reaches dis2_loss with
    weight 0 for the first 6% of the steps and 5 after (3 steps per epoch, 6 epochs: 6% of 18 steps
    is 1.08, so steps 0 and 1 train without distillation)."""
    seen, real_loss = [], train.dis2_loss

    def recording(*args, **kwargs):
        seen.append((kwargs["recipe"], kwargs["distill_weight"]))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train, "dis2_loss", recording)
    train.main(["--data", str(dataset), "--epochs", "6", "--out", str(tmp_path / "run"), "--recipe", "authors", *TINY_RUN])
    assert seen == [("authors", 0.0)] * 2 + [("authors", 5.0)] * 16
    assert runtime.load_checkpoint(tmp_path / "run" / "last.pt")["train_args"]["recipe"] == "authors"


def test_shaspec_trains_evaluates_and_predicts_through_the_same_commands(dataset, tmp_path):
    out = tmp_path / "shaspec"
    train.main(["--data", str(dataset), "--epochs", "1", "--out", str(out), "--ablation", "shaspec", *TINY_RUN])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {"seg_full", "seg_miss", "align", "domain"} <= set(rows[0]) and "orth" not in rows[0]
    checkpoint = runtime.load_checkpoint(out / "best.pt")
    assert checkpoint["architecture"] == "ShaSpec"
    assert type(runtime.model_from_checkpoint(checkpoint, torch.device("cpu"))).__name__ == "ShaSpec"
    report_path = tmp_path / "scores.json"
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--json", str(report_path), "--feature-distance"])
    assert list(json.loads(report_path.read_text())["scenarios"]) == ["full", "missing_rgir", "missing_ndsm"]
    tile = data.load_split(dataset, "test")[0]
    tifffile.imwrite(tmp_path / "area.tif", tile.rgir, photometric="rgb")
    predict.main(["--out", str(tmp_path / "maps"), "--rgir", str(tmp_path / "area.tif"), "--checkpoint", str(out / "best.pt")])
    assert tifffile.imread(tmp_path / "maps" / "area_labels.tif").shape == tile.label.shape


@pytest.mark.parametrize("command, flag", [("train.py", "--resume"), ("evaluate.py", "--checkpoint")])
def test_a_missing_checkpoint_names_the_commands_own_flag(tmp_path, command, flag):
    """train.py takes a checkpoint with --resume, evaluate.py with --checkpoint: the one-line error
    names the flag of the command that was run."""
    result = subprocess.run([sys.executable, command, flag, str(tmp_path / "nowhere.pt")], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"pass {flag} PATH" in result.stderr
