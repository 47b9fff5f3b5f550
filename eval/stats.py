"""Confidence intervals for rates and means: Wilson for a binomial rate, percentile
bootstrap over independent units (pairs, samples) for everything else, and a bootstrap
over items for A/B pairs that share items (`item_bootstrap_interval`)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval; (0, 1) when n == 0. Stays inside [0, 1] and is sensible at 0/n."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float] | np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                       *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` over the rows of `values` (resampled with
    replacement). Rows may be vectors when the statistic needs several columns."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(num_resamples, len(data)))
    stats = np.array([statistic(data[i]) for i in idx])
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def item_bootstrap_interval(num: Sequence[float], den: Sequence[float], units: Sequence[Sequence[str]], *,
                            num_resamples: int = 2000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of sum(num) / sum(den) over rows that share units: row i
    (e.g. an A/B pair) involves the items `units[i]`. Each resample draws the items with
    replacement and weights a row by the product of its items' draw counts (the
    pigeonhole bootstrap for crossed data, Owen 2007), so pairs that share an item move
    together and the interval reflects how many distinct items were tested, not how many
    pairs were built from them."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(num) == 0:
        return math.nan, math.nan
    names = sorted({u for row in units for u in row})
    index = {u: i for i, u in enumerate(names)}
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=num_resamples)
    weights = np.ones((num_resamples, len(num)))
    for i, row in enumerate(units):
        for u in row:
            weights[:, i] *= counts[:, index[u]]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = (weights @ num) / (weights @ den)
    stats = stats[np.isfinite(stats)]
    if len(stats) == 0:
        return math.nan, math.nan
    alpha = (1 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def rate_summary(successes: int, n: int) -> dict:
    lo, hi = wilson_interval(successes, n)
    return {"rate": successes / n if n else math.nan, "n": n, "k": successes, "ci_low": lo, "ci_high": hi}


def mean_summary(values: Sequence[float], seed: int = 0) -> dict:
    lo, hi = bootstrap_interval(values, seed=seed)
    return {"mean": float(np.mean(values)) if len(values) else math.nan, "n": len(values), "ci_low": lo, "ci_high": hi}


def mean_of_rates_summary(groups: Sequence[Sequence[int]], seed: int = 0, num_resamples: int = 2000) -> dict:
    """Average of per-group rates (each group a list of 0/1 outcomes) with a stratified
    bootstrap CI: outcomes are resampled within each group, groups are kept."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return {"mean": math.nan, "n": 0, "ci_low": math.nan, "ci_high": math.nan}
    rng = np.random.default_rng(seed)
    draws = np.zeros(num_resamples)
    for g in groups:
        draws += g[rng.integers(0, len(g), size=(num_resamples, len(g)))].mean(axis=1)
    draws /= len(groups)
    return {"mean": float(np.mean([g.mean() for g in groups])), "n": int(sum(len(g) for g in groups)),
            "num_groups": len(groups), "ci_low": float(np.quantile(draws, 0.025)),
            "ci_high": float(np.quantile(draws, 0.975))}
