"""
What every command shares: the device, the precision (--amp, --channels-last),
checkpoints (written atomically, read with a one-line error for a wrong
file, turned back into a model), and the sliding-window loop of evaluate.py
and predict.py.
"""

import argparse
import hashlib
import os
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm import tqdm

from data import CLASSES, DataError, normalise, positive_int
from dis2 import DIS2, DIS2Config, STRIDE
from shaspec import ShaSpec, ShaSpecConfig

CHECKPOINT_FORMAT = "dis2-checkpoint-3"  # 2: fusion and decoder under fusion_decoders (DIS2Config.layout); 3: running statistics per scenario


# -----------------------------------------------------------------------------
# Devices and precision


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


# --amp: the autocast dtype of each choice ("off": fp32). The same code runs
# on CPU and CUDA: torch.autocast with the device type, and for fp16 a
# GradScaler, which keeps small gradients from flushing to zero.
PRECISIONS = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device):
    """Whether the GPU computes in bf16 natively (compute capability 8.0, Ampere, or newer).
    torch.cuda.is_bf16_supported() also counts emulation, which a V100 or T4 runs slowly."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def precision(device, amp):
    """--amp resolved on `device` to a key of PRECISIONS. Left out (None): on
    CUDA bf16 where the GPU computes it natively, else fp16; on CPU off (mixed
    precision pays off only with bf16 or fp16 arithmetic units, which most
    CPUs lack). True and False are what checkpoints of the earlier on/off
    flag hold."""
    cuda_without_bf16 = device.type == "cuda" and not native_bf16(device)
    if amp is False or (amp is None and device.type != "cuda"):
        return "off"
    if amp is None or amp is True:
        return "fp16" if cuda_without_bf16 else "bf16"
    if amp == "bf16" and cuda_without_bf16:
        raise DataError("--amp bf16: this GPU has no native bf16 (compute capability below 8.0); use --amp fp16")
    return amp


def autocast_dtype(device, amp):
    """The autocast dtype of --amp on `device`; None = full precision."""
    return PRECISIONS[precision(device, amp)]


AMP_HELP = ("mixed precision: bf16, fp16 (with a gradient scaler in training) or off (fp32); "
            "default: bf16 on CUDA where the GPU computes it natively (Ampere or newer), else fp16; off on CPU")
DEVICE_HELP = "where to run: auto = the GPU when CUDA has one, else the CPU (default %(default)s)"
CHANNELS_LAST_HELP = "channels-last (NHWC) memory for the model and its inputs (default: on with CUDA, off on CPU)"


def set_cuda_backends(amp_dtype):
    """train.py on CUDA. Fixed patch sizes: cuDNN may pick its fastest convolutions once. Under mixed precision the
    products left in fp32 may use TF32; under --amp off every product is strict fp32, as its help
    says (cuDNN would otherwise run fp32 convolutions in TF32 by default)."""
    torch.backends.cudnn.benchmark = True
    tf32 = amp_dtype is not None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def use_channels_last(device, channels_last):
    """--channels-last resolved: left out (None), on with CUDA, where cuDNN's
    convolutions are faster in that layout, and off on CPU."""
    return device.type == "cuda" if channels_last is None else channels_last


# -----------------------------------------------------------------------------
# Checkpoints


def config_dict(config):
    return {f.name: getattr(config, f.name) for f in fields(config) if f.init}


def save_checkpoint(state, path):
    """Write to a temporary file in the same directory, then rename: a crash or
    a kill during the write leaves the previous checkpoint as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path, flag="--checkpoint"):
    """The checkpoint at `path`; a wrong path or file ends in one line that names `flag`, the
    command's way to give one (evaluate.py, predict.py: --checkpoint; train.py: --resume)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass {flag} PATH to a .pt file written by train.py")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__}); pass a .pt file written by train.py")
    if isinstance(checkpoint, dict) and str(checkpoint.get("format", "")).startswith("dis2-checkpoint-") \
            and checkpoint["format"] != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: written by another version of dis2 ({checkpoint['format']}, this one reads "
                        f"{CHECKPOINT_FORMAT}); train again with this version")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{path}: not a DIS2 checkpoint (no '{CHECKPOINT_FORMAT}' marker); pass a .pt file written by train.py")
    return checkpoint


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def add_inference_flags(p):
    """The flags evaluate.py and predict.py share: the checkpoint, the device and precision, and the sliding windows."""
    p.add_argument("--checkpoint", help="checkpoint file (default: best.pt of the most recent run under runs/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help=DEVICE_HELP)
    p.add_argument("--amp", choices=tuple(PRECISIONS), help=AMP_HELP)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help=CHANNELS_LAST_HELP)
    p.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass (default %(default)s)")
    p.add_argument("--patch", type=positive_int, help="side of the sliding windows, a multiple of 16 (default: the training patch)")
    p.add_argument("--overlap", type=int, help="overlap of adjacent windows in pixels (default: a quarter window)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")


def inference_setup(args):
    """What add_inference_flags' flags resolve to: (device, autocast dtype, checkpoint path, checkpoint,
    window, overlap); sets args.channels_last for the device, and args.own_data to the checkpoint's own data
    (its classes, bands and normalisation; own_data.py), None for ISPRS, by which predict.py reads and writes.
    An ISPRS checkpoint must predict the ISPRS classes."""
    device = resolve_device(args.device)
    amp_dtype = autocast_dtype(device, args.amp)
    args.channels_last = use_channels_last(device, args.channels_last)
    checkpoint_path = Path(args.checkpoint) if args.checkpoint else latest_checkpoint()
    checkpoint = load_checkpoint(checkpoint_path)
    args.own_data = checkpoint.get("own_data")
    if args.own_data is None:
        check_isprs_classes(checkpoint, checkpoint_path)
    return (device, amp_dtype, checkpoint_path, checkpoint, *windows_of(args, checkpoint))


def check_isprs_classes(checkpoint, path):
    """A checkpoint for the ISPRS labels predicts their six classes."""
    if checkpoint["config"]["num_classes"] != len(CLASSES):
        raise DataError(
            f"{path}: the model predicts {checkpoint['config']['num_classes']} classes but the ISPRS "
            f"labels have {len(CLASSES)}; use a checkpoint trained on ISPRS data"
        )
    return checkpoint


def prepared(model, device, compile_model=False, channels_last=None):
    """The model on `device` for inference, in channels-last memory (default:
    on CUDA only, see use_channels_last), optionally compiled."""
    model = model.to(device).eval()
    if use_channels_last(device, channels_last):
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if compile_model else model


def model_from_checkpoint(checkpoint, device, compile_model=False, channels_last=None):
    # Checkpoints before ShaSpec hold no "architecture": they are DIS2's.
    if checkpoint.get("architecture", "DIS2") == "ShaSpec":
        model = ShaSpec(ShaSpecConfig(**checkpoint["config"]))
    else:
        model = DIS2(DIS2Config(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return prepared(model, device, compile_model, channels_last)


class FullBatches(torch.nn.Module):
    """The model given batches of exactly `size` windows, a short one filled up with copies of its last window
    and the copies' outputs dropped. A compiled model then meets one input shape per modality pattern (three
    graphs), where batches of every size (a scenario's share of a batch, an area's last batch) would pass
    Dynamo's recompile limit and silently run eagerly."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size, self.config = model, size, model.config

    def forward(self, rgir, ndsm):
        n = (rgir if rgir is not None else ndsm).shape[0]
        full = lambda x: None if x is None else torch.cat([x, x[-1:].expand(self.size - n, *x.shape[1:])])
        out = self.model(full(rgir), full(ndsm))
        return SimpleNamespace(logits=out.logits[:n], attention=None if out.attention is None else out.attention[:n])


