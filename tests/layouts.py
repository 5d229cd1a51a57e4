"""The ISPRS archives as people have them, written with tiny random tiles for test_layouts.py.

Each layout is a list of archives, each a list of (path in the archive, kind), as ISPRS distributes them
(docs/data.md, "Layouts"), and a way to put them under DIR: as downloaded (the zips), unpacked into folders
named after them, unpacked into DIR itself (torchgeo), or renamed folders (other pipelines). The tiles'
arrays are returned, so a test checks every file read back pixel-exact against what was written here,
independently of data.py.
"""

import io
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

IGNORE = 255
PALETTE = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], np.uint8)
TILES = {"vaihingen": ("area1", "area5", "area2"), "potsdam": ("2_10", "2_12", "2_13")}  # train, val, test
TRAIN_AREAS = {"area1", "area5", "2_10", "2_12"}  # the tiles whose labels the benchmark gave its participants


def colours(ids):
    """Class ids -> palette colours; IGNORE (boundary) -> black."""
    rgb = np.zeros(ids.shape + (3,), np.uint8)
    for class_id, colour in enumerate(PALETTE):
        rgb[ids == class_id] = colour
    return rgb


def tile_arrays(rng, height, width):
    """IRRG, NDSM (uint8 decimetres), label ids in 4 px blocks, and the eroded label (boundaries black)."""
    blocks = rng.integers(0, 6, (height // 4 + 1, width // 4 + 1), dtype=np.uint8)
    label = blocks.repeat(4, 0).repeat(4, 1)[:height, :width]
    border = np.zeros(label.shape, bool)
    border[:, 1:] |= label[:, 1:] != label[:, :-1]
    border[1:] |= label[1:] != label[:-1]
    return {
        "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "ndsm": rng.integers(0, 256, (height, width), dtype=np.uint8),
        "label": label,
        "eroded": np.where(border, np.uint8(IGNORE), label),
    }


def isprs_name(dataset, kind, name):
    """The ISPRS file name of a kind of file of a tile."""
    if dataset == "vaihingen":
        return {"image": f"top_mosaic_09cm_{name}.tif", "label": f"top_mosaic_09cm_{name}.tif",
                "eroded": f"top_mosaic_09cm_{name}_noBoundary.tif", "ndsm": f"ndsm_09cm_matching_{name}.bmp",
                "ndsm_jpg": f"dsm_09cm_matching_{name}_normalized.jpg", "dsm": f"dsm_09cm_matching_{name}.tif"}[kind]
    x, y = (int(part) for part in name.split("_"))
    return {"image": f"top_potsdam_{name}_IRRG.tif", "rgbir": f"top_potsdam_{name}_RGBIR.tif",
            "rgb": f"top_potsdam_{name}_RGB.tif", "label": f"top_potsdam_{name}_label.tif",
            "eroded": f"top_potsdam_{name}_label_noBoundary.tif",
            "ndsm": f"dsm_potsdam_{x:02d}_{y:02d}_normalized_lastools.jpg", "dsm": f"dsm_potsdam_{x:02d}_{y:02d}.tif"}[kind]


def encoded(kind, arrays):
    """The bytes of one file of a tile, as ISPRS writes it."""
    buffer = io.BytesIO()
    if kind in ("image", "rgb"):
        tifffile.imwrite(buffer, arrays["image"], photometric="rgb")
    elif kind == "rgbir":  # R, G, B, IR from IR, R, G (B made up)
        irrg = arrays["image"]
        rgbir = np.stack([irrg[..., 1], irrg[..., 2], 255 - irrg[..., 2], irrg[..., 0]], -1)
        tifffile.imwrite(buffer, rgbir, photometric="rgb", extrasamples=["unspecified"])
    elif kind in ("label", "eroded"):
        tifffile.imwrite(buffer, colours(arrays[kind]), photometric="rgb", compression="zlib")
    elif kind == "ndsm":  # Gerke's 8-bit grey BMP (Vaihingen), or ISPRS's 8-bit JPEG (Potsdam)
        Image.fromarray(arrays["ndsm"]).save(buffer, format="BMP")
    elif kind == "ndsm_jpg":
        Image.fromarray(arrays["ndsm"]).save(buffer, format="JPEG", quality=95)
    elif kind == "dsm":  # float metres above a ground at 250 m
        tifffile.imwrite(buffer, (250 + arrays["ndsm"] / 10).astype(np.float32))
    return buffer.getvalue()


def archives(dataset, kinds):
    """{archive name: [(path in the archive, kind, tile)]}: the ISPRS archives holding `kinds`, as distributed."""
    names = TILES[dataset]
    if dataset == "vaihingen":
        contents = {
            "ISPRS_semantic_labeling_Vaihingen.zip": [(f"top/{isprs_name(dataset, 'image', n)}", "image", n)
                                                      for n in names]
            + [(f"gts_for_participants/{isprs_name(dataset, 'label', n)}", "participants", n)
               for n in names if n in TRAIN_AREAS]
            + [(f"dsm/{isprs_name(dataset, 'dsm', n)}", "dsm", n) for n in names],
            "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip":
                [(isprs_name(dataset, "label", n), "label", n) for n in names],
            "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip":
                [(isprs_name(dataset, "eroded", n), "eroded", n) for n in names],
            "ndsm.zip": [(isprs_name(dataset, "ndsm", n), "ndsm", n) for n in names],  # Gerke's nDSM
        }
        wanted = {"image": "ISPRS_semantic_labeling_Vaihingen.zip",
                  "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
                  "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip", "ndsm": "ndsm.zip"}
    else:
        folder = {"ndsm": "1_DSM_normalisation", "rgb": "2_Ortho_RGB", "image": "3_Ortho_IRRG", "rgbir": "4_Ortho_RGBIR"}
        contents = {f"{folder[kind]}.zip": [(f"{folder[kind]}/{isprs_name(dataset, kind, n)}", kind, n) for n in names]
                    for kind in folder}
        contents["5_Labels_all.zip"] = [(isprs_name(dataset, "label", n), "label", n) for n in names]
        contents["5_Labels_all_noBoundary.zip"] = [(isprs_name(dataset, "eroded", n), "eroded", n) for n in names]
        wanted = {kind: f"{name}.zip" for kind, name in folder.items()}
        wanted.update(label="5_Labels_all.zip", eroded="5_Labels_all_noBoundary.zip")
    return {wanted[kind]: contents[wanted[kind]] for kind in kinds}


def file_bytes(kind, arrays):
    return encoded("label" if kind == "participants" else kind, arrays)


def write(root, dataset, kinds, how, seed=0, rename=None):
    """Write the archives holding `kinds` under root, `how`:
      "zips"      as downloaded;       "nested"  inside one archive of archives (Potsdam.zip);
      "folders"   each unpacked into a folder named after it;
      "torchgeo"  each unpacked into root itself, the zips kept beside;
      "renamed"   only files in folders of other names: rename maps kind -> folder (e.g. {"label": "gt"});
    with "folders" or "torchgeo", rename moves the files of its kinds alone.
    Returns {tile: arrays} of what was written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    tiles = {name: tile_arrays(rng, 32 + 4 * k, 40 - 4 * k) for k, name in enumerate(TILES[dataset])}
    held = archives(dataset, kinds)
    if how in ("zips", "torchgeo", "nested"):
        packed = {}
        for archive, members in held.items():
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as opened:
                for member, kind, name in members:
                    opened.writestr(member, file_bytes(kind, tiles[name]))
            packed[archive] = buffer.getvalue()
        if how == "nested":
            with zipfile.ZipFile(root / "Potsdam.zip", "w", zipfile.ZIP_STORED) as outer:
                for archive, content in packed.items():
                    outer.writestr(f"Potsdam/{archive}", content)
        else:
            for archive, content in packed.items():
                (root / archive).write_bytes(content)
    if how in ("folders", "torchgeo", "renamed"):
        for archive, members in held.items():
            for member, kind, name in members:
                if kind in (rename or {}):
                    path = root / rename[kind] / Path(member).name
                elif how == "renamed":
                    continue
                else:
                    path = root / (archive[:-4] if how == "folders" else "") / member
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(file_bytes(kind, tiles[name]))
    return tiles


def expected_ndsm(dataset, arrays):
    """The NDSM as written: Vaihingen's BMP exactly; Potsdam's JPEG as decoded (lossy)."""
    if dataset == "vaihingen":
        return arrays["ndsm"]
    with Image.open(io.BytesIO(encoded("ndsm", arrays))) as image:
        return np.array(image)
