"""The ISPRS Vaihingen and Potsdam files as people have them: the archives as downloaded, or unpacked in any
of the common ways, each file recognised by what it is (docs/data.md, "Layouts").

Names first. Every ISPRS file name says its tile and, but for one, its kind (`_PATTERNS`). The exception is
Vaihingen's top_mosaic_09cm_area{N}.tif, the name of both the orthophoto and its label: the nearest folder
that says which decides (top/, images/, ... an orthophoto; gts*/, ground_truth*/, gt/, labels/, annotations/,
... a label), and where none does, the content: an ISPRS label is 3 bands of the six palette colours (and
black on the boundaries of the eroded ones), which an orthophoto never is. A tile with two files of one kind
that differ is refused, naming both: sorted order never decides.

Archives. A .zip below DIR that holds ISPRS files, and whose files are not already there, is unpacked once
into a folder beside it named after it (an archive of archives too: its inner archives are unpacked where
they lie), through a temporary folder renamed when complete, so an interrupted unpack is never taken for a
complete one; later runs read the folder.

data.py reads the files found here; the palette and the class ids live here, beside the names.
"""

import filecmp
import os
import re
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

import raster
from raster import DataError

DATASETS = ("vaihingen", "potsdam")

# ---- Classes and palette --------------------------------------------------------------------

CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
PALETTE = np.array(
    [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], np.uint8
)  # index = class id; black (0, 0, 0) marks the boundary pixels of the eroded labels
IGNORE_INDEX = 255

# Every palette channel is exactly 0 or 255, so one bit per channel identifies a colour; looking up
# those three bits converts a 6000 x 6000 label in a fraction of a second.
_OFF_PALETTE = 254


def _colour_bits(rgb):
    return (rgb[..., 0] & 4) | (rgb[..., 1] & 2) | (rgb[..., 2] & 1)


_ID_OF_BITS = np.full(8, _OFF_PALETTE, np.uint8)
_ID_OF_BITS[_colour_bits(PALETTE)] = np.arange(len(PALETTE))
_ID_OF_BITS[0] = IGNORE_INDEX  # black
_RGB_OF_ID = np.zeros((256, 3), np.uint8)
_RGB_OF_ID[: len(PALETTE)] = PALETTE