def file_sha256(path):
    """The SHA-256 of a file's bytes (a checkpoint's), in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_patch(patch):
    """Training patches and evaluation windows: the encoders halve them four times."""
    if patch % STRIDE:
        raise DataError(f"--patch {patch}: must be a multiple of {STRIDE} (the encoders halve it four times)")
    return patch


def default_overlap(window):
    """Adjacent windows overlap by a quarter window unless --overlap says otherwise."""
    return window // 4


def windows_of(args, checkpoint):
    """The sliding window (--patch, default the training patch) and its overlap (--overlap, default a quarter)."""
    window = check_patch(args.patch or checkpoint["train_args"]["patch"])
    overlap = args.overlap if args.overlap is not None else default_overlap(window)
    if not 0 <= overlap < window:
        raise DataError(f"--overlap {overlap}: must be at least 0 and smaller than the window ({window})")
    return window, overlap


# -----------------------------------------------------------------------------
# The sliding-window loop of evaluate.py and predict.py


def window_batches(starts, batch_size, progress=False):
    """The window corners `starts` in batches of `batch_size`, in order; with `progress`, a bar on a terminal."""
    bar = tqdm(range(0, len(starts), batch_size), desc="windows", unit="batch", leave=False,
               disable=None if progress else True)
    for i in bar:
        yield starts[i : i + batch_size]


def windows_at(image, batch, window):
    """(B, window, window, ...) the windows of `image` whose top-left corners are `batch`; None for None."""
    return None if image is None else np.stack([image[y : y + window, x : x + window] for y, x in batch])


def model_on_windows(model, rgir, ndsm, device, amp_dtype, channels_last=None, prepare=None, **kwargs):
    """model(rgir, ndsm, **kwargs) for windows rgir (B, h, w, 3) and/or ndsm (B, h, w) uint8 (one's own rasters:
    float32 (B, h, w, bands), normalised when read), None for a missing modality: normalised as in training,
    on `device`, passed through prepare(r, n) where given (tensors, None for missing), in the model's memory format (`channels_last`: see use_channels_last; the windows take it
    too, which spares the first convolution a copy), under autocast to `amp_dtype` (None: fp32)."""
    memory_format = torch.channels_last if use_channels_last(device, channels_last) else torch.contiguous_format
    r, n = (None if t is None else t.to(device, non_blocking=True) for t in normalise(rgir, ndsm))
    r, n = prepare(r, n) if prepare else (r, n)
    r, n = (None if x is None else x.contiguous(memory_format=memory_format) for x in (r, n))
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(r, n, **kwargs)


def window_coverage(starts, size, window, device):
    """(size,) how many of the windows starting at `starts` cover each position along one axis."""
    count = torch.zeros(size, device=device)
    for start in set(starts):
        count[start : start + window] += 1
    return count


def add_windows(sums, batch, values, window, top=0):
    """Adds each window's values (B, C, window, window) into `sums` (C, rows, W) at its corner, rows from `top`."""
    for (y, x), window_values in zip(batch, values):
        sums[:, y - top : y - top + window, x : x + window] += window_values


def latest_checkpoint(runs="runs", name="best.pt", flag="--checkpoint"):
    candidates = sorted(Path(runs).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise DataError(f"no checkpoint given and no {runs}/*/{name} found; train first or pass {flag} PATH")
    return candidates[-1]


def writable_dir(path, flag):
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write there ({e.strerror}); choose a writable directory")
    return path
