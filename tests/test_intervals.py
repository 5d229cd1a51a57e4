"""stats.py's interval over seeds and tiles, by simulation: experiments drawn
from a model with known seed, tile and seed-by-tile variances, scored through
stats.paired_difference as the reproduction scores its runs; the nominal 95%
must cover the true difference in at least 93% of them, and at most 97%
where the seed spread dominates, as it does in the reproduction (with the
seeds' degrees of freedom the interval is conservative where the shared tile
noise dominates). Adding the tile noise never makes a p-value smaller than
the seeds' alone, which Welch-Satterthwaite's degrees of freedom did. Also
its p-values, power and Holm's procedure against independent computations."""

import math

import numpy as np
import pytest

import stats

TILES = 17  # as the reproduction's test tiles
EXPERIMENTS = 2000
RESAMPLES = 300  # of the tiles per experiment; the reproduction's 2000 only sharpen the tile variance
TRUE_DIFFERENCE = 1.0
# (seed, tile, seed-by-tile) standard deviations of the per-tile difference: as the reproduction
# measured (the seed spread dominates), and one where the tile noise that all seeds share dominates.
NOISE = {"seeds dominate": (1.5, 0.4, 1.5), "tiles dominate": (0.3, 2.0, 0.8)}


def mean_statistic(run, tiles, index):
    """The mean of a run's per-tile values over the tiles index[b]: (B,)."""
    return np.array([run["per_tile"][t]["value"] for t in tiles])[index].mean(1)


def experiment(rng, n, sd_seed, sd_tile, sd_interaction):
    """One reproduction: n seeds of variant a and of b on the same TILES tiles, drawn afresh
    from the tile population; a - b per tile = TRUE_DIFFERENCE + seed + tile + seed-by-tile."""
    tile_effect = rng.normal(0, sd_tile, TILES)
    runs_a, runs_b = {}, {}
    for s in range(n):
        base = rng.normal(70, 3, TILES)  # what both variants share on a tile: cancels in the pairing
        diff = TRUE_DIFFERENCE + rng.normal(0, sd_seed) + tile_effect + rng.normal(0, sd_interaction, TILES)
        runs_a[s] = {"per_tile": {f"t{t:02d}": {"value": base[t] + diff[t]} for t in range(TILES)}}
        runs_b[s] = {"per_tile": {f"t{t:02d}": {"value": base[t]} for t in range(TILES)}}
    return stats.paired_difference(runs_a, runs_b, mean_statistic, resamples=RESAMPLES)


@pytest.mark.parametrize("noise", NOISE)
@pytest.mark.parametrize("n", (3, 5, 10))
def test_the_interval_over_seeds_and_tiles_covers_95_percent(n, noise):
    rng = np.random.default_rng(1000 * n + len(noise))
    differences = [experiment(rng, n, *NOISE[noise]) for _ in range(EXPERIMENTS)]
    covers = lambda half: np.mean([abs(d.mean - TRUE_DIFFERENCE) <= half(d) for d in differences])
    assert 0.93 <= covers(lambda d: d.half_both) <= (0.97 if noise == "seeds dominate" else 1), covers(lambda d: d.half_both)
    if noise == "tiles dominate":  # the seeds alone miss the tile noise they share
        assert covers(lambda d: d.half_seeds) < 0.90
    # Adding the tile noise never lowers a p-value below the seeds' alone; Satterthwaite's df (T - 1 for
    # the tile term) did, in 2-26% of these experiments.
    seeds_p = [stats.t_two_sided_p(d.mean / d.se_seeds, n - 1) for d in differences]
    assert all(d.p >= p for d, p in zip(differences, seeds_p))
    satterthwaite_p = [stats.t_two_sided_p(d.mean / d.se, satterthwaite_df(d)) for d in differences]
    if noise == "seeds dominate" or n == 3:
        assert np.mean([ps < p for ps, p in zip(satterthwaite_p, seeds_p)]) > 0.01


def satterthwaite_df(d):
    """Welch-Satterthwaite's degrees of freedom, the rule before 2026-12-07: n - 1 for the seeds'
    part, T - 1 for the tiles', rounded down."""
    seeds_part = d.se_seeds**2
    denominator = seeds_part**2 / (d.n - 1) + d.var_tiles**2 / (TILES - 1)
    return int((seeds_part + d.var_tiles) ** 2 / denominator)


