"""The ISPRS archives as people have them (tests/layouts.py writes each way): every tile's orthophoto, labels,
eroded labels and NDSM read back pixel-exact, labels never read as images, archives unpacked once and never
half; each refusal one line, exit 2 (docs/data.md, "Layouts")."""

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import data
import evaluate
import probe
import train
from layouts import TILES, colours, encoded, expected_ndsm, write

ROOT = Path(__file__).resolve().parents[1]
VAIHINGEN_ALL = ("image", "label", "eroded", "ndsm")
POTSDAM_ALL = ("image", "label", "eroded", "ndsm")

# name: (dataset, archives' kinds, how they are put under DIR, renamed folders, labels: of every split or per split)
LAYOUTS = {
    "vaihingen folder per archive, Gerke's bmp nDSM": ("vaihingen", VAIHINGEN_ALL, "folders", None, "full"),
    "vaihingen torchgeo, unpacked into DIR": ("vaihingen", VAIHINGEN_ALL, "torchgeo", None, "full"),
    "vaihingen gt/ beside top/": ("vaihingen", VAIHINGEN_ALL, "renamed",
                                  {"image": "top", "label": "gt", "eroded": "gt_eroded", "ndsm": "ndsm"}, "full"),
    # the complete labels in gt/ beside the benchmark archive's top/ and gts_for_participants/
    "vaihingen gt/ beside the archive's folders": ("vaihingen", VAIHINGEN_ALL, "folders", {"label": "gt"}, "full"),
    "vaihingen labels/ and images/": ("vaihingen", VAIHINGEN_ALL, "renamed",
                                      {"image": "images", "label": "labels", "eroded": "eroded", "ndsm": "nDSM"}, "full"),
    "vaihingen labels at the root, no folder": ("vaihingen", VAIHINGEN_ALL, "renamed",
                                                {"image": "top", "label": "", "eroded": "", "ndsm": "ndsm"}, "full"),
    "vaihingen zips as downloaded": ("vaihingen", VAIHINGEN_ALL, "zips", None, "full"),
    # the benchmark archive holds the participants' (full) labels of the training areas: the test area's is eroded
    "vaihingen eroded only, zips": ("vaihingen", ("image", "eroded", "ndsm"), "zips", None, ("full", "full", "eroded")),
    "potsdam folder per archive": ("potsdam", POTSDAM_ALL, "folders", None, "full"),
    "potsdam torchgeo RGBIR": ("potsdam", ("rgbir", "label", "eroded", "ndsm"), "torchgeo", None, "full"),
    "potsdam peers' rgbir/ dsm/ labels/": ("potsdam", ("rgbir", "label", "ndsm"), "renamed",
                                           {"rgbir": "rgbir", "ndsm": "dsm", "label": "labels"}, "full"),
    "potsdam zips as downloaded": ("potsdam", POTSDAM_ALL, "zips", None, "full"),
    "potsdam archive of archives": ("potsdam", POTSDAM_ALL, "nested", None, "full"),
    "potsdam IRRG + 5_Labels_all_noBoundary": ("potsdam", ("image", "eroded", "ndsm"), "folders", None, "eroded"),
}


