"""DIS2: Disentanglement Meets Distillation with Classwise Attention for Robust Remote Sensing
Segmentation under Missing Modalities (Kieu, Nguyen, Wiliem, Fookes, Sridharan; WACV 2026 workshop).

Read this file beside the paper; docs/annotated/dis2.html shows its notes, with the equations
typeset, beside the code (python tools/annotate.py writes it), and the authors' code is at
github.com/nhikieu/DIS2. Two modalities, an IRRG orthophoto (RGIR, 3 bands) and a normalised height
model (NDSM, 1 band), are each encoded twice (Eq. 1): a Distinct encoder keeps what is specific to
the modality, a Supplement encoder learns what the *other* modality would have contributed, so that
it can stand in when that modality is missing (Figure 2):

    full          RGIR_Dist + NDSM_Dist
    missing NDSM  RGIR_Dist + RGIR_Supp   (RGIR_Supp fills the NDSM slot)
    missing RGIR  NDSM_Supp + NDSM_Dist   (NDSM_Supp fills the RGIR slot)

The two active branches are fused level by level (hierarchical hybrid fusion: convolutions at levels
1-3, Eq. 7; a transformer with a fusion token at level 4, Eq. 8). Classwise attention (Eq. 9-10)
gives every class its own view of the deepest fused features, and a per-class decoder (Eq. 11)
climbs back to full resolution, where the classes' decoders are merged into the penultimate features
Z and the logits (Eq. 12). The losses (Eq. 2-6, 13-14) live in losses.py.

The file reads top-down: building blocks, encoder (Eq. 1), fusion (Eq. 7-8), classwise attention
(Eq. 9-10), classwise decoder (Eq. 11-12), heads (Eq. 13-14), the FusionDecoder that chains fusion,
attention and decoder for one scenario, then the config and the DIS2 model that wires them together.
Shapes are given for a (B, 3, H, W) input; level i has resolution $H/2^i$.

Every scenario goes through its FusionDecoder as a batch of its own, so in training batch norm never
mixes a missing scenario with the full one (which would let it see the missing modality). One
FusionDecoder serves all scenarios (layout "shared") or each scenario has its own ("per-scenario",
as in the authors' code); DIS2Config.layout chooses."""

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

MODALITIES = ("rgir", "ndsm")
OTHER = {"rgir": "ndsm", "ndsm": "rgir"}
# Scenario name -> the missing modality (Figure 2).
SCENARIOS = {"full": None, "missing_rgir": "rgir", "missing_ndsm": "ndsm"}
LEVELS = 4  # L in the paper: encoder levels at H/2, H/4, H/8, H/16
STRIDE = 2**LEVELS  # H and W must be multiples of this
LAYOUTS = ("shared", "per-scenario")  # DIS2Config.layout


def exists(x):
    return x is not None


def upsample(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# -----------------------------------------------------------------------------
# Building blocks


class ConvBNReLU(nn.Sequential):
    """3x3 (or k x k) convolution, batch norm, ReLU; `groups` keeps classes apart. `norm` makes the
    batch norm from the channel count (ScenarioBatchNorm2d after the encoders)."""

    def __init__(self, c_in, c_out, kernel=3, stride=1, groups=1, norm=nn.BatchNorm2d):
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups,
                                   bias=False), norm(c_out), nn.ReLU(inplace=True))


