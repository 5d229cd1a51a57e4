"""
The reproduction's statistics: scores recomputed from per-tile confusion
matrices under either clutter protocol, paired differences over seeds, their
95% intervals over seeds (Student t) and over seeds and test tiles, the
verdicts, and the paper's claims (docs/reproduction.md, "How a difference is
decided").

A difference between two variants is paired twice: the same seeds (each
seed's runs share their patches, scenarios and initial weights' seed) and the
same test tiles. Two sources of noise are in it: training (another seed,
another model) and the finite test set (other tiles, other scores). The
Student-t interval over the per-seed differences covers the first; a
bootstrap over the test tiles, resampled jointly for every run compared,
gives the standard error of the mean difference from the second. The
interval over both adds the two variances and keeps Student's t with n - 1
degrees of freedom: mean ± t(n-1) sqrt(se_seeds^2 + se_tiles^2). A claim
holds or fails only where that interval excludes 0.
"""

import warnings
from dataclasses import dataclass

import numpy as np

from data import CLASSES
from evaluate import SCORED

LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000  # of the test tiles; the bootstrap's own error on a standard error is then about 1.6%
BOOTSTRAP_SEED = 0
# Clutter is 0.4% of the synthetic training pixels and not a class of the authors' code (5 classes): with
# "ignored", reference clutter pixels are left out of the confusion (a prediction of clutter elsewhere still
# counts against the class it missed).
PROTOCOLS = {"counted": "clutter reference pixels counted", "ignored": "clutter reference pixels ignored"}
CLUTTER = CLASSES.index("clutter")
SCORED_INDEX = [CLASSES.index(c) for c in SCORED]
# Two-sided 95% quantiles of Student's t, t(0.975, df), df = 1..30 (scipy.stats.t.ppf(0.975, df);
# tests/test_stats.py checks them against the integral of the density).
T_QUANTILES = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
               2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
               2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile(df):
    """t(0.975, df): the table up to 30 degrees of freedom, then the Cornish-Fisher expansion."""
    if df <= len(T_QUANTILES):
        return T_QUANTILES[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# -----------------------------------------------------------------------------
# Scores from confusion matrices


def f1_per_class(confusion, protocol="counted"):
    """(..., K) F1 in percent from (..., K, K) confusions (rows: reference); NaN where a class is
    absent from reference and prediction. With protocol "ignored" the clutter row is dropped."""
    confusion = np.asarray(confusion, np.float64)
    if protocol == "ignored":
        confusion = confusion.copy()
        confusion[..., CLUTTER, :] = 0
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    predicted, reference = confusion.sum(-2), confusion.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 200 * tp / (predicted + reference)


def mean_f1(confusion, protocol="counted"):
    """(...,) mF1 over the five scored classes, as evaluate.scores computes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: no scored class present
        return np.nanmean(f1_per_class(confusion, protocol)[..., SCORED_INDEX], axis=-1)


# -----------------------------------------------------------------------------
# A run's statistic on a multiset of its test tiles


def tile_names(runs):
    """The test tiles every run in `runs` ({seed: test.json}) was scored on, in a fixed order."""
    names = [set(run["per_tile"]) for run in runs.values()]
    return sorted(set.intersection(*names))


def mf1_statistic(scenario, protocol="counted"):
    """statistic(run, tiles, index) -> (B,) mF1 over the tiles index[b] (B x T indices into `tiles`)."""

    def statistic(run, tiles, index):
        confusions = np.array([run["per_tile"][t]["confusion"][scenario] for t in tiles])  # (T, K, K)
        return mean_f1(confusions[index].sum(1), protocol)

    return statistic


def class_f1_statistic(scenario, cls, protocol="counted"):
    k = CLASSES.index(cls)

    def statistic(run, tiles, index):
        confusions = np.array([run["per_tile"][t]["confusion"][scenario] for t in tiles])
        return f1_per_class(confusions[index].sum(1), protocol)[..., k]

    return statistic


def distance_statistic(pair, relative):
    """The mean L2 distance of Z between the scenarios of `pair` over the windows of the tiles;
    `relative`: divided by the mean norm of the full scenario's Z over the same windows, which
    a rescaling of Z (its batch norm's scale and shift, undone by the classifier) cannot move."""
    name = f"{pair[0]}_vs_{pair[1]}"

    def statistic(run, tiles, index):
        windows = np.array([run["per_tile"][t]["windows"] for t in tiles], np.float64)
        distance = np.array([run["per_tile"][t]["feature_distance"][name] for t in tiles]) * windows
        scale = np.array([run["per_tile"][t]["feature_distance"]["z_full"] for t in tiles]) * windows
        denominator = (scale if relative else windows)[index].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):  # an untrained model's Z may be all 0: NaN
            return np.where(denominator > 0, distance[index].sum(1) / denominator, np.nan)

    return statistic


# -----------------------------------------------------------------------------
# Paired differences and their intervals


@dataclass
class Difference:
    """a - b paired over seeds and test tiles."""

    mean: float
    n: int  # seeds paired
    half_seeds: float | None  # half-width of the 95% Student-t interval over seeds (None for n = 1)
    half_both: float | None  # ... over seeds and tiles
    se_seeds: float | None
    se_tiles: float

    @property
    def verdict(self):
        """"above" or "below" 0 where the interval over seeds and tiles excludes 0, else "not resolved"."""
        if self.half_both is None:
            return "not resolved"
        return "above" if self.mean - self.half_both > 0 else "below" if self.mean + self.half_both < 0 else "not resolved"

    def show(self, digits=2):
        text = f"{self.mean:+.{digits}f}"
        if self.half_both is None:
            return f"{text} (n={self.n})"
        return f"{text} ± {self.half_seeds:.{digits}f} / ± {self.half_both:.{digits}f} (n={self.n})"

    def as_dict(self):
        return dict(mean=self.mean, n=self.n, ci95_seeds=self.half_seeds, ci95_seeds_and_tiles=self.half_both,
                    se_seeds=self.se_seeds, se_tiles=self.se_tiles, verdict=self.verdict)


def paired_difference(a_runs, b_runs, statistic_a, statistic_b=None, resamples=BOOTSTRAP_RESAMPLES):
    """statistic_a(a) - statistic_b(b) over the seeds both have ({seed: test.json} each) and the
    tiles all their runs were scored on; None without a common seed."""
    return paired_contrast([(1, a_runs, statistic_a), (-1, b_runs, statistic_b or statistic_a)], resamples)


def paired_contrast(terms, resamples=BOOTSTRAP_RESAMPLES):
    """sum of coefficient * statistic(runs) over `terms` [(coefficient, {seed: test.json}, statistic)],
    per seed, over the seeds all the terms have and the tiles all their runs were scored on: a
    difference (1, -1), or a difference of differences, such as how a margin changes with the budget.
    The tiles are resampled with replacement, the same draw for every run, so the pairing over
    tiles is kept. None without a common seed."""
    seeds = sorted(set.intersection(*(set(runs) for _, runs, _ in terms)))
    if not seeds:
        return None
    tiles = tile_names({(k, s): runs[s] for k, (_, runs, _) in enumerate(terms) for s in seeds})
    # Row 0: every tile once; rows 1..: the bootstrap resamples.
    index = np.vstack([np.arange(len(tiles)),
                       np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(tiles), (resamples, len(tiles)))])
    values = np.array([sum(c * statistic(runs[s], tiles, index) for c, runs, statistic in terms) for s in seeds])
    per_seed, boot, n = values[:, 0], values[:, 1:].mean(0), len(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN statistics (see distance_statistic) stay NaN
        se_tiles = float(np.nanstd(boot, ddof=1))
        se_seeds = float(per_seed.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    if n == 1:
        return Difference(float(per_seed[0]), 1, None, None, None, se_tiles)
    t = t_quantile(n - 1)
    return Difference(float(per_seed.mean()), n, t * se_seeds, t * float(np.hypot(se_seeds, se_tiles)), se_seeds, se_tiles)


def claim_outcome(differences, direction):
    """"holds" when every difference is resolved in `direction` ("above" or "below" 0), "does not
    hold" when any is resolved the other way, else "not resolved"."""
    verdicts = {"not resolved" if d is None else d.verdict for d in differences}
    opposite = "below" if direction == "above" else "above"
    return "holds" if verdicts == {direction} else "does not hold" if opposite in verdicts else "not resolved"