def check_read_back(root, dataset, written, labels, kinds):
    """Every split's tile: each modality and label pixel-exact against what was written."""
    assert data.detect_dataset(root) == dataset
    for split, name, labels in zip(data.SPLITS, TILES[dataset], [labels] * 3 if isinstance(labels, str) else labels):
        (tile,) = data.load_split(root, split)
        arrays = written[name]
        assert tile.name == name and tile.labels == labels
        np.testing.assert_array_equal(tile.rgir, arrays["image"])
        np.testing.assert_array_equal(tile.ndsm, expected_ndsm(dataset, arrays))
        np.testing.assert_array_equal(tile.label, arrays["label" if labels == "full" else "eroded"])
        if "eroded" in kinds:
            np.testing.assert_array_equal(tile.label_eroded, arrays["eroded"])
        else:
            assert tile.label_eroded is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_back_pixel_exact(tmp_path, layout, capsys):
    dataset, kinds, how, rename, labels = LAYOUTS[layout]
    written = write(tmp_path, dataset, kinds, how, rename=rename)
    check_read_back(tmp_path, dataset, written, labels, kinds)
    printed = capsys.readouterr().out
    assert "warning: no NDSM" not in printed  # the NDSM file, never one estimated from a DSM beside it
    assert ("no full labels" in printed) == ("eroded" in labels)
    if how in ("zips", "nested"):  # unpacked once, beside the archives; a second reading reuses them
        assert "notice: unpacking" in printed
        check_read_back(tmp_path, dataset, written, labels, kinds)
        assert "unpacking" not in capsys.readouterr().out
    else:  # unpacked already (torchgeo keeps the zips beside what it unpacked): not unpacked again
        assert "unpacking" not in printed


