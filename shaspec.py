"""
ShaSpec: Multi-modal Learning with Missing Modality via Shared-Specific
Feature Modelling (Wang, Chen, Ma, Avery, Hull, Carneiro; CVPR 2023,
arXiv 2307.14126), the disentanglement method of DIS2's Table 1, adapted to
our two remote-sensing modalities.

Every modality m goes through one shared encoder (the same weights for all
modalities) and through its own specific encoder. The shared features r_m
are pulled towards each other by a distribution alignment objective (DAO),
the specific features s_m are kept apart by a domain classification
objective (DCO): a linear classifier must tell the modality from them. A
residual fusion composes each available modality's pair, f_m = r_m +
f_proj([r_m, s_m]); a missing modality's slot is filled with the shared
features of the available one, which DAO made a stand-in for its own:

    full          slot a: f_rgir   slot b: f_ndsm
    missing NDSM  slot a: f_rgir   slot b: r_rgir
    missing RGIR  slot a: r_ndsm   slot b: f_ndsm

Everything after the two slots is DIS2's HF baseline (dis2.FusionDecoder
without classwise attention): hierarchical fusion (DIS2 Eq. 7-8), a UNet
decoder with the fused features as skips, and the classifier, one stack for
every scenario with batch-norm running statistics per scenario. So ShaSpec
and HF differ only in how a missing modality is handled: HF puts zeros in
its slot, ShaSpec the available modality's shared features. The encoders
are dis2.Encoder at DIS2's widths and the composition runs at each of their
L levels, so every level of the fusion receives a composed feature or a
stand-in. Slot a is RGIR, slot b NDSM, as in DIS2.

Choices where the ShaSpec paper is silent, and every adaptation, are
commented where they are made and listed, with their reasons, in
docs/design.md ("ShaSpec, the comparison method of Table 1"). The paper's
symbols: r shared, s specific, f composed features, f_proj the projection
of the residual fusion. Shapes are given for a (B, 3, H, W) input; level i
has resolution H/2^i.
"""

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from dis2 import (ABLATIONS, DIS2, MODALITIES, OTHER, SCENARIOS, DIS2Config, Encoder, FusionDecoder,
                  ScenarioBatchNorm2d, exists)
from losses import at_least_fp32, segmentation_loss

SHASPEC_TERMS = ("seg_full", "seg_miss", "aux", "align", "domain")  # the keys of shaspec_loss's terms, in order
ALIGNMENTS = ("levels", "authors")  # ShaSpecConfig.alignment
# The ShaSpec variants train.py --ablation trains: DAO averaged over the levels (the pair counted once), and
# DAO as the authors' train_SS.py computes it, which pulls on the shared encoder about 7 times as hard at
# initialisation (docs/design.md).
SHASPEC_VARIANTS = {"shaspec": dict(alignment="levels"), "shaspec-authors": dict(alignment="authors")}


# -----------------------------------------------------------------------------
# Encoders