class ScenarioBatchNorm2d(nn.Module):
    """Batch norm with one scale and shift but running statistics per scenario. Fusion and decoder
    see differently distributed features in each scenario (with a modality missing, one slot holds a
    Supplement branch, or zeros in HF). One set of running statistics would blend them, so at
    evaluation a missing scenario would be normalised with statistics gathered partly from the full
    scenario, that is from the missing modality, and its scores would swing with the scenarios of
    the last training batches. Each scenario therefore keeps its own; `scenario` is set by
    FusionDecoder.forward."""

    def __init__(self, channels, scenarios, momentum=0.1, eps=1e-5):  # nn.BatchNorm2d's defaults
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        for s in scenarios:
            self.register_buffer(f"running_mean_{s}", torch.zeros(channels))
            self.register_buffer(f"running_var_{s}", torch.ones(channels))
        self.scenarios, self.momentum, self.eps, self.scenario = (tuple(scenarios), momentum, eps,
                                                                  scenarios[0])

    @property
    def running_mean(self):  # of the current scenario
        return getattr(self, f"running_mean_{self.scenario}")

    @property
    def running_var(self):
        return getattr(self, f"running_var_{self.scenario}")

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class AttentionPool(nn.Module):
    """Learnable pooling (B, C, H, W) -> (B, C): a 1x1 convolution scores every position, a softmax
    over positions turns the scores into weights. Used to make compact embeddings for Eq. 2, Eq. 4
    and Eq. 8 (the paper: "to reduce the computational burden, original features are passed through
    attention pooling")."""

    def __init__(self, channels):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        weights = self.score(x).flatten(2).softmax(dim=-1)  # (B, 1, HW)
        return torch.bmm(x.flatten(2), weights.transpose(1, 2)).squeeze(-1)  # (B, C)


# -----------------------------------------------------------------------------
# Encoders (Eq. 1)


class Encoder(nn.Module):
    """UNet-style convolutional encoder: level 1 is a stride-2 stem and a 3x3 convolution (H/2),
    levels 2-4 are max-pool + double convolution, as in the UNet contracting path. Widths w, 2w, 4w,
    8w."""

    def __init__(self, in_channels, widths):
        super().__init__()
        stem = nn.Sequential(ConvBNReLU(in_channels, widths[0], stride=2),
                             ConvBNReLU(widths[0], widths[0]))
        downs = [nn.Sequential(nn.MaxPool2d(2), ConvBNReLU(c_in, c_out), ConvBNReLU(c_out, c_out))
                 for c_in, c_out in zip(widths[:-1], widths[1:])]
        self.levels = nn.ModuleList([stem, *downs])

    def forward(self, image):
        features = []
        x = image
        for level in self.levels:
            x = level(x)
            features.append(x)  # level i: (B, C_i, H/2^i, W/2^i)
        return features


# -----------------------------------------------------------------------------
# Hierarchical hybrid fusion (Eq. 7-8)


class ConvFusion(nn.Module):
    r"""One level i in {1, 2, 3} of the hierarchical fusion, with the residual link from the level
    above (the paper: "residual connections are used to link adjacent levels"); $\mathbf{F}_{i-1}$
    is halved in size and projected to $C_i$."""

    def __init__(self, channels, prev_channels, norm):
        super().__init__()
        self.phi = ConvBNReLU(2 * channels, channels, norm=norm)
        self.from_prev = (
            nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(prev_channels, channels, 1, bias=False),
                          norm(channels))
            if exists(prev_channels) else None)

    def forward(self, a, b, prev=None):
        # Eq. 7: $\mathbf{F}_i = \phi_i(\mathrm{Concat}(\mathbf{a}_i, \mathbf{b}_i))$
        fused = self.phi(torch.cat([a, b], dim=1))  # (B, C_i, H_i, W_i)
        if exists(self.from_prev):
            fused = fused + self.from_prev(prev)
        return fused


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (multi-head self-attention + MLP)."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = (self.qkv(self.norm1(x)).view(B, N, 3, self.heads, D // self.heads)
                   .permute(2, 0, 3, 1, 4))
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        x = x + self.proj(attended.transpose(1, 2).reshape(B, N, D))
        return x + self.mlp(self.norm2(x))