def test_interval_parts_by_hand():
    """The tile variance is the mean covariance between seeds' bootstrap replicates times T/(T-1),
    the degrees of freedom the seeds', n - 1."""
    rng = np.random.default_rng(7)
    d = experiment(rng, 4, 1.0, 1.0, 1.0)
    rng = np.random.default_rng(7)
    tile_effect = rng.normal(0, 1.0, TILES)
    per_tile = []
    for _ in range(4):
        rng.normal(70, 3, TILES)
        per_tile.append(TRUE_DIFFERENCE + rng.normal(0, 1.0) + tile_effect + rng.normal(0, 1.0, TILES))
    per_tile = np.array(per_tile)  # (seeds, tiles): a - b per tile
    index = np.random.default_rng(stats.BOOTSTRAP_SEED).integers(0, TILES, (RESAMPLES, TILES))
    replicates = per_tile[:, index].mean(-1)  # (seeds, resamples)
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    covariance = np.mean([np.cov(replicates[i], replicates[j])[0, 1] for i, j in pairs])
    var_tiles = max(covariance, 0) * TILES / (TILES - 1)
    se_seeds = per_tile.mean(1).std(ddof=1) / 2
    df = 3
    assert d.mean == pytest.approx(per_tile.mean())
    assert d.var_tiles == pytest.approx(var_tiles, rel=1e-9) and d.df == df
    assert d.half_both == pytest.approx(stats.t_quantile(df) * math.sqrt(se_seeds**2 + var_tiles), rel=1e-9)
    assert d.half_seeds == pytest.approx(stats.t_quantile(3) * se_seeds, rel=1e-9)
    assert d.se_tiles == pytest.approx(replicates.mean(0).std(ddof=1), rel=1e-9)


@pytest.mark.parametrize("df", (1, 2, 3, 4, 7, 9, 16, 30, 60))
def test_p_values_agree_with_the_integral_of_the_density(df):
    """P(|T| >= t) by the midpoint rule on the density of Student's t, after x = t / u."""
    density = lambda x: math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + x * x / df) ** (-(df + 1) / 2)
    for t in (0.3, 1.0, 2.0, stats.t_quantile(df), 5.0):
        u = (np.arange(200_000) + 0.5) / 200_000  # x = t / u covers [t, inf)
        tail = np.mean(density(t / u) * t / u**2)
        assert stats.t_two_sided_p(t, df) == pytest.approx(2 * tail, rel=1e-4, abs=1e-9)


def test_power_against_simulated_t_tests():
    """The power of a t test, and the margin and seeds it gives, against t tests simulated from
    the normal and chi-square draws that make the statistic."""
    rng = np.random.default_rng(11)
    for df, margin, alpha in ((2, 3.0, 0.05), (4, 2.0, 0.05), (9, 1.5, 0.01), (9, 0.0, 0.0125)):
        se = 0.7
        statistic = (rng.normal(margin / se, 1, 200_000)) / np.sqrt(rng.chisquare(df, 200_000) / df)
        simulated = np.mean(np.abs(statistic) >= stats.t_critical(alpha, df))
        assert stats.power(margin, se, df, alpha) == pytest.approx(simulated, abs=0.004), (df, margin, alpha)
    assert stats.t_critical(0.05, 9) == pytest.approx(stats.t_quantile(9), abs=1e-4)
    margin = stats.margin_for_power(0.5, 9)
    assert stats.power(margin, 0.5, 9) == pytest.approx(0.8, abs=1e-6)
    n = stats.seeds_for_power(1.0, 0.0, 1.0, 0.0125)
    assert stats.power(1.0, 1 / math.sqrt(n), n - 1, 0.0125) >= 0.8 > stats.power(1.0, 1 / math.sqrt(n - 1), n - 2, 0.0125)
    assert stats.seeds_for_power(1.0, 0.5**2, 1.0) is None  # the tiles' noise alone leaves too little power
    assert stats.holm_thresholds([0.3, 0.01, 0.04]) == pytest.approx([0.05, 0.05 / 3, 0.05 / 2])


def test_holm_against_its_definition():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = rng.uniform(0, 0.06, 5)
        ordered = np.sort(p)
        passes = ordered <= 0.05 / (5 - np.arange(5))
        k = 5 if passes.all() else int(np.argmin(passes))  # the first that fails stops
        assert stats.holm(list(p)) == [bool(x <= ordered[k - 1]) if k else False for x in p]
    assert stats.holm([0.01, 0.04, 0.03, 0.5, 0.005]) == [True, False, False, False, True]
