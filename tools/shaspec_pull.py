"""
How hard ShaSpec's distribution alignment (DAO) pulls on its shared encoder at
initialisation, in each form (shaspec.ALIGNMENTS), beside the task loss: the
norm of the gradient each puts on the shared encoder's weights, for one batch
of training patches (docs/design.md, "ShaSpec, the comparison method of
Table 1").

    python tools/shaspec_pull.py docs/reproduction/data --width 16 --patch 128
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import data  # noqa: E402
from losses import median_frequency_weights  # noqa: E402
from shaspec import ALIGNMENTS, ShaSpec, ShaSpecConfig, shaspec_loss  # noqa: E402


def gradient_norm(loss, parameters):
    grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum(g.square().sum() for g in grads if g is not None)).item()


def main(argv=None):
    p = data.ArgumentParser(description="The pull of ShaSpec's alignment on its shared encoder at initialisation.")
    p.add_argument("data", metavar="DIR", help="ISPRS data directory (its training tiles give the batch)")
    p.add_argument("--width", type=data.positive_int, default=16, help="encoder channels at level 1 (default %(default)s)")
    p.add_argument("--patch", type=data.positive_int, default=128, help="side of the square inputs (default %(default)s)")
    p.add_argument("--batch-size", type=data.positive_int, default=8, help="inputs per step (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default %(default)s)")
    args = p.parse_args(argv)
    tiles = data.load_split(args.data, "train")
    patches = data.PatchDataset(tiles, args.patch, samples_per_epoch=args.batch_size, seed=args.seed)
    rgir, ndsm, label = next(iter(torch.utils.data.DataLoader(patches, batch_size=args.batch_size)))
    class_weights = median_frequency_weights(data.class_frequencies(tiles))
    for form in ALIGNMENTS:
        torch.manual_seed(args.seed)  # the same initial weights for both forms
        config = ShaSpecConfig(width=args.width, pos_size=args.patch, alignment=form)
        model = ShaSpec(config).train()
        out = model(rgir, ndsm, scenarios=("full", "missing_rgir"))
        _, terms = shaspec_loss(out["full"], out["missing_rgir"], label, "rgir", class_weights, alignment=form)
        shared = list(model.shared_encoder.parameters())
        task = terms["seg_full"] + terms["seg_miss"] + terms["aux"]
        print(f"alignment {form}: DAO {terms['align'].item():.3f}; gradient norm on the shared encoder: "
              f"alpha DAO {gradient_norm(config.alpha * terms['align'], shared):.3f}, "
              f"task loss {gradient_norm(task, shared):.3f}")


if __name__ == "__main__":
    data.exit_on_user_error(main)