class TransformerFusion(nn.Module):
    r"""Level L of the hierarchical fusion. The sequence is the fusion token $\mathbf{t}^*$, the
    $hw$ tokens of $\mathbf{a}_L$, the $hw$ tokens of $\mathbf{b}_L$ and one token for the
    attention-pooled $\mathbf{F}_{L-1}$: $2hw + 2$ tokens. Positional embeddings are learnt on the
    grid of a `pos_size` patch and interpolated for other sizes; each slot (a, b) has its own, so
    the transformer knows which is which."""

    def __init__(self, channels, prev_channels, dim, heads, depth, mlp_ratio, pos_size):
        super().__init__()
        grid = pos_size // STRIDE
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, dim))  # t*
        self.pos_embed = nn.Parameter(torch.zeros(2, dim, grid, grid))  # slot a, slot b
        self.prev_embed = nn.Parameter(torch.zeros(1, 1, dim))  # position of the pooled F_{L-1}
        self.proj_a = nn.Conv2d(channels, dim, 1)
        self.proj_b = nn.Conv2d(channels, dim, 1)
        self.pool_prev = AttentionPool(prev_channels)
        self.proj_prev = nn.Linear(prev_channels, dim)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Conv2d(2 * dim, channels, 1)
        for p in (self.fusion_token, self.pos_embed, self.prev_embed):
            nn.init.trunc_normal_(p, std=0.02)

    def positions(self, h, w):
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # (2, h*w, dim)

    def forward(self, a, b, prev):
        B, _, h, w = a.shape
        pos = self.positions(h, w)
        tokens_a = self.proj_a(a).flatten(2).transpose(1, 2) + pos[0]  # (B, h*w, dim)
        tokens_b = self.proj_b(b).flatten(2).transpose(1, 2) + pos[1]
        token_prev = (self.proj_prev(self.pool_prev(prev)).unsqueeze(1)
                      + self.prev_embed)  # (B, 1, dim)
        # Eq. 8: $\mathbf{F}_L = \mathcal{T}(\mathrm{Concat}(\mathbf{t}^*, \mathbf{a}_L,
        #   \mathbf{b}_L), \mathbf{F}_{L-1})$
        tokens = torch.cat([self.fusion_token.expand(B, -1, -1), tokens_a, tokens_b, token_prev],
                           dim=1)
        tokens = self.norm(self.blocks(tokens))  # (B, 2*h*w + 2, dim)
        fusion_token = tokens[:, 0]  # (B, dim): the compact level-L representation used in Eq. 4
        ab = (tokens[:, 1 : 1 + 2 * h * w].reshape(B, 2, h, w, -1).permute(0, 1, 4, 2, 3)
              .reshape(B, -1, h, w))
        return self.proj_out(ab), fusion_token  # (B, C_L, h, w), (B, dim)


class HierarchicalFusion(nn.Module):
    """Fuses the two active branches at every level: convolutions at levels 1..L-1 (Eq. 7) with
    residual links between adjacent levels, a transformer at level L (Eq. 8). Also returns the
    fusion token; `pooled` gives the compact fused features distilled in Eq. 4."""

    def __init__(self, widths, dim, heads, depth, mlp_ratio, pos_size, norm):
        super().__init__()
        self.conv_levels = nn.ModuleList(
            [ConvFusion(c, prev, norm) for c, prev in zip(widths[:-1], [None, *widths[:-2]])])
        self.pools = nn.ModuleList([AttentionPool(c) for c in widths[:-1]])
        self.transformer = TransformerFusion(widths[-1], widths[-2], dim, heads, depth, mlp_ratio,
                                             pos_size)

    def forward(self, a, b):
        fused = []
        prev = None
        for level, a_i, b_i in zip(self.conv_levels, a, b):
            prev = level(a_i, b_i, prev)
            fused.append(prev)
        fused_last, fusion_token = self.transformer(a[-1], b[-1], prev)
        return [*fused, fused_last], fusion_token

    def pooled(self, fused, fusion_token):
        r"""Pooled $\mathbf{F}_1, \dots, \mathbf{F}_{L-1}$, then the fusion token: L x (B, D_i)."""
        return [pool(f) for pool, f in zip(self.pools, fused)] + [fusion_token]


# -----------------------------------------------------------------------------
# Classwise feature learning module (Eq. 9-12)