def statistics_per_modality(module, modalities):
    """Replaces every nn.BatchNorm2d of `module` by a ScenarioBatchNorm2d that
    keeps running statistics per modality (one scale and shift for all).
    The shared encoder normalises each modality's batch on its own in
    training (a missing scenario must not see the missing modality through
    batch statistics), so at evaluation each modality needs its own running
    statistics too; one set would blend an orthophoto's with a height
    model's. The authors' code gets the same from instance norm."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, ScenarioBatchNorm2d(child.num_features, modalities, child.momentum, child.eps))
        else:
            statistics_per_modality(child, modalities)
    return module


class SharedEncoder(nn.Module):
    """ShaSpec's shared encoder: a dis2.Encoder whose weights serve every
    modality. The modalities differ in their bands (RGIR 3, NDSM 1), so each
    has its own stem, a 1x1 convolution to a common band count, the widest
    modality's: a learnt band mixing, while every spatial filter stays shared
    (in the authors' code all four MRI modalities have one channel and need
    no stem)."""

    def __init__(self, in_channels, widths):
        super().__init__()
        bands = max(in_channels.values())
        # No bias: the encoder's batch norm removes a constant offset anyway.
        self.stems = nn.ModuleDict({m: nn.Conv2d(c, bands, 1, bias=False) for m, c in in_channels.items()})
        self.encoder = statistics_per_modality(Encoder(bands, widths), tuple(in_channels))

    def forward(self, image, modality):
        for module in self.encoder.modules():
            if isinstance(module, ScenarioBatchNorm2d):
                module.scenario = modality
        return self.encoder(self.stems[modality](image))  # L x (B, C_i, H/2^i, W/2^i)


class Composition(nn.Module):
    """ShaSpec's residual fusion of one modality's shared and specific
    features at one encoder level. One per level (the widths differ), shared
    by the modalities. f_proj is a 3x3 convolution without bias, normalisation
    or activation, as in the authors' code (a 3x3x3 one there); the paper calls
    it a linear projection, which a convolution is, over a neighbourhood."""

    def __init__(self, channels):
        super().__init__()
        self.project = nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False)  # f_proj

    def forward(self, shared, specific):
        # ShaSpec, residual fusion: f = r + f_proj([r, s]); the specific
        # features only correct the shared ones, which can stand in alone.
        return shared + self.project(torch.cat([shared, specific], dim=1))


# -----------------------------------------------------------------------------
# The model


@dataclass
class ShaSpecConfig:
    num_classes: int = 6  # the five ISPRS classes plus clutter
    rgir_channels: int = 3  # IR, R, G
    ndsm_channels: int = 1
    width: int = 32  # encoder channels at level 1, doubled per level, as DIS2
    # Fusion and decoder, HF's (DIS2Config's sizes, with its defaults):
    embed_dim: int | None = None  # transformer fusion (DIS2 Eq. 8); default 8 x width
    heads: int = 8
    depth: int = 2
    mlp_ratio: int = 4
    pos_size: int = 512  # positional embeddings are sized for this patch and interpolated otherwise
    class_width: int | None = None  # decoder channels per class (K of them); default width / 2
    z_channels: int | None = None  # channels of Z, the penultimate features; default width
    # Loss weights of ShaSpec's objective, the authors' (train_SS.py):
    alpha: float = 0.1  # distribution alignment (DAO)
    beta: float = 0.02  # domain classification (DCO)
    # DAO's form (alignment_loss): "levels", the L1 at each level averaged over the levels, the pair once;
    # "authors", the authors' cyclic sum over the modalities at the bottleneck (our pair twice).
    alignment: str = "levels"
    classwise: ClassVar[bool] = False  # no classwise attention (DIS2 Eq. 9-10): predict.py asks
    widths: tuple = field(init=False)

    def __post_init__(self):
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        hf = self.fusion_decoder_config()  # DIS2Config's rules fill the defaults
        self.widths, self.embed_dim = hf.widths, hf.embed_dim
        self.class_width, self.z_channels = hf.class_width, hf.z_channels

    def fusion_decoder_config(self):
        """The DIS2Config of DIS2's HF baseline at these sizes, whose fusion and decoder ShaSpec uses."""
        sizes = ("num_classes", "rgir_channels", "ndsm_channels", "width", "embed_dim", "heads", "depth",
                 "mlp_ratio", "pos_size", "class_width", "z_channels")
        return DIS2Config(**{name: getattr(self, name) for name in sizes}, **ABLATIONS["hf"])


class Encoded(NamedTuple):
    """What the encoders give for the modalities of one call, each computed once."""

    shared: dict  # modality -> L x (B, C_i, H_i, W_i): r, the shared encoder's features
    composed: dict  # modality -> L x (B, C_i, H_i, W_i): f = r + f_proj([r, s])
    specific_pooled: dict  # modality -> (B, C_L): s at level L, globally average-pooled
    domain_logits: dict  # modality -> (B, M): the domain classifier on specific_pooled


@dataclass
class ShaSpecOutput:
    """Everything one scenario produces; shaspec_loss reads what it needs.
    The dicts hold the scenario's available modalities only."""

    logits: torch.Tensor  # (B, K, H, W)
    z: torch.Tensor  # (B, C_z, H, W) penultimate features, as DIS2Output.z
    aux_logits: list  # L x (B, K, H, W), HF's decoder levels 1..L (DIS2 Eq. 13)
    attention: None  # always: no classwise attention
    shared: dict  # modality -> L x (B, C_i, H_i, W_i): r, for DAO
    specific_pooled: dict  # modality -> (B, C_L): pooled s
    domain_logits: dict  # modality -> (B, M): for DCO, class i is MODALITIES[i]