def test_the_benchmark_archive_alone_trains_and_says_the_test_split_has_no_labels(tmp_path, capsys):
    """ISPRS_semantic_labeling_Vaihingen.zip holds the participants' labels of the training areas only."""
    written = write(tmp_path, "vaihingen", ("image", "ndsm"), "folders")
    for split, name in zip(("train", "val"), TILES["vaihingen"]):
        (tile,) = data.load_split(tmp_path, split)
        np.testing.assert_array_equal(tile.label, written[name]["label"])
        assert tile.label_eroded is None and tile.labels == "full"
    capsys.readouterr()
    data.summarise_splits(tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["vaihingen train: 1 tiles; labels: 1 full; NDSM: 1 from files",
                         "vaihingen val: 1 tiles; labels: 1 full; NDSM: 1 from files",
                         "vaihingen test: 1 tiles; labels: 1 none; NDSM: 1 from files"]
    assert lines[3].startswith("notice: the test split has no labels: evaluation will need them (")
    assert "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip" in lines[3]
    with pytest.raises(data.DataError, match="no label found .*ground_truth_COMPLETE.zip"):
        data.load_split(tmp_path, "test")


def test_an_interrupted_unpack_is_never_taken_for_a_complete_one(tmp_path, monkeypatch, capsys):
    written = write(tmp_path, "vaihingen", VAIHINGEN_ALL, "zips")
    stale = tmp_path / ".ndsm.999999999.partial"  # left by a process that was killed
    (stale / "ndsm_09cm_matching_area1.bmp").parent.mkdir()
    (stale / "ndsm_09cm_matching_area1.bmp").write_bytes(b"half a file")
    extract = zipfile.ZipFile.extract
    calls = []

    def interrupted(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return extract(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_split(tmp_path, "train")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [path.name for path in tmp_path.glob("*.zip")] + [stale.name])  # nothing half-unpacked left
    monkeypatch.undo()
    check_read_back(tmp_path, "vaihingen", written, "full", VAIHINGEN_ALL)
    assert not stale.exists() and not list(tmp_path.glob(".*.partial"))


def one_line_error(status, stderr, *fragments):
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def probe_refuses(data_dir, capsys, *fragments):
    """`python probe.py DIR` as its __main__ runs it: exit_on_user_error around main."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        data.exit_on_user_error(lambda: probe.main([str(data_dir)]))
    one_line_error(exit_.value.code, capsys.readouterr().err, *fragments)


def test_refusals_are_one_line_exit_2(tmp_path, capsys):
    two_labels = tmp_path / "two_labels"
    two_labels.mkdir()
    written = write(two_labels, "vaihingen", VAIHINGEN_ALL, "renamed",
                    rename={"image": "top", "label": "gt", "eroded": "gt", "ndsm": "ndsm"})
    other = written["area1"]["label"].copy()
    other[:4] = (other[:4] + 1) % 6
    (two_labels / "labels").mkdir()
    (two_labels / "labels/top_mosaic_09cm_area1.tif").write_bytes(encoded("label", {"label": other}))
    probe_refuses(two_labels, capsys, "area1: two different label files",
                  str(two_labels / "gt/top_mosaic_09cm_area1.tif"), str(two_labels / "labels/top_mosaic_09cm_area1.tif"))

    label_as_image = tmp_path / "label_in_top"
    label_as_image.mkdir()
    write(label_as_image, "vaihingen", ("label", "ndsm"), "renamed", rename={"label": "top", "ndsm": "ndsm"})
    probe_refuses(label_as_image, capsys, str(label_as_image / "top/top_mosaic_09cm_area1.tif"),
                  "a label, not an orthophoto")

    broken_zip = tmp_path / "broken_zip"
    broken_zip.mkdir()
    (broken_zip / "ISPRS_semantic_labeling_Vaihingen.zip").write_bytes(b"not a zip at all")
    probe_refuses(broken_zip, capsys, "ISPRS_semantic_labeling_Vaihingen.zip: cannot be read as a zip archive")


def test_rgb_only_potsdam_names_the_tiles_and_the_archives_with_infrared(tmp_path):
    """Through the command line, as users meet it."""
    write(tmp_path, "potsdam", ("rgb", "label", "ndsm"), "zips")
    result = subprocess.run([sys.executable, str(ROOT / "probe.py"), str(tmp_path)], cwd=tmp_path,
                            capture_output=True, text=True)
    one_line_error(result.returncode, result.stderr, "found only as RGB without infrared", "2_10 2_12 2_13",
                   "3_Ortho_IRRG.zip or 4_Ortho_RGBIR.zip")


def test_eroded_only_zips_train_and_evaluate_with_eroded(tmp_path, capsys):
    """The archives as downloaded, without the full labels: training says so and uses the eroded ones;
    evaluate.py asks for --eroded in one line, and scores with it."""
    data_dir, out = tmp_path / "data", tmp_path / "run"
    data_dir.mkdir()
    write(data_dir, "potsdam", ("image", "eroded", "ndsm"), "zips")
    train.main(["--data", str(data_dir), "--out", str(out), "--epochs", "1", "--patch", "32", "--batch-size", "2",
                "--samples-per-epoch", "4", "--width", "4"])
    printed = capsys.readouterr().out
    assert "potsdam train: 1 tiles; labels: 1 eroded; NDSM: 1 from files" in printed
    assert "notice: potsdam train: no full labels for 2_10: their eroded labels are used" in printed
    with pytest.raises(SystemExit) as exit_:
        data.exit_on_user_error(lambda: evaluate.main(["--checkpoint", str(out / "best.pt")]))
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and "add --eroded" in error
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--eroded", "--missing", "none"])
    assert "test split, 1 tiles, eroded labels" in capsys.readouterr().out


def test_complete_labels_are_used_over_the_participants_where_they_differ(tmp_path):
    """gts_for_participants/ (the benchmark's first release) beside the COMPLETE archive and a copy of it
    saved otherwise: the complete label."""
    written = write(tmp_path, "vaihingen", VAIHINGEN_ALL, "folders")
    participants = tmp_path / "ISPRS_semantic_labeling_Vaihingen/gts_for_participants/top_mosaic_09cm_area1.tif"
    other = written["area1"]["label"].copy()
    other[:4] = (other[:4] + 1) % 6
    participants.write_bytes(encoded("label", {"label": other}))
    again = tmp_path / "labels_again/top_mosaic_09cm_area1.tif"  # the same pixels, not compressed: one file
    again.parent.mkdir()
    tifffile.imwrite(again, colours(written["area1"]["label"]), photometric="rgb")
    (tile,) = data.load_split(tmp_path, "train")
    np.testing.assert_array_equal(tile.label, written["area1"]["label"])