class ClasswiseAttention(nn.Module):
    r"""One learnable query $\mathbf{q}_k$ per class scores every position of $\mathbf{F}_L$."""

    def __init__(self, num_classes, channels):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(num_classes, channels))  # q_k
        nn.init.trunc_normal_(self.queries, std=0.02)

    def forward(self, f_last):
        B, C, h, w = f_last.shape
        # Eq. 9: $\alpha_k = \mathrm{soft}\left(\frac{\mathbf{q}_k \mathbf{F}_L}{\sqrt{C}}\right)$
        scores = torch.einsum("kc,bcn->bkn", self.queries, f_last.flatten(2)) / math.sqrt(C)
        alpha = scores.softmax(dim=-1).view(B, -1, h, w)  # (B, K, h, w), softmax over the h*w
        # Eq. 10: $\mathbf{M}_k = \alpha_k \mathbf{F}_L$. The softmax weights sum to 1, so we scale
        # by h*w: a uniform $\alpha_k$ then leaves $\mathbf{F}_L$ unchanged at any patch size.
        dtype = torch.promote_types(f_last.dtype, torch.float32)  # fp32 under autocast, see Decoder
        m = (h * w) * alpha.to(dtype).unsqueeze(2) * f_last.to(dtype).unsqueeze(1)  # (B,K,C,h,w)
        return m.flatten(1, 2), alpha  # (B, K*C, h, w): class k owns channels [k*C, (k+1)*C)


class DecoderLevel(nn.Module):
    r"""$\phi_k^l([\mathbf{F}_l, \mathrm{Up}(\mathbf{D}_k^{l+1})])$ for all classes k at once. The
    first convolution over the concatenation is split into its two halves: the half that reads
    $\mathbf{F}_l$ is one dense convolution to K*d channels ($\mathbf{F}_l$ is shared by all
    classes, so it is never copied K times), the half that reads $\mathbf{D}_k^{l+1}$ is a grouped
    convolution, so class k only sees its own decoder. With groups=1 this is an ordinary UNet
    decoder level."""

    def __init__(self, skip_channels, width, groups, norm):
        super().__init__()
        self.from_skip = nn.Conv2d(skip_channels, width, 3, padding=1, bias=False)
        self.from_below = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.norm = nn.Sequential(norm(width), nn.ReLU(inplace=True))
        self.refine = ConvBNReLU(width, width, groups=groups, norm=norm)

    def forward(self, skip, below):
        x = self.from_skip(skip) + self.from_below(upsample(below, skip.shape[-2:]))
        return self.refine(self.norm(x))


class Decoder(nn.Module):
    r"""The classwise decoder (Eq. 11-12) when groups=K: each class k has its own weights
    $\phi_k^l$, kept apart by grouped convolutions over a class axis laid out in the channels (class
    k owns channels [k*d, (k+1)*d)). With groups=1 it is the plain UNet decoder of the HF and
    HF+DLKD variants. Each level also emits an auxiliary prediction (Eq. 13): with groups=K, class
    k's logit comes from class k's decoder alone."""

    def __init__(self, in_channels, widths, width, num_classes, z_channels, groups, norm):
        super().__init__()
        self.first = ConvBNReLU(in_channels, width, groups=groups, norm=norm)
        self.levels = nn.ModuleList([DecoderLevel(c, width, groups, norm) for c in widths[:-1]])
        self.aux_heads = nn.ModuleList(
            [nn.Conv2d(width, num_classes, 1, groups=groups) for _ in widths])
        self.merge = ConvBNReLU(width, z_channels, kernel=1, norm=norm)

    def forward(self, x, fused, size):
        # Eq. 11, l = L: $\mathbf{D}_k^L = \phi_k^L(\mathbf{M}_k)$
        # In fp32 under autocast: $\mathbf{M}_k$ is $\mathbf{F}_L$ scaled by $hw$ (Eq. 10), beyond
        # fp16's range (65504) at 512x512 once $\alpha_k |\mathbf{F}_L| > 64$; the batch norm after
        # this convolution brings it back.
        with torch.autocast(x.device.type, enabled=False):
            d = self.first(x.to(torch.promote_types(x.dtype, torch.float32)))  # (B, K*d, h, w)
        decoded = [d]
        for level, f in zip(reversed(self.levels), reversed(fused[:-1])):
            # Eq. 11, l < L: $\mathbf{D}_k^l = \phi_k^l([\mathbf{F}_l,
            #   \mathrm{Up}(\mathbf{D}_k^{l+1})])$
            d = level(f, d)  # (B, K*d, H_l, W_l)
            decoded.append(d)
        decoded.reverse()  # level 1 first
        # Eq. 12: $\mathbf{Z} = \phi(\mathrm{Concat}(\mathbf{D}_1^1, \dots, \mathbf{D}_K^1))$.
        # $\mathbf{D}^1$ already holds the classes side by side in its channels; $\phi$ is a 1x1
        # convolution at H/2, and the caller upsamples $\mathbf{Z}$ to H.
        z_half = self.merge(decoded[0])  # (B, C_z, H/2, W/2)
        aux_logits = [upsample(head(d), size) for head, d in zip(self.aux_heads, decoded)]
        return z_half, aux_logits