class ShaSpec(nn.Module):
    """model(rgir, ndsm) for the full scenario, model(rgir, None) when NDSM is
    missing, model(None, ndsm) when RGIR is missing; the same interface as dis2.DIS2."""

    def __init__(self, config=None):
        super().__init__()
        self.config = cfg = config or ShaSpecConfig()
        widths = cfg.widths
        in_channels = {"rgir": cfg.rgir_channels, "ndsm": cfg.ndsm_channels}
        self.shared_encoder = SharedEncoder(in_channels, widths)
        self.specific_encoders = nn.ModuleDict({m: Encoder(in_channels[m], widths) for m in MODALITIES})
        self.composition = nn.ModuleList([Composition(c) for c in widths])
        # On the deepest specific features, as the authors' classifier reads their bottleneck.
        self.domain_classifier = nn.Linear(widths[-1], len(MODALITIES))
        self.fusion_decoder = FusionDecoder(cfg.fusion_decoder_config(), tuple(SCENARIOS))

    check_inputs = DIS2.check_inputs  # the same checks and messages

    def forward(self, rgir=None, ndsm=None, scenarios=None):
        """Without `scenarios`: the one scenario the inputs imply (None marks
        the missing modality); returns a ShaSpecOutput. With `scenarios`, names
        from SCENARIOS: those scenarios from the same inputs, every encoder run
        once; returns {name: ShaSpecOutput}. Training asks for ("full",
        "missing_rgir") or ("full", "missing_ndsm"): ShaSpec's random
        modality dropout, drawn per batch by train.py."""
        missing = self.check_inputs(rgir, ndsm)
        if scenarios is None:
            scenario = next(s for s, m in SCENARIOS.items() if m == missing)
            return self.fuse_and_decode(self.encode(rgir, ndsm), scenario)
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown or missing:
            raise ValueError(
                f"scenarios must be names from {tuple(SCENARIOS)} and need both rgir and ndsm, "
                f"got {tuple(scenarios)} with {missing or 'no'} modality missing"
            )
        encoded = self.encode(rgir, ndsm)
        return {s: self.fuse_and_decode(encoded, s) for s in scenarios}

    def encode(self, rgir, ndsm):
        """Runs the shared and the specific encoder of every given modality,
        each modality as a batch of its own, and composes them at every level."""
        encoded = Encoded({}, {}, {}, {})
        for m, x in (("rgir", rgir), ("ndsm", ndsm)):
            if not exists(x):
                continue
            shared = encoded.shared[m] = self.shared_encoder(x, m)  # r_m
            specific = self.specific_encoders[m](x)  # s_m: L x (B, C_i, H/2^i, W/2^i)
            encoded.composed[m] = [compose(r, s) for compose, r, s in zip(self.composition, shared, specific)]
            encoded.specific_pooled[m] = specific[-1].mean(dim=(2, 3))  # (B, C_L)
            encoded.domain_logits[m] = self.domain_classifier(encoded.specific_pooled[m])  # (B, M)
        return encoded

    def slots(self, encoded, missing):
        """The two slots of one scenario, (a, b), each L features: an available
        modality's composed features, or for a missing modality the shared
        features that stand in for it."""
        features = dict(encoded.composed)
        if exists(missing):
            # ShaSpec, missing modality: its slot takes the available modalities'
            # shared features, the first one's (the authors' code) or their mean
            # (the alternative left in it); with two modalities both are the one
            # available modality's r.
            features[missing] = encoded.shared[OTHER[missing]]
        return [features[m] for m in MODALITIES]

    def fuse_and_decode(self, encoded, scenario):
        """HF's fusion and decoder on one scenario's slots, as a batch of its
        own with its own batch-norm statistics (see DIS2.fuse_and_decode)."""
        missing = SCENARIOS[scenario]
        # The pooled fused features are DIS2's distillation inputs; ShaSpec has no use for them.
        logits, z, aux_logits, _, _, attention = self.fusion_decoder(*self.slots(encoded, missing), scenario)
        available = lambda d: {m: v for m, v in d.items() if m != missing}
        return ShaSpecOutput(logits, z, aux_logits, attention, available(encoded.shared),
                             available(encoded.specific_pooled), available(encoded.domain_logits))


