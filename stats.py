"""
The reproduction's statistics: scores recomputed from per-tile confusion
matrices under either clutter protocol, paired differences over seeds, their
95% intervals over seeds (Student t) and over seeds and test tiles, p-values,
Holm's correction for a family of questions, the verdicts, and the paper's
claims (docs/reproduction.md, "How a difference is decided").

A difference between two variants is paired twice: the same seeds (each
seed's runs share their patches, scenarios and initial weights' seed) and the
same test tiles. Per seed s, on the test tiles T, the difference is

    D_s = mu + a_s + b(T) + c_s(T)

with a_s the training noise (another seed, another model), b(T) the noise of
the test set shared by every seed (these tiles and not others) and c_s(T)
the seed-by-tile interaction. The spread of the D_s over seeds holds a_s and
c_s(T) but not b(T), which all seeds share; so the variance of their mean is
Var(a + c) / n + Var(b): the seeds' squared standard error plus the tile
noise *not* in the seed spread. A bootstrap over the test tiles, the same
draw for every run, estimates the second: the covariance between two seeds'
bootstrap replicates is Var(b) (the c_s are independent between seeds),
averaged over the pairs of seeds and scaled by T/(T-1) (the bootstrap's
plug-in variance of a mean of T tiles is (T-1)/T of the unbiased one). The
interval is mean ± t(n - 1) sqrt(se_seeds^2 + var_tiles): the seeds'
degrees of freedom, not Welch-Satterthwaite's. Satterthwaite would credit the
tile term with T - 1 degrees of freedom, but a bootstrap of mF1 over a few
tiles that carry most of the noise has far fewer (about 2.4-4.5, as an audit
simulating from the reproduction's runs found), and with more degrees of freedom than the seeds'
adding the tile noise could make a p-value smaller. With n - 1 the tile term
only ever widens the interval. It covers the seeds and test tiles of this
population: every seed trains on the same training tiles, so another
training set is not covered. tests/test_intervals.py shows its coverage,
and that adding noise never lowers a p-value, by simulation.

The power of a question (`power`, `margin_for_power`, `seeds_for_power`)
is that of its t test: the statistic is noncentral t with the same
degrees of freedom, the true margin over the standard error its shift.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np

from data import CLASSES
from evaluate import SCORED, standardised_distance

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


def standardised_distance_statistic(pair):
    """evaluate.standardised_distance between the scenarios of `pair` over the tiles index[b],
    from the per-channel sums each tile keeps ("z_channels"): each channel of Z in units of
    its spread in the full scenario, so no rescaling of Z's channels moves it (claim 2's measure)."""
    def statistic(run, tiles, index):
        keys = run["per_tile"][tiles[0]]["z_channels"]
        sums = {k: np.array([run["per_tile"][t]["z_channels"][k] for t in tiles], np.float64)[index].sum(1) for k in keys}
        return standardised_distance(sums, pair)

    return statistic


# -----------------------------------------------------------------------------
# Paired differences and their intervals


@dataclass
class Difference:
    """a - b paired over seeds and test tiles."""

    mean: float
    n: int  # seeds paired
    half_seeds: float | None  # half-width of the 95% Student-t interval over seeds (None for n = 1)
    half_both: float | None  # ... over seeds and tiles, each source of noise counted once: the decisive one
    se_seeds: float | None
    se_tiles: float  # bootstrap standard error of the mean difference over tiles (seed-by-tile noise included)
    var_tiles: float | None = None  # the tile noise all seeds share: the covariance of their bootstrap replicates
    df: int | None = None  # degrees of freedom of half_both: the seeds', n - 1

    @property
    def verdict(self):
        """"above" or "below" 0 where the interval over seeds and tiles excludes 0, else "not resolved"."""
        if self.half_both is None:
            return "not resolved"
        return "above" if self.mean - self.half_both > 0 else "below" if self.mean + self.half_both < 0 else "not resolved"

    @property
    def p(self):
        """Two-sided p-value of mean = 0 from the t statistic of half_both (None for n = 1)."""
        if self.half_both is None:
            return None
        se = math.sqrt(self.se_seeds**2 + self.var_tiles)
        return 1.0 if se == 0 and self.mean == 0 else t_two_sided_p(self.mean / se if se else math.inf, self.df)

    @property
    def se(self):
        """The standard error of the mean over seeds and tiles (None for n = 1)."""
        return None if self.half_both is None else math.sqrt(self.se_seeds**2 + self.var_tiles)

    def power(self, alpha=1 - LEVEL, margin=None):
        """The chance that these seeds and tiles resolve a true difference `margin` (default: the mean
        found) at a two-sided level `alpha`."""
        return None if self.half_both is None else power(self.mean if margin is None else margin, self.se, self.df, alpha)

    def margin_for_power(self, alpha=1 - LEVEL, wanted=0.8):
        """The smallest true difference these seeds and tiles resolve with power `wanted`."""
        return None if self.half_both is None else margin_for_power(self.se, self.df, alpha, wanted)

    def seeds_for_power(self, alpha=1 - LEVEL, margin=None, wanted=0.8):
        """How many seeds, with the spread found over seeds and the same tiles, resolve `margin` (default:
        the mean found) with power `wanted`; None if no number of seeds up to 1000 does (the tiles' noise
        alone is too large) or for n = 1."""
        if self.half_both is None:
            return None
        sd_seeds = self.se_seeds * math.sqrt(self.n)
        return seeds_for_power(sd_seeds, self.var_tiles, self.mean if margin is None else margin, alpha, wanted)

    def power_summary(self, threshold):
        """At 5% and at `threshold` (Holm's, for a primary question): the power at the mean found, the
        margin resolved with 80% power, the seeds that resolve the mean found with 80% power. None for n = 1."""
        if self.half_both is None:
            return None
        levels = {"5%": 1 - LEVEL, "holm": threshold}
        return dict(holm_threshold=threshold,
                    power_at_mean={k: self.power(a) for k, a in levels.items()},
                    margin_for_80_percent_power={k: self.margin_for_power(a) for k, a in levels.items()},
                    seeds_for_80_percent_power_at_mean={k: self.seeds_for_power(a) for k, a in levels.items()})

    @property
    def half_tiles_twice(self):
        """The rule used before 2026-12-04, kept to compare its verdicts: t(n-1) sqrt(se_seeds^2 + se_tiles^2)
        adds the seed-by-tile noise a second time (it is in the seed spread already)."""
        return None if self.half_both is None else t_quantile(self.n - 1) * math.hypot(self.se_seeds, self.se_tiles)

    def place(self, value):
        """Where `value` (the paper's) lies against the 95% interval over seeds and tiles."""
        if self.half_both is None:
            return "no interval"
        return ("consistent with the paper" if abs(value - self.mean) <= self.half_both
                else "smaller than the paper's" if value > self.mean else "larger than the paper's")

    def show(self, digits=2):
        text = f"{self.mean:+.{digits}f}"
        if self.half_both is None:
            return f"{text} (n={self.n})"
        return f"{text} ± {self.half_seeds:.{digits}f} / ± {self.half_both:.{digits}f} (n={self.n})"

    def as_dict(self):
        return dict(mean=self.mean, n=self.n, ci95_seeds=self.half_seeds, ci95_seeds_and_tiles=self.half_both,
                    df=self.df, p=self.p, se_seeds=self.se_seeds, se_tiles=self.se_tiles, var_tiles=self.var_tiles,
                    ci95_tiles_counted_twice=self.half_tiles_twice, verdict=self.verdict)


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
    T = len(tiles)
    # Row 0: every tile once; rows 1..: the bootstrap resamples.
    index = np.vstack([np.arange(T), np.random.default_rng(BOOTSTRAP_SEED).integers(0, T, (resamples, T))])
    values = np.array([sum(c * statistic(runs[s], tiles, index) for c, runs, statistic in terms) for s in seeds])
    replicates = values[:, 1:][:, np.isfinite(values[:, 1:]).all(0)]  # NaN statistics (see distance_statistic) left out
    per_seed, n = values[:, 0], len(seeds)
    if replicates.shape[1] < 2:  # the statistic is NaN on every resample: nothing to decide
        return Difference(float(per_seed.mean()), n, None, None, None, math.nan)
    se_tiles = float(replicates.mean(0).std(ddof=1))
    if n == 1:
        return Difference(float(per_seed[0]), 1, None, None, None, se_tiles)
    se_seeds = float(per_seed.std(ddof=1) / np.sqrt(n))
    covariance = np.cov(replicates)  # (n, n) over the resamples
    shared = (covariance.sum() - np.trace(covariance)) / (n * (n - 1))
    var_tiles = max(float(shared), 0.0) * T / (T - 1) if T > 1 else 0.0
    # The seeds' degrees of freedom for both terms: the tile term's own are unknown and few, and any more
    # than n - 1 would let the tile noise lower a p-value (Welch-Satterthwaite's T - 1 did, for P1).
    df = n - 1
    half_both = t_quantile(df) * math.sqrt(se_seeds**2 + var_tiles)
    return Difference(float(per_seed.mean()), n, t_quantile(n - 1) * se_seeds, half_both, se_seeds, se_tiles,
                      var_tiles, df)


def t_two_sided_p(t, df):
    """P(|T| >= |t|) for Student's t with df degrees of freedom: the regularised incomplete
    beta function I_x(df/2, 1/2) at x = df / (df + t^2)."""
    if math.isinf(t):
        return 0.0
    return regularised_incomplete_beta(df / (df + t * t), df / 2, 0.5)


def regularised_incomplete_beta(x, a, b):
    """I_x(a, b) by its continued fraction (modified Lentz), on the side where it converges fast."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularised_incomplete_beta(1 - x, b, a)
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0) / a


def t_critical(alpha, df):
    """t with P(|T| >= t) = alpha, by bisection on t_two_sided_p."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > alpha else (low, middle)
    return (low + high) / 2


def power(margin, se, df, alpha=1 - LEVEL):
    """The chance that a two-sided t test at level `alpha` with standard error `se` and `df` degrees
    of freedom resolves a true difference `margin`. Its statistic is noncentral t, (Z + delta) / S
    with delta = margin / se and S^2 a chi-square over df: the normal's two tails averaged over S."""
    if se == 0:  # no noise at all: any margin is resolved, none is not
        return float(margin != 0)
    critical, delta = t_critical(alpha, df), abs(margin) / se
    points = 4000
    step = (1 + 12 / math.sqrt(df)) / points
    s = (np.arange(points) + 0.5) * step
    v = df * s * s  # the density of S = sqrt(V / df), V chi-square with df degrees of freedom
    log_density = np.log(2 * df * s) + (df / 2 - 1) * np.log(v) - v / 2 - math.lgamma(df / 2) - df / 2 * math.log(2)
    normal_tail = np.frompyfunc(lambda x: 0.5 * math.erfc(x / math.sqrt(2)), 1, 1)  # P(Z >= x)
    tails = normal_tail(critical * s - delta).astype(float) + normal_tail(critical * s + delta).astype(float)
    return float(np.sum(np.exp(log_density) * tails) * step)


def margin_for_power(se, df, alpha=1 - LEVEL, wanted=0.8):
    """The smallest margin that power() resolves with probability `wanted`, by bisection."""
    if se == 0:
        return 0.0
    low, high = 0.0, se
    while power(high, se, df, alpha) < wanted:
        low, high = high, 2 * high
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if power(middle, se, df, alpha) < wanted else (low, middle)
    return high


def seeds_for_power(sd_seeds, var_tiles, margin, alpha=1 - LEVEL, wanted=0.8, most=1000):
    """The fewest seeds n >= 2 with power(margin, sqrt(sd_seeds^2 / n + var_tiles), n - 1, alpha) >=
    `wanted`: more seeds shrink the seeds' part, never the tiles' (the same test tiles). None if
    `most` seeds do not."""
    for n in range(2, most + 1):
        if power(margin, math.sqrt(sd_seeds**2 / n + var_tiles), n - 1, alpha) >= wanted:
            return n
    return None


def holm_thresholds(pvalues, alpha=1 - LEVEL):
    """What Holm's procedure compares each p-value with: alpha / (m - rank), rank its place among the
    p-values in ascending order (from 0)."""
    thresholds = [0.0] * len(pvalues)
    for rank, i in enumerate(np.argsort(pvalues, kind="stable")):
        thresholds[i] = alpha / (len(pvalues) - rank)
    return thresholds


def holm(pvalues, alpha=1 - LEVEL):
    """Holm's step-down procedure: which of a family of hypotheses are rejected with a
    family-wise error rate of at most `alpha`. The i-th smallest p-value is compared with
    alpha / (m - i + 1); the first that fails stops the rejections."""
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(np.argsort(pvalues, kind="stable")):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def claim_outcome(differences, direction):
    """"holds" when every difference is resolved in `direction` ("above" or "below" 0), "does not
    hold" when any is resolved the other way, else "not resolved"."""
    verdicts = {"not resolved" if d is None else d.verdict for d in differences}
    opposite = "below" if direction == "above" else "above"
    return "holds" if verdicts == {direction} else "does not hold" if opposite in verdicts else "not resolved"