def _off_palette(rgb: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that are neither a class colour nor black."""
    # uint8 wrap-around: v + 1 is 1 for 0 and 0 for 255, > 1 for every other value
    red, green, blue = (rgb[..., channel] + np.uint8(1) > 1 for channel in range(3))
    return (_ID_OF_BITS[_colour_bits(rgb)] == _OFF_PALETTE) | red | green | blue


def rgb_to_labels(rgb: np.ndarray, path="") -> np.ndarray:
    """(H, W, 3) uint8 palette colours -> (H, W) uint8 class ids; black -> IGNORE_INDEX."""
    where = path or "label image"
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"{where}: expected a 3-band uint8 colour label, got shape {rgb.shape} of {rgb.dtype}")
    off_palette = _off_palette(rgb)
    if off_palette.any():
        codes = rgb[off_palette].astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)
        values, counts = np.unique(codes, return_counts=True)
        top = int(values[counts.argmax()])
        colour = (top >> 16, (top >> 8) & 255, top & 255)
        raise DataError(
            f"{where}: {int(off_palette.sum())} pixels have colours outside the ISPRS palette, most often "
            f"RGB {colour} ({int(counts.max())} pixels); labels must use only the six class colours and black"
        )
    return _ID_OF_BITS[_colour_bits(rgb)]


def labels_to_rgb(labels: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 palette colours; IGNORE_INDEX (and any id > 5) -> black."""
    return _RGB_OF_ID[labels]


def looks_like_label(pixels: np.ndarray) -> bool:
    """Whether (H, W, B) pixels are an ISPRS label: 3 uint8 bands, every pixel a class colour or black, and
    not all black. An orthophoto never is (a blank, all-black one is not taken for a label)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return False
    if _off_palette(pixels[::61, ::59]).any():  # a sparse grid settles it for an orthophoto, at once
        return False
    return not _off_palette(pixels).any() and bool(pixels.any())


# ---- Names ----------------------------------------------------------------------------------

# (kind, pattern of the file name); the first match wins, so specific names come before general ones
_PATTERNS = {
    "vaihingen": (
        ("top", r"top_mosaic_09cm_area(\d+)\.tif"),  # the orthophoto's and the label's name: _top_kind decides
        ("eroded", r"top_mosaic_09cm_area(\d+)_noBoundary\.tif"),
        ("dsm", r"dsm_09cm_matching_area(\d+)\.tif"),
        # the NDSM: any such name in an "ndsm"/"normalized" folder or with it in its name; Gerke's
        # ndsm_09cm_matching_area{N}.bmp, and "area1" is not "area11"
        ("ndsm", r".*(?<![a-z])area(\d+)(?!\d).*\.(?:jpe?g|tiff?|png|bmp)"),
    ),
    "potsdam": (
        ("image", r"top_potsdam_(\d+)_(\d+)_IRRG\.tif"),
        ("rgbir", r"top_potsdam_(\d+)_(\d+)_RGBIR\.tif"),
        ("rgb", r"top_potsdam_(\d+)_(\d+)_RGB\.tif"),  # no infrared: named in messages, never read
        ("label", r"top_potsdam_(\d+)_(\d+)_label\.tif"),
        ("eroded", r"top_potsdam_(\d+)_(\d+)_label_noBoundary\.tif"),
        ("dsm", r"dsm_potsdam_(\d+)_(\d+)\.tif"),
        ("ndsm", r"dsm_potsdam_(\d+)_(\d+)_normali[sz]ed(?:_lastools)?\.(?:jpe?g|tiff?|png)"),
    ),
}
_NDSM_HINT = re.compile(r"ndsm|normali[sz]ed", re.IGNORECASE)
# Folder names that say what a top_mosaic_09cm_area{N}.tif in them is: whole words, so "labeling" is not "label"
_LABEL_FOLDER = re.compile(r"(?<![a-z])(?:gts?|ground.?truth|labels?|annotations?|ann|masks?)(?![a-z])", re.IGNORECASE)
_IMAGE_FOLDER = re.compile(r"(?<![a-z])(?:top|images?|imgs?|ortho[a-z]*|irrg|rgir)(?![a-z])", re.IGNORECASE)
# The participants' labels (Vaihingen's gts_for_participants/, Potsdam's 5_Labels_for_participants) are the
# benchmark's first, partial release; beside the complete one, the complete one is used
_PARTICIPANTS_FOLDER = re.compile(r"for.?participants", re.IGNORECASE)

KIND_WORDS = {"image": "orthophoto", "rgbir": "RGBIR orthophoto", "rgb": "RGB orthophoto", "label": "label",
              "eroded": "eroded label", "ndsm": "NDSM", "dsm": "DSM"}

# The archives, as ISPRS distributes them, that hold what a message asks for
ARCHIVES = {
    "vaihingen": {"image": "ISPRS_semantic_labeling_Vaihingen.zip (top/)",
                  "label": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip",
                  "eroded": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
                  "ndsm": "Gerke's nDSM (ndsm/ndsm_09cm_matching_area{N}.bmp)"},
    "potsdam": {"image": "3_Ortho_IRRG.zip or 4_Ortho_RGBIR.zip", "label": "5_Labels_all.zip",
                "eroded": "5_Labels_all_noBoundary.zip", "ndsm": "1_DSM_normalisation.zip"},
}


def file_name(dataset: str, kind: str, name: str) -> str:
    """The ISPRS file name of one kind of file of a tile; used for messages and by the generator."""
    if dataset == "vaihingen":
        return {
            "image": f"top_mosaic_09cm_{name}.tif",
            "label": f"top_mosaic_09cm_{name}.tif",
            "eroded": f"top_mosaic_09cm_{name}_noBoundary.tif",
            "ndsm": f"dsm_09cm_matching_{name}_normalized.jpg",
        }[kind]
    x, y = (int(part) for part in name.split("_"))
    return {
        "image": f"top_potsdam_{name}_IRRG.tif",
        "label": f"top_potsdam_{name}_label.tif",
        "eroded": f"top_potsdam_{name}_label_noBoundary.tif",
        "ndsm": f"dsm_potsdam_{x:02d}_{y:02d}_normalized_lastools.jpg",
    }[kind]


def _classify(relative: Path, dataset: str) -> tuple[str, str] | None:
    """(kind, tile name) of a file by its path relative to the data root, or None if it is not the dataset's.
    Vaihingen's top_mosaic_09cm_area{N}.tif comes back as kind "top": an orthophoto or a label (_top_kind)."""
    for kind, pattern in _PATTERNS[dataset]:
        match = re.fullmatch(pattern, relative.name, re.IGNORECASE)
        if match is None:
            continue
        if kind == "ndsm" and not _NDSM_HINT.search(str(relative)):
            return None
        numbers = [int(group) for group in match.groups()]
        return kind, (f"area{numbers[0]}" if dataset == "vaihingen" else f"{numbers[0]}_{numbers[1]}")
    return None


def _folder_says(relative: Path) -> str | None:
    """"image" or "label" as the nearest folder that says one and not the other says, else None."""
    for folder in reversed(relative.parts[:-1]):
        label, image = bool(_LABEL_FOLDER.search(folder)), bool(_IMAGE_FOLDER.search(folder))
        if label != image:
            return "label" if label else "image"
    return None


_CONTENT = {}  # (path, size, mtime) -> whether it is a label; a file is read for it once per process


def is_label_file(path: Path) -> bool:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CONTENT:
        _CONTENT[key] = looks_like_label(raster.read_bands(path)[0])
    return _CONTENT[key]


def _top_kind(root: Path, relative: Path) -> str:
    """A top_mosaic_09cm_area{N}.tif: "image" or "label", by its folder, else by its content."""
    return _folder_says(relative) or ("label" if is_label_file(root / relative) else "image")


def _same_content(first: Path, second: Path) -> bool:
    """Two files hold the same pixels: the same bytes, or the same bands once decoded."""
    if filecmp.cmp(first, second, shallow=False):
        return True
    one, other = raster.read_bands(first)[0], raster.read_bands(second)[0]
    return one.shape == other.shape and bool((one == other).all())


def _one_of(root: Path, name: str, kind: str, paths: list[Path]) -> Path:
    """The file of a kind of a tile. Copies that hold the same pixels are one file; the participants' labels
    give way to complete ones; two that still differ are refused, naming both."""
    if len(paths) > 1:
        paths = [path for path in paths if not any(map(_PARTICIPANTS_FOLDER.search, path.parts[:-1]))] or paths
    for other in paths[1:]:
        if not _same_content(root / paths[0], root / other):
            raise DataError(f"{name}: two different {KIND_WORDS[kind]} files, {root / paths[0]} and {root / other}; "
                            f"keep the one to use under {root} and move the other out")
    return paths[0]


def index(root: Path, files: list[Path], dataset: str) -> dict[str, dict[str, Path]]:
    """kind -> tile name -> path relative to root, one file each (see _top_kind and _one_of)."""
    candidates = defaultdict(lambda: defaultdict(list))
    for relative in files:
        found = _classify(relative, dataset)
        if found is not None:
            kind, name = found
            candidates[_top_kind(root, relative) if kind == "top" else kind][name].append(relative)
    return defaultdict(dict, {kind: {name: _one_of(root, name, kind, paths) for name, paths in tiles.items()}
                              for kind, tiles in candidates.items()})


# ---- Archives -------------------------------------------------------------------------------

_PARTIAL = ".partial"  # the temporary folder of an unpack under way: ".{folder}.{pid}.partial"


def _isprs_members(archive: Path) -> list[str]:
    """The members of a zip that are ISPRS files or archives (an archive of archives); [] for any other zip."""
    try:
        with zipfile.ZipFile(archive) as opened:
            names = opened.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{archive}: cannot be read as a zip archive ({error}); download it again") from error
    return [member for member in names if member.lower().endswith(".zip")
            or any(_classify(Path(member), dataset) for dataset in DATASETS)]


def _extract(archive: Path, destination: Path):
    """Every member of a zip into destination (member paths made safe by zipfile), with a progress bar; inner
    zips are unpacked where they lie, into a folder named after each, and their copies removed."""
    with zipfile.ZipFile(archive) as opened:
        members = opened.infolist()
        with tqdm(total=sum(member.file_size for member in members), unit="B", unit_scale=True,
                  desc=f"unpacking {archive.name}", leave=False, disable=None) as bar:
            for member in members:
                opened.extract(member, destination)
                bar.update(member.file_size)
    for inner in sorted(destination.rglob("*.zip"), key=str):
        _extract(inner, inner.with_suffix(""))
        inner.unlink()  # the copy just taken out of the outer archive, not the user's


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, another user's
        pass
    return True


def _unpack(archive: Path, target: Path):
    """Unpack archive into target through a temporary folder beside it, renamed when complete."""
    for stale in target.parent.glob(f".{target.name}.*{_PARTIAL}"):  # left by an interrupted unpack
        pid = stale.name[len(target.name) + 2 : -len(_PARTIAL)]
        if not pid.isdigit() or not _process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    partial = target.parent / f".{target.name}.{os.getpid()}{_PARTIAL}"
    with zipfile.ZipFile(archive) as opened:
        size = sum(member.file_size for member in opened.infolist())
    shown = f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"
    print(f"notice: unpacking {archive} ({shown}) into {target}, once: later runs read it there")
    try:
        _extract(archive, partial)
        os.rename(partial, target)
    except BaseException as error:  # an interrupt too: nothing half-unpacked is left to be taken for complete
        shutil.rmtree(partial, ignore_errors=True)
        if target.is_dir():  # another process (a torchrun peer) unpacked it first
            return
        if isinstance(error, (OSError, zipfile.BadZipFile, EOFError)):
            raise DataError(f"{archive}: cannot be unpacked into {target} ({error}); unpack it yourself, or "
                            "free some space or make the folder writable") from error
        raise


def _unpack_archives(root: Path, files: list[Path]) -> bool:
    """Unpack every ISPRS archive below root that is neither unpacked into the folder beside it named after
    it nor unpacked where it lies (torchgeo unpacks into DIR itself); True if one was."""
    unpacked = False
    for relative in files:
        archive = root / relative
        if relative.suffix.lower() != ".zip" or archive.with_suffix("").is_dir():
            continue
        members = _isprs_members(archive)
        in_place = all((archive.parent / member).exists() or (member.lower().endswith(".zip")
                       and (archive.parent / member[:-4]).is_dir()) for member in members)
        if members and not in_place:
            _unpack(archive, archive.with_suffix(""))
            unpacked = True
    return unpacked


# ---- The data folder ------------------------------------------------------------------------


def _walk(root: Path) -> list[Path]:
    """All files below root, relative to it and sorted. Linked folders are followed (a DIR of symlinks to the
    unpacked archives is a common arrangement); a folder reached again (a link back up the tree, or two links
    to one folder) is listed only where it is first met; unpacks under way are not listed."""
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = sorted(sub for sub in subfolders if not sub.endswith(_PARTIAL))
        stat = os.stat(folder)
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            subfolders.clear()
            continue
        seen.add(identity)
        files += [Path(folder, name).relative_to(root) for name in names if Path(folder, name).is_file()]
    return sorted(files)


def listing(root) -> tuple[Path, list[Path]]:
    """The root and all files below it, relative to it and sorted, after unpacking any ISPRS archive there."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found; point --data at the ISPRS archives, as downloaded "
                        "or unpacked")
    files = _walk(root)
    return root, (_walk(root) if _unpack_archives(root, files) else files)


def _by_name(files: list[Path], dataset: str) -> dict[str, set[str]]:
    """kind -> tile names, by file names alone (no file is read)."""
    kinds = defaultdict(set)
    for relative in files:
        found = _classify(relative, dataset)
        if found is not None:
            kinds[found[0]].add(found[1])
    return kinds


def detect(root: Path, files: list[Path]) -> str:
    """"vaihingen" or "potsdam", by the orthophotos named below root."""
    named = {dataset: _by_name(files, dataset) for dataset in DATASETS}
    present = [dataset for dataset in DATASETS if {"top", "image", "rgbir"} & named[dataset].keys()]
    if len(present) > 1:
        raise DataError(f"{root}: holds both Vaihingen and Potsdam images; name the dataset (--dataset)")
    if present:
        return present[0]
    if named["potsdam"]["rgb"]:
        refuse_rgb_only(root, sorted(named["potsdam"]["rgb"]))
    archives = [relative.name for relative in files if relative.suffix.lower() == ".zip"]
    raise DataError(
        f"{root}: no ISPRS Vaihingen or Potsdam images found (e.g. top_mosaic_09cm_area1.tif, "
        f"top_potsdam_2_10_IRRG.tif)" + (f"; its archives ({', '.join(archives)}) hold none" if archives else "")
        + f"; for synthetic data run: python synth.py {root}"
    )


def refuse_rgb_only(root: Path, names: list[str]):
    """Potsdam tiles found only as RGB: DIS2 needs the infrared band."""
    shown = " ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    raise DataError(f"{root}: Potsdam tiles found only as RGB without infrared ({len(names)} tiles: {shown}, "
                    "top_potsdam_*_RGB.tif of 2_Ortho_RGB); DIS2 needs the infrared band: add 3_Ortho_IRRG.zip "
                    "or 4_Ortho_RGBIR.zip, as downloaded or unpacked")


def find(root, dataset=None) -> tuple[Path, str, dict[str, dict[str, Path]]]:
    """The root, the dataset (detected unless named) and its files: kind -> tile name -> path relative to root."""
    root, files = listing(root)
    dataset = dataset if dataset is not None else detect(root, files)
    return root, dataset, index(root, files, dataset)