# -----------------------------------------------------------------------------
# The objective


def alignment_loss(shared_a, shared_b, form="levels"):
    """ShaSpec's distribution alignment objective for two modalities: L1
    between their shared features, per position and channel (the authors'
    nn.L1Loss on feature maps, not on pooled vectors: a stand-in fills the slot
    position by position). `form` "levels": at every level, averaged over the
    levels, the pair counted once, so that the loss keeps the scale of the
    authors' single level; "authors": as the authors' train_SS.py, at the
    bottleneck only, summed over the cycle of modalities m -> m+1 (mod M),
    which for our two modalities counts the pair twice."""
    if form == "authors":
        # ShaSpec, DAO as the authors compute it: l_DAO = sum_m mean |r_L^m - r_L^(m+1 mod M)|, M = 2
        shared = (at_least_fp32(shared_a[-1]), at_least_fp32(shared_b[-1]))
        return sum(F.l1_loss(shared[m], shared[(m + 1) % 2]) for m in range(2))
    # ShaSpec, DAO: l_DAO = 1/L sum_i mean |r_i^rgir - r_i^ndsm|
    return sum(F.l1_loss(at_least_fp32(a), at_least_fp32(b)) for a, b in zip(shared_a, shared_b)) / len(shared_a)


def domain_loss(domain_logits):
    """ShaSpec's domain classification objective: cross entropy of the domain
    classifier's logits against the modality each sample's specific features
    came from (class i is MODALITIES[i]), averaged over all the samples."""
    logits = at_least_fp32(torch.cat([domain_logits[m] for m in MODALITIES]))  # (M*B, M)
    labels = torch.cat([torch.full((len(domain_logits[m]),), i, device=logits.device)
                        for i, m in enumerate(MODALITIES)])
    # ShaSpec, DCO: l_DCO = -mean_j log softmax(f_dom(pool(s_j)))[modality of j]
    return F.cross_entropy(logits, labels)


def shaspec_loss(full, miss, target, missing, class_weights=None, alpha=ShaSpecConfig.alpha, beta=ShaSpecConfig.beta,
                 alignment=ShaSpecConfig.alignment):
    """ShaSpec's objective for one batch: `full` and `miss` are the
    ShaSpecOutput of the full scenario and of the scenario where `missing`
    ("rgir" or "ndsm") is missing. The task loss is ours, as losses.dis2_loss
    computes it for HF: the segmentation loss of both scenarios plus the
    auxiliary loss of HF's decoder levels (DIS2 Eq. 13). DAO and DCO are taken
    on the full scenario, the only one with both modalities (the missing
    scenario's specific features are the same tensors). Returns the total and
    a dict of the terms, keys SHASPEC_TERMS."""
    if set(full.shared) != set(MODALITIES) or set(miss.shared) != {OTHER[missing]}:
        raise ValueError(f"shaspec_loss needs the full scenario's output, then that of the scenario "
                         f"with {missing} missing")
    seg = lambda logits: segmentation_loss(logits, target, class_weights)
    terms = dict(seg_full=seg(full.logits), seg_miss=seg(miss.logits))
    # DIS2 Eq. 13 on HF's decoder, so that the decoder trains as HF's does
    terms["aux"] = sum(seg(y) for out in (full, miss) for y in out.aux_logits)
    terms["align"] = alignment_loss(full.shared["rgir"], full.shared["ndsm"], alignment)
    terms["domain"] = domain_loss(full.domain_logits)
    # ShaSpec, total objective: l = l_task + alpha l_DAO + beta l_DCO
    total = terms["seg_full"] + terms["seg_miss"] + terms["aux"] + alpha * terms["align"] + beta * terms["domain"]
    return total, terms
