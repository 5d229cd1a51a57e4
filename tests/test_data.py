"""Tests of data.py: the ISPRS layout, its failure modes, patches, windows, and synthetic files read back
through the reader (the generator itself: test_synthetic.py)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import data
import isprs
import synth

ROOT = Path(__file__).resolve().parents[1]
VAIHINGEN_LAYOUT = {  # where the generator must put each file, as in the ISPRS archives
    "image": "ISPRS_semantic_labeling_Vaihingen/top/top_mosaic_09cm_{}.tif",
    "ndsm": "ISPRS_semantic_labeling_Vaihingen/ndsm/dsm_09cm_matching_{}_normalized.jpg",
    "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE/top_mosaic_09cm_{}.tif",
    "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/top_mosaic_09cm_{}_noBoundary.tif",
}
POTSDAM_LAYOUT = {
    "image": "3_Ortho_IRRG/top_potsdam_{}_IRRG.tif",
    "ndsm": "1_DSM_normalisation/dsm_potsdam_{:02d}_{:02d}_normalized_lastools.jpg",
    "label": "5_Labels_all/top_potsdam_{}_label.tif",
    "eroded": "5_Labels_all_noBoundary/top_potsdam_{}_label_noBoundary.tif",
}


def layout_path(root, dataset, kind, name):
    if dataset == "vaihingen":
        return Path(root) / VAIHINGEN_LAYOUT[kind].format(name)
    numbers = [int(part) for part in name.split("_")]
    return Path(root) / POTSDAM_LAYOUT[kind].format(*(numbers if kind == "ndsm" else [name]))


def decode_palette(rgb):
    """Independent of data.py: class id per palette colour, black -> 255, anything else -> 254."""
    ids = np.full(rgb.shape[:2], 254, np.uint8)
    ids[(rgb == 0).all(-1)] = 255
    for class_id, colour in enumerate(data.PALETTE):
        ids[(rgb == colour).all(-1)] = class_id
    return ids


def read_jpeg(path):
    with Image.open(path) as image:
        return np.array(image)


def write_tiff(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **options)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three small Vaihingen tiles: area1 (train), area5 (val), area2 (test)."""
    root = tmp_path_factory.mktemp("pristine")
    synth.synthesize(root, "vaihingen", tiles=3, size=64, seed=2)
    return root


@pytest.fixture
def vaihingen(pristine, tmp_path):
    """A copy of `pristine` that a test may break."""
    root = tmp_path / "data"
    shutil.copytree(pristine, root)
    return root


# ---------------------------------------------------------------------------------------------
# Synthetic scenes read back through the real-data reader
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_synthetic_files_read_back_as_written(tmp_path, dataset):
    synth.synthesize(tmp_path, dataset, tiles=3, size=72, seed=1)
    assert data.detect_dataset(tmp_path) == dataset
    shapes = set()
    for split in data.SPLITS:
        tiles = data.load_split(tmp_path, split)
        assert len(tiles) == 1 and tiles[0].name == data.split_names(dataset, split)[0]
        tile = tiles[0]
        path = {kind: layout_path(tmp_path, dataset, kind, tile.name) for kind in VAIHINGEN_LAYOUT}
        np.testing.assert_array_equal(tile.rgir, tifffile.imread(path["image"]))
        np.testing.assert_array_equal(tile.ndsm, read_jpeg(path["ndsm"]))
        np.testing.assert_array_equal(tile.label, decode_palette(tifffile.imread(path["label"])))
        np.testing.assert_array_equal(tile.label_eroded, decode_palette(tifffile.imread(path["eroded"])))
        assert tile.rgir.dtype == tile.ndsm.dtype == tile.label.dtype == np.uint8
        assert tile.rgir.shape == tile.label.shape + (3,) and tile.ndsm.shape == tile.label.shape
        assert set(np.unique(tile.label)) <= set(range(6))
        shapes.add(tile.label.shape)
    assert len(shapes) == (3 if dataset == "vaihingen" else 1)  # Vaihingen tiles vary in size, Potsdam's do not