class UnimodalHead(nn.Module):
    r"""Segmentation straight from one Distinct encoder, for $\mathcal{L}_{\mathrm{uni}}^m$ (Eq.
    14): a 1x1 convolution per level, summed at H/2 and upsampled to H."""

    def __init__(self, widths, num_classes):
        super().__init__()
        self.per_level = nn.ModuleList([nn.Conv2d(c, num_classes, 1) for c in widths])

    def forward(self, features, size):
        logits = sum(upsample(head(x), features[0].shape[-2:])
                     for head, x in zip(self.per_level, features))
        return upsample(logits, size)


class FusionDecoder(nn.Module):
    """Everything after the encoders for one scenario: hierarchical fusion of its two active
    branches (Eq. 7-8), classwise attention (Eq. 9-10), the per-class decoder and the classifier
    (Eq. 11-12). Without CW (the HF variants) the attention is skipped and the decoder is a plain
    UNet one. DIS2 holds one of these for all scenarios or one per scenario (the `layout` of
    DIS2Config); its batch norms keep running statistics for each of the `scenarios` it serves
    (ScenarioBatchNorm2d)."""

    def __init__(self, cfg, scenarios):
        super().__init__()
        K, widths = cfg.num_classes, cfg.widths
        norm = functools.partial(ScenarioBatchNorm2d, scenarios=scenarios)
        self.fusion = HierarchicalFusion(widths, cfg.embed_dim, cfg.heads, cfg.depth, cfg.mlp_ratio,
                                         cfg.pos_size, norm)
        if cfg.classwise:
            self.classwise_attention = ClasswiseAttention(K, widths[-1])
            self.decoder = Decoder(K * widths[-1], widths, K * cfg.class_width, K, cfg.z_channels,
                                   K, norm)
        else:
            self.classwise_attention = None
            self.decoder = Decoder(widths[-1], widths, K * cfg.class_width, K, cfg.z_channels, 1,
                                   norm)
        self.classifier = nn.Conv2d(cfg.z_channels, K, 1)

    def forward(self, a, b, scenario, distill=None):
        """a, b: the L features of slot a (RGIR) and slot b (NDSM) of `scenario`. Returns logits, Z,
        the auxiliary logits, the pooled fused features of Eq. 4 (the fusion token last) and alpha
        (None without CW). The pooled features are computed for `distill` "student" (with gradient)
        or "teacher" (without: sg(.) of Eq. 4); else they are None, as no loss reads them. An output
        that carries gradient but enters no loss would stall DistributedDataParallel, which waits
        for its gradient."""
        for module in self.modules():
            if isinstance(module, ScenarioBatchNorm2d):
                module.scenario = scenario
        size = tuple(2 * s for s in a[0].shape[-2:])  # the input's H, W
        fused, fusion_token = self.fusion(a, b)
        fused_pooled = None
        if distill == "student":
            fused_pooled = self.fusion.pooled(fused, fusion_token)
        elif distill == "teacher":
            with torch.no_grad():
                fused_pooled = self.fusion.pooled(fused, fusion_token.detach())
        if exists(self.classwise_attention):
            m, attention = self.classwise_attention(fused[-1])
        else:
            m, attention = fused[-1], None
        z_half, aux_logits = self.decoder(m, fused, size)
        z = upsample(z_half, size)  # (B, C_z, H, W)
        # Eq. 12: the final segmentation is a 1x1 convolution of Z. Bilinear
        # upsampling and a 1x1 convolution commute, so it runs at H/2 (the
        # same logits for a quarter of the work and memory).
        logits = upsample(self.classifier(z_half), size)
        return logits, z, aux_logits, fused_pooled, fusion_token, attention