def test_eroded_labels_blacken_exactly_a_band_around_class_borders(pristine):
    tile = data.load_split(pristine, "val")[0]
    label, eroded = tile.label.astype(int), tile.label_eroded
    ignored = eroded == data.IGNORE_INDEX
    assert 0.02 < ignored.mean() < 0.6
    np.testing.assert_array_equal(eroded[~ignored], label[~ignored])
    padded = np.pad(label, 3, mode="edge")
    for y, x in zip(*np.nonzero(ignored)):  # within 3 px of another class
        assert (padded[y : y + 7, x : x + 7] != label[y, x]).any()
    for y, x in zip(*np.nonzero(~ignored)):  # nothing of another class within 2 px
        assert (padded[y + 1 : y + 6, x + 1 : x + 6] == label[y, x]).all()


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


def test_palette_converts_both_ways():
    colours = np.concatenate([data.PALETTE, [[0, 0, 0]]]).astype(np.uint8)[None]  # (1, 7, 3)
    assert data.rgb_to_labels(colours).tolist() == [[0, 1, 2, 3, 4, 5, data.IGNORE_INDEX]]
    ids = np.random.default_rng(0).choice([0, 1, 2, 3, 4, 5, data.IGNORE_INDEX], size=(50, 70)).astype(np.uint8)
    rgb = data.labels_to_rgb(ids)
    assert rgb.shape == (50, 70, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(decode_palette(rgb), ids)
    np.testing.assert_array_equal(data.rgb_to_labels(rgb), ids)


def test_off_palette_colours_are_named_with_their_pixel_count():
    rgb = data.labels_to_rgb(np.zeros((20, 20), np.uint8))
    rgb[:5, 0] = (255, 0, 255)  # magenta: channels 0/255 but not a class colour
    rgb[7, :2] = (250, 250, 250)  # almost white, e.g. from a lossy re-save
    with pytest.raises(data.DataError) as error:
        data.rgb_to_labels(rgb, "some/label.tif")
    message = str(error.value)
    assert "some/label.tif" in message and "7 pixels" in message and "(255, 0, 255) (5 pixels)" in message


def test_a_6000_px_label_round_trips():
    """The size of a Potsdam tile (its speed is not a test's to judge: shared machines are noisy)."""
    ids = np.random.default_rng(0).integers(0, 6, (6000, 6000), dtype=np.uint8)
    assert (data.rgb_to_labels(data.labels_to_rgb(ids)) == ids).all()


# ---------------------------------------------------------------------------------------------
# Finding files in the real layouts
# ---------------------------------------------------------------------------------------------


def test_vaihingen_files_are_found_by_name_and_folder(tmp_path):
    """area1 and area11 side by side; labels told from images by their ground-truth folder; NDSMs
    found by an "ndsm" folder or a "normalized" name, as uint8 jpg/png or as float metres."""
    rng = np.random.default_rng(0)
    expected = {}
    for area in ("area1", "area11"):
        rgir = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        label = rng.integers(0, 6, (30, 40), dtype=np.uint8)
        write_tiff(tmp_path / f"ISPRS_semantic_labeling_Vaihingen/top/top_mosaic_09cm_{area}.tif", rgir)
        write_tiff(tmp_path / f"ISPRS_semantic_labeling_Vaihingen/gts_for_participants/top_mosaic_09cm_{area}.tif",
                   data.labels_to_rgb(label))
        expected[area] = rgir, label
    ndsm1 = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    (tmp_path / "heights").mkdir()
    Image.fromarray(ndsm1).save(tmp_path / "heights/dsm_09cm_matching_area1_normalized.png")
    metres11 = rng.uniform(0, 20, (30, 40)).astype(np.float32)
    write_tiff(tmp_path / "NDSM/area11.tif", metres11)
    write_tiff(tmp_path / "ISPRS_semantic_labeling_Vaihingen/dsm/dsm_09cm_matching_area1.tif", ndsm1 + 300.0)

    assert data.detect_dataset(tmp_path) == "vaihingen"
    tiles = data.load_split(tmp_path, "train")
    assert [tile.name for tile in tiles] == ["area1", "area11"]
    for tile in tiles:
        np.testing.assert_array_equal(tile.rgir, expected[tile.name][0])
        np.testing.assert_array_equal(tile.label, expected[tile.name][1])
        assert tile.label_eroded is None
    np.testing.assert_array_equal(tiles[0].ndsm, ndsm1)  # the png, not the DSM, and not area11's file
    np.testing.assert_array_equal(tiles[1].ndsm, np.rint(metres11 * data.NDSM_LEVELS_PER_METRE).astype(np.uint8))


@pytest.mark.parametrize("planar", [False, True])
def test_potsdam_rgbir_is_read_as_ir_r_g(tmp_path, planar):
    synth.synthesize(tmp_path, "potsdam", tiles=1, size=48)
    irrg_path = layout_path(tmp_path, "potsdam", "image", "2_10")
    irrg = tifffile.imread(irrg_path)
    irrg_path.unlink()
    rgbir = np.stack([irrg[..., 1], irrg[..., 2], np.full(irrg.shape[:2], 7, np.uint8), irrg[..., 0]], -1)
    rgbir_path = tmp_path / "4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif"
    if planar:
        write_tiff(rgbir_path, np.moveaxis(rgbir, -1, 0), planarconfig="separate", photometric="minisblack")
    else:
        write_tiff(rgbir_path, rgbir, photometric="rgb", extrasamples=["unspecified"])
    (tile,) = data.load_split(tmp_path, "train")
    np.testing.assert_array_equal(tile.rgir, irrg)


def test_a_directory_with_both_datasets_needs_the_dataset_named(vaihingen):
    synth.synthesize(vaihingen, "potsdam", tiles=1, size=32)
    with pytest.raises(data.DataError, match="both Vaihingen and Potsdam"):
        data.detect_dataset(vaihingen)
    assert data.load_split(vaihingen, "train", dataset="potsdam")[0].name == "2_10"
    assert data.load_split(vaihingen, "train", dataset="vaihingen")[0].name == "area1"


def test_linked_folders_are_followed_and_a_folder_met_twice_is_listed_once(pristine, tmp_path):
    """A DIR of symlinks to the unpacked archives, a common arrangement of the ISPRS data; with a
    link back up the tree, which must not loop, and a second link to an archive already linked."""
    archives, linked = tmp_path / "archives", tmp_path / "linked"
    shutil.copytree(pristine, archives)
    linked.mkdir()
    for archive in archives.iterdir():
        (linked / archive.name).symlink_to(archive, target_is_directory=True)
    (linked / "zz_same_archive_again").symlink_to(archive, target_is_directory=True)
    (archives / archive.name / "up").symlink_to(linked, target_is_directory=True)

    assert data.detect_dataset(linked) == "vaihingen"
    assert len(isprs.listing(linked)[1]) == len(isprs.listing(pristine)[1])
    for split in ("train", "val", "test"):
        for tile, expected in zip(data.load_split(linked, split), data.load_split(pristine, split), strict=True):
            assert tile.name == expected.name
            np.testing.assert_array_equal(tile.rgir, expected.rgir)
            np.testing.assert_array_equal(tile.label, expected.label)


def test_missing_tiles_are_skipped_with_one_notice(vaihingen, capsys):
    tiles = data.load_split(vaihingen, "val")
    notice = capsys.readouterr().out.strip()
    assert [tile.name for tile in tiles] == ["area5"]
    assert notice == "notice: vaihingen val: 3 of 4 tiles not found, skipped: area15 area21 area30"


def test_dsm_fallback_estimates_the_ground_and_warns(tmp_path, capsys):
    """A sloping 300 x 400 px terrain with two 12 m buildings, given only as a DSM."""
    height, width = 300, 400
    ys, xs = np.mgrid[:height, :width]
    objects = np.zeros((height, width), np.float32)
    objects[40:110, 50:140] = 12
    objects[180:260, 250:330] = 12
    dsm = 250 + 0.004 * xs + 0.002 * ys + objects  # 2 m of slope across the tile
    label = np.where(objects > 0, 1, 0).astype(np.uint8)
    write_tiff(tmp_path / "top/top_mosaic_09cm_area3.tif", np.zeros((height, width, 3), np.uint8))
    write_tiff(tmp_path / "gts_for_participants/top_mosaic_09cm_area3.tif", data.labels_to_rgb(label))
    write_tiff(tmp_path / "dsm/dsm_09cm_matching_area3.tif", dsm.astype(np.float32))
    (tile,) = data.load_split(tmp_path, "train")
    assert "warning: no NDSM for area3" in capsys.readouterr().out
    error = np.abs(tile.ndsm / data.NDSM_LEVELS_PER_METRE - objects)
    assert np.percentile(error, 90) < 0.4 and error.max() < 1  # metres


# ---------------------------------------------------------------------------------------------
# Bad input: one DataError each, one line naming the file
# ---------------------------------------------------------------------------------------------


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scribble(path):
    path.write_bytes(b"not an image at all " * 40)


def four_bands(path):
    tifffile.imwrite(path, np.zeros((64, 64, 4), np.uint8), extrasamples=["unspecified"])  # a 4th band, not alpha


def float_bands(path):
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.float32), photometric="rgb")