# -----------------------------------------------------------------------------
# The model


@dataclass
class DIS2Config:
    num_classes: int = 6  # the five ISPRS classes plus clutter
    rgir_channels: int = 3  # IR, R, G
    ndsm_channels: int = 1
    width: int = 32  # encoder channels at level 1, doubled per level (the authors' width)
    embed_dim: int | None = None  # transformer fusion (Eq. 8); default 8 x width (256, authors')
    heads: int = 8
    depth: int = 2
    mlp_ratio: int = 4
    pos_size: int = 512  # positional embeddings are sized for this patch and interpolated otherwise
    class_width: int | None = None  # channels of each D_k (Eq. 11); default width / 2 (16)
    z_channels: int | None = None  # channels of Z (Eq. 12); default: width
    classwise: bool = True  # CW: classwise attention and per-class decoder (Eq. 9-12)
    dlkd: bool = True  # DLKD: Supplement encoders, orthogonal and distillation losses (Eq. 1-6)
    # "shared": one fusion, classwise attention and decoder serve every scenario
    # (our reading of the paper's Figure 2); "per-scenario": each scenario has
    # its own (the authors' code: full_fuse, miss_rgb_fuse, miss_ndsm_fuse).
    layout: str = "shared"
    # The levels of each Distinct/Supplement pair that the orthogonal loss (Eq. 2) constrains,
    # from level 1: None, all L (the paper); 3 with the authors' recipe (train.py --recipe
    # authors). Only these are pooled.
    orth_levels: int | None = None
    widths: tuple = field(init=False)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        self.widths = tuple(self.width * 2**i for i in range(LEVELS))
        # --width scales the whole model: the defaults of the other sizes follow it.
        self.embed_dim = self.embed_dim or 8 * self.width
        self.class_width = self.class_width or max(self.width // 2, 1)
        self.z_channels = self.z_channels or self.width


# Table 2 of the paper: the four variants of the ablation.
ABLATIONS = {
    "hf": dict(classwise=False, dlkd=False),
    "hf+cw": dict(classwise=True, dlkd=False),
    "hf+dlkd": dict(classwise=False, dlkd=True),
    "dis2": dict(classwise=True, dlkd=True),
}


@dataclass
class DIS2Output:
    """Everything one scenario produces; the losses read what they need."""

    logits: torch.Tensor  # (B, K, H, W)
    z: torch.Tensor  # (B, C_z, H, W) penultimate features (Eq. 12)
    aux_logits: list  # L x (B, K, H, W), decoder levels 1..L (Eq. 13)
    fused_pooled: list | None  # DLKD: L x (B, D_i): pooled F_1..F_{L-1}, t* (Eq. 4; full: no grad)
    fusion_token: torch.Tensor  # (B, embed_dim) t* after the transformer (Eq. 8)
    attention: torch.Tensor | None  # (B, K, H/16, W/16) alpha_k (Eq. 9); None without CW
    branch_pooled: dict  # DLKD, missing: "<m>_dist", "<m>_supp" -> orth_levels x (B, C_i) (Eq. 2)
    uni_logits: dict  # modality -> (B, K, H, W) from its Distinct encoder (L_uni, Eq. 14)


class DIS2(nn.Module):
    """model(rgir, ndsm) for the full scenario, model(rgir, None) when NDSM is missing, model(None,
    ndsm) when RGIR is missing."""

    def __init__(self, config=None):
        super().__init__()
        self.config = cfg = config or DIS2Config()
        K, widths = cfg.num_classes, cfg.widths
        in_channels = {"rgir": cfg.rgir_channels, "ndsm": cfg.ndsm_channels}
        branches = ("dist", "supp") if cfg.dlkd else ("dist",)
        # $f_{\mathrm{Dist}}^m$ and $f_{\mathrm{Supp}}^m$ for each modality m (Eq. 1)
        self.encoders = nn.ModuleDict({f"{m}_{kind}": Encoder(in_channels[m], widths)
                                       for m in MODALITIES for kind in branches})
        self.branch_pools = nn.ModuleDict(
            {name: nn.ModuleList([AttentionPool(c) for c in widths]) for name in self.encoders}
            if cfg.dlkd else {})
        self.uni_heads = nn.ModuleDict({m: UnimodalHead(widths, K) for m in MODALITIES})
        stacks = ({"shared": tuple(SCENARIOS)} if cfg.layout == "shared"
                  else {s: (s,) for s in SCENARIOS})
        self.fusion_decoders = nn.ModuleDict(
            {name: FusionDecoder(cfg, scenarios) for name, scenarios in stacks.items()})

    def fusion_decoder(self, scenario):
        """The fusion, classwise attention and decoder that serve `scenario`."""
        return self.fusion_decoders["shared" if self.config.layout == "shared" else scenario]

    def check_inputs(self, rgir, ndsm):
        """Returns the missing modality (None, "rgir" or "ndsm"); ValueError on bad input."""
        if rgir is None and ndsm is None:
            raise ValueError("DIS2 needs at least one modality: "
                             "pass rgir (B, 3, H, W) and/or ndsm (B, 1, H, W)")
        shapes = []
        for name, x, channels in (("rgir", rgir, self.config.rgir_channels),
                                  ("ndsm", ndsm, self.config.ndsm_channels)):
            if x is None:
                continue
            if x.dim() != 4 or x.shape[1] != channels:
                raise ValueError(
                    f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")
            H, W = x.shape[-2:]
            if H % STRIDE or W % STRIDE:
                raise ValueError(
                    f"{name} height and width must be multiples of {STRIDE} (the encoders halve "
                    f"them {LEVELS} times), got {H}x{W}: pad or crop the input")
            shapes.append((x.shape[0], H, W))
        if len(shapes) == 2 and shapes[0] != shapes[1]:
            raise ValueError("rgir and ndsm must match in batch size, height and width, "
                             f"got {shapes[0]} and {shapes[1]}")
        return "rgir" if rgir is None else "ndsm" if ndsm is None else None

    def forward(self, rgir=None, ndsm=None, scenarios=None):
        """Without `scenarios`: the one scenario the inputs imply (None marks the missing modality);
        returns a DIS2Output. With `scenarios`, names from SCENARIOS: those scenarios from the same
        inputs, every encoder run once however many scenarios use it; returns {name: DIS2Output}.
        Training asks for ("full", "missing_rgir") or ("full", "missing_ndsm"), the scenario mask of
        the paper's Section 3: RGIR_Dist and NDSM_Dist serve both scenarios and one Supplement
        encoder runs."""
        missing = self.check_inputs(rgir, ndsm)
        if scenarios is None:
            scenario = next(s for s, m in SCENARIOS.items() if m == missing)
            features, uni_logits = self.encode(rgir, ndsm,
                                               supplements=[OTHER[missing]] if missing else [])
            return self.fuse_and_decode(features, uni_logits, scenario)
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown or missing:
            raise ValueError(
                f"scenarios must be names from {tuple(SCENARIOS)} and need both rgir and ndsm, "
                f"got {tuple(scenarios)} with {missing or 'no'} modality missing")
        supplements = [OTHER[SCENARIOS[s]] for s in scenarios if SCENARIOS[s]]
        features, uni_logits = self.encode(rgir, ndsm, supplements)
        return {s: self.fuse_and_decode(features, uni_logits, s) for s in scenarios}

    def encode(self, rgir, ndsm, supplements):
        """Runs the Distinct encoder of every given modality and the Supplement encoders of the
        modalities in `supplements` (when DLKD is on). Returns name -> L features, and the unimodal
        logits of each Distinct encoder (L_uni, Eq. 14)."""
        images = {"rgir": rgir, "ndsm": ndsm}
        size = next(x for x in images.values() if exists(x)).shape[-2:]
        features, uni_logits = {}, {}
        # Eq. 1: $\begin{array}{l} \{\mathbf{x}_i^m\}_{i=1}^{L} = f_{\mathrm{Dist}}^m(\mathbf{I}^m),
        #   \\ \{\mathbf{x}'^m_i\}_{i=1}^{L} = f_{\mathrm{Supp}}^m(\mathbf{I}^m) \end{array}$
        for m, x in images.items():
            if exists(x):
                features[f"{m}_dist"] = self.encoders[f"{m}_dist"](x)
                uni_logits[m] = self.uni_heads[m](features[f"{m}_dist"], size)
        for m in supplements if self.config.dlkd else []:
            features[f"{m}_supp"] = self.encoders[f"{m}_supp"](images[m])
        return features, uni_logits

    def slots(self, features, missing):
        """The branches of one scenario (Figure 2) as (a, b), each L features. Slot a is the RGIR
        slot, slot b the NDSM slot; when a modality is missing, the available modality's Supplement
        branch fills its slot. Without DLKD (the HF baselines) there is no Supplement branch and the
        missing slot holds zeros."""
        names = {"rgir": "rgir_dist", "ndsm": "ndsm_dist"}
        if exists(missing):
            names[missing] = f"{OTHER[missing]}_supp"
        present = {m: features[name] for m, name in names.items() if name in features}
        reference = next(iter(present.values()))
        return [present.get(m, [torch.zeros_like(x) for x in reference]) for m in MODALITIES]

    def fuse_and_decode(self, features, uni_logits, scenario):
        """Fuses and decodes one scenario. Each scenario runs through fusion and decoder on its own
        batch, never concatenated with another: in training, batch norm normalises it with its own
        statistics, so a missing scenario cannot see the missing modality through statistics shared
        with the full scenario, and the stop-gradient of Eq. 4-5 holds (no gradient reaches an
        encoder that only the teacher uses). Its batch norms also keep running statistics of their
        own for evaluation."""
        missing = SCENARIOS[scenario]
        # Eq. 4 distils the full scenario (the teacher) into a missing one (the student).
        distill = ("student" if exists(missing) else "teacher") if self.config.dlkd else None
        logits, z, aux_logits, fused_pooled, fusion_token, attention = (
            self.fusion_decoder(scenario)(
                *self.slots(features, missing), scenario, distill))
        # The Distinct/Supplement pair of the available modality, pooled for Eq. 2 at the levels it
        # constrains.
        pair = ((f"{OTHER[missing]}_dist", f"{OTHER[missing]}_supp")
                if exists(missing) and self.config.dlkd else ())
        levels = slice(self.config.orth_levels)
        branch_pooled = {name: [pool(x) for pool, x in zip(self.branch_pools[name][levels],
                                                           features[name][levels])]
                         for name in pair}
        uni = {m: y for m, y in uni_logits.items() if m != missing}
        return DIS2Output(logits, z, aux_logits, fused_pooled, fusion_token, attention,
                          branch_pooled, uni)