def smaller(path):
    Image.fromarray(read_jpeg(path)[:60]).save(path)


def without_any_label(path):
    """The label and the eroded label gone: an eroded label alone stands in for the label."""
    path.unlink()
    layout_path(path.parents[1], "vaihingen", "eroded", "area1").unlink()


def off_palette(path):
    rgb = tifffile.imread(path)
    rgb[10:13, 10:14] = (12, 200, 7)
    tifffile.imwrite(path, rgb)


@pytest.mark.parametrize(
    "kind, damage, expected",
    [
        ("image", truncate, "truncated or corrupt"),
        ("image", scribble, "truncated or corrupt"),
        ("image", four_bands, "expected a 3-band image (IR, R, G), found 4 bands"),
        ("image", float_bands, "float32 bands; orthophotos are read as integers"),
        ("ndsm", truncate, "truncated or corrupt"),
        ("ndsm", smaller, "size 60 x 64 differs from"),
        ("label", scribble, "truncated or corrupt"),
        ("label", off_palette, "12 pixels have colours outside the ISPRS palette, most often RGB (12, 200, 7)"),
        ("eroded", truncate, "truncated or corrupt"),
        ("label", without_any_label, "no label found (expected top_mosaic_09cm_area1.tif"),
        ("ndsm", Path.unlink, "no NDSM found"),
    ],
)
def test_broken_files_raise_one_line_naming_the_file(vaihingen, kind, damage, expected):
    path = layout_path(vaihingen, "vaihingen", kind, "area1")
    damage(path)
    with pytest.raises(data.DataError) as error:
        data.load_split(vaihingen, "train")
    message = str(error.value)
    named = layout_path(vaihingen, "vaihingen", "image", "area1") if damage in (Path.unlink, without_any_label) else path
    assert expected in message and str(named) in message and "\n" not in message


def test_unusable_directories_and_names_raise(tmp_path, vaihingen):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("hello")
    (tmp_path / "other/top_mosaic_area1.tif").write_bytes(b"")
    layout_path(vaihingen, "vaihingen", "image", "area1").unlink()
    cases = [
        (lambda: data.load_split(tmp_path / "absent", "train"), "data directory not found"),
        (lambda: data.detect_dataset(tmp_path / "empty"),
         "no ISPRS Vaihingen or Potsdam images found .*; for synthetic data run: python synth.py .*empty"),
        (lambda: data.load_split(tmp_path / "other", "train"), "no ISPRS Vaihingen or Potsdam images found"),
        (lambda: data.load_split(vaihingen, "train", dataset="paris"), "unknown dataset 'paris'"),
        (lambda: data.split_names("vaihingen", "dev"), "unknown split 'dev'"),
        (lambda: synth.synthesize(tmp_path / "out", "paris"), "unknown dataset 'paris'"),
        (lambda: data.load_split(vaihingen, "train"), "none of the 12 vaihingen train tiles found"),
    ]
    for call, expected in cases:
        with pytest.raises(data.DataError, match=expected):
            call()


def test_a_patch_larger_than_every_tile_raises(pristine):
    tiles = data.load_split(pristine, "train") + data.load_split(pristine, "test")
    with pytest.raises(data.DataError, match="patch size 100 is larger than every tile"):
        data.PatchDataset(tiles, patch=100)
    with pytest.raises(data.DataError, match="no tiles"):
        data.PatchDataset([], patch=8)


def test_exit_on_user_error_prints_one_line_and_exits_2(capsys):
    def main():
        raise data.DataError("tile.tif: broken\nreally")

    with pytest.raises(SystemExit) as exit_:
        data.exit_on_user_error(main)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: tile.tif: broken really\n"


def run_cli(script, *arguments, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, arguments)], cwd=cwd, capture_output=True, text=True)


def test_cli_reports_user_errors_with_status_2_and_one_line(tmp_path):
    missing = run_cli("probe.py", tmp_path / "absent", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and missing.stderr.startswith("error: ") and "absent" in missing.stderr
    too_many = run_cli("synth.py", tmp_path / "out", "--tiles", "50", cwd=tmp_path)
    assert too_many.returncode == 2 and too_many.stderr.count("\n") == 1 and "--tiles" in too_many.stderr
    unknown = run_cli("synth.py", tmp_path / "out", "--dataset", "paris", cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "invalid choice: 'paris'" in unknown.stderr
    negative = run_cli("synth.py", tmp_path / "out", "--size", "-3", cwd=tmp_path)
    assert negative.returncode == 2 and negative.stderr == "error: argument --size: must be at least 1, got -3\n"
    written = run_cli("synth.py", tmp_path / "out", "--tiles", "3", "--size", "40", "--dataset", "potsdam", cwd=tmp_path)
    assert written.returncode == 0 and "wrote 3 synthetic potsdam tiles" in written.stdout
    assert layout_path(tmp_path / "out", "potsdam", "label", "2_12").is_file()
    moved = run_cli("data.py", "synth", tmp_path / "out", cwd=tmp_path)
    assert moved.returncode == 2 and moved.stderr == "error: synth has moved: use `python synth.py DIR --tiles N --size PX` (see README.md)\n"


# ---------------------------------------------------------------------------------------------
# Normalisation, patches, windows
# ---------------------------------------------------------------------------------------------


def test_normalise_single_and_batch():
    rng = np.random.default_rng(0)
    rgir = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    ndsm = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)
    batch_rgir, batch_ndsm = data.normalise(rgir, ndsm)
    assert batch_rgir.shape == (2, 3, 5, 7) and batch_ndsm.shape == (2, 1, 5, 7)
    assert batch_rgir.dtype == batch_ndsm.dtype == torch.float32 and batch_rgir.is_contiguous()
    single_rgir, single_ndsm = data.normalise(rgir[1], ndsm[1])
    assert torch.equal(single_rgir, batch_rgir[1]) and torch.equal(single_ndsm, batch_ndsm[1])
    flipped_rgir, flipped_ndsm = data.normalise(rgir[1, ::-1], torch.from_numpy(ndsm[1, ::-1].copy()))  # views too
    assert torch.equal(flipped_rgir, single_rgir.flip(1)) and torch.equal(flipped_ndsm, single_ndsm.flip(1))
    channel = 2  # G
    expected = (rgir[1, 3, 4, channel] / 255 - data.RGIR_MEAN[channel, 0, 0]) / data.RGIR_STD[channel, 0, 0]
    assert single_rgir[channel, 3, 4] == pytest.approx(float(expected), abs=1e-6)
    assert single_ndsm[0, 3, 4] == pytest.approx((ndsm[1, 3, 4] / 255 - data.NDSM_MEAN) / data.NDSM_STD, abs=1e-6)
    with pytest.raises(ValueError):
        data.normalise(rgir.astype(np.float32), ndsm)


def dihedral(array):
    """The 8 rotations/reflections of an (H, W, ...) array."""
    rotations = [np.rot90(array, turns) for turns in range(4)]
    return rotations + [rotation[:, ::-1] for rotation in rotations]


def test_augmentations_keep_modalities_and_label_aligned():
    """Every pixel's IRRG and NDSM encode its label, so any misalignment changes the decoded values."""
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (40, 44), dtype=np.uint8)

    def rgir_of(labels):
        return np.stack([labels * 40, 255 - labels * 40, labels * 7 + 3], -1).astype(np.uint8)

    def ndsm_of(labels):
        return (labels * 30 + 5).astype(np.uint8)

    dataset = data.PatchDataset([data.Tile("t", rgir_of(label), ndsm_of(label), label, None)], 24, 200, seed=3)
    crops = {(y, x): dihedral(label[y : y + 24, x : x + 24]) for y in range(17) for x in range(21)}
    orientations = set()
    for i in range(len(dataset)):
        rgir, ndsm, target = dataset[i]
        assert rgir.shape == (3, 24, 24) and ndsm.shape == (1, 24, 24) and target.dtype == torch.int64
        expected_rgir, expected_ndsm = data.normalise(rgir_of(target.numpy()), ndsm_of(target.numpy()))
        assert torch.allclose(rgir, expected_rgir) and torch.allclose(ndsm, expected_ndsm)
        found = [k for views in crops.values() for k, view in enumerate(views) if (view == target.numpy()).all()]
        assert len(found) == 1  # the label is a rotated/flipped crop of the tile
        orientations.add(found[0])
    assert orientations == set(range(8))


def test_patches_are_drawn_by_area_and_small_tiles_are_skipped(capsys):
    def tile(name, size, class_id):
        return data.Tile(name, np.zeros(size + (3,), np.uint8), np.zeros(size, np.uint8),
                         np.full(size, class_id, np.uint8), None)

    tiles = [tile("small", (32, 32), 0), tile("large", (64, 48), 1), tile("tiny", (10, 50), 2)]
    dataset = data.PatchDataset(tiles, patch=16, samples_per_epoch=1000)
    assert "not sampled: tiny" in capsys.readouterr().out
    drawn = np.array([int(dataset[i][2][0, 0]) for i in range(len(dataset))])
    assert 2 not in drawn and 0.71 < (drawn == 1).mean() < 0.79  # area share of "large": 0.75


def test_patch_dataset_is_deterministic_whatever_the_order_or_workers(pristine):
    tiles = data.load_split(pristine, "train") + data.load_split(pristine, "test")

    def samples(dataset, epoch, order):
        dataset.set_epoch(epoch)
        return {i: dataset[i] for i in order}

    first, second = data.PatchDataset(tiles, 32, 8, seed=5), data.PatchDataset(tiles, 32, 8, seed=5)
    forward, backward = samples(first, 3, range(8)), samples(second, 3, reversed(range(8)))
    later = samples(first, 4, range(8))
    for i in range(8):
        assert all(torch.equal(a, b) for a, b in zip(forward[i], backward[i]))
    assert sum(torch.equal(forward[i][0], later[i][0]) for i in range(8)) == 0
    first.set_epoch(3)
    batches = {
        workers: [batch for batch in torch.utils.data.DataLoader(first, batch_size=4, num_workers=workers)]
        for workers in (0, 2)
    }
    for batch0, batch2 in zip(*batches.values()):
        assert all(torch.equal(a, b) for a, b in zip(batch0, batch2))
    assert torch.equal(batches[0][0][2][1], forward[1][2])


@pytest.mark.parametrize(
    "height, width, window, overlap",
    [(100, 130, 32, 8), (37, 50, 16, 0), (20, 25, 32, 8), (64, 64, 64, 16), (65, 200, 64, 10), (33, 97, 17, 16)],
)
def test_sliding_windows_cover_and_reassemble_a_tile(height, width, window, overlap):
    tile = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    windows = data.sliding_windows(height, width, window, overlap)
    padded = data.pad_to_window(tile, window)
    assert padded.shape[0] >= window and padded.shape[1] >= window
    np.testing.assert_array_equal(padded[:height, :width], tile)
    canvas = np.zeros(padded.shape, np.int64)
    covered = np.zeros(padded.shape[:2], int)
    for y, x in windows:
        crop = padded[y : y + window, x : x + window]
        assert crop.shape[:2] == (window, window)
        canvas[y : y + window, x : x + window] = crop
        covered[y : y + window, x : x + window] += 1
    assert (covered[:height, :width] >= 1).all()
    np.testing.assert_array_equal(canvas[:height, :width], tile)
    for axis, size in ((0, height), (1, width)):
        starts = sorted({corner[axis] for corner in windows})
        assert starts[0] == 0 and starts[-1] == max(0, size - window)
        assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))


def test_pad_to_window_reflects_or_repeats_the_edge():
    array = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(data.pad_to_window(array, 5)[3:, :4], array[[1, 0]])  # reflect
    tiny = data.pad_to_window(np.arange(2).reshape(1, 2), 6)
    assert tiny.shape == (6, 6) and (tiny[:, 1:] == 1).all() and (tiny[:, 0] == 0).all()  # edge
    big = np.zeros((40, 40))
    assert data.pad_to_window(big, 32) is big


def test_class_frequencies_count_labelled_pixels():
    def tile(labels):
        labels = np.array(labels, np.uint8)
        return data.Tile("t", np.zeros(labels.shape + (3,), np.uint8), np.zeros_like(labels), labels, None)

    frequencies = data.class_frequencies([tile([[0, 0], [1, 4]]), tile([[0, 5, 5, 1]])])
    np.testing.assert_allclose(frequencies, [3 / 8, 2 / 8, 0, 0, 1 / 8, 2 / 8])
    assert frequencies.dtype == np.float64
