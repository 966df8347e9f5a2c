"""Which orderings of a few-seed table are real: intervals, verdicts, seeds needed, noise sources.

Pure numbers in, dataclasses out (numpy, pandas, scipy.stats; no MLflow, Ray or
torch), so the tables can call it and the tests can check it against simulation.
Accuracies are in percentage points throughout. What each number means for a
reader is in ``docs/statistics.md``; this docstring is the contract::

    scores = {"TSN": {0: 28.0, 1: 28.8}, "TSM": {0: 58.4, 1: 67.2}, ...}  # row -> seed -> top-1
    st = analyze(scores, baseline="TSN")
    st.rows["TSM"]            # RowInterval: mean, 95% interval, n, pooled?
    st.comparisons            # [Comparison]: diff, interval, p, Holm p, verdict, P(A>B), seeds needed
    str(st.summary)           # "1 of 16 orderings resolved at 2 seeds"
    next_seeds(st.comparisons, {"TSN": 2, ...}, max_trials=40)   # {"TSM": 2, "GST": 2}
    split_noise({0: correct_clips_seed0, 1: correct_clips_seed1})  # NoiseSplit

Rules, and why:

* **Row interval** (:func:`row_intervals`): mean +- t * se over the row's seeds.
  A row with at most :data:`POOL_AT_MOST` (3) seeds borrows the variance pooled
  over all the study's rows (``pooled=True``): 2 seeds give a standard deviation
  with 1 degree of freedom, whose 95% interval is +-12.7 se, nearly useless,
  while ten rows of 2 seeds give 10. A row with one seed still gets an interval
  when any row has two. The pooled variance assumes the rows share one seed
  standard deviation; its degrees of freedom are Satterthwaite's over a
  rows + seeds additive model (:class:`Pool`): when a seed moves every row the
  same way (same data order and initialisation), the rows' spreads are not
  independent and the df fall from sum(n - 1) toward (seeds - 1). With no seed
  shared they are sum(n - 1), the textbook pooled t. Known limit: a shared
  seed effect several times the within-row noise leaves 2-seed row intervals
  short (about 90% coverage at 3x, simulated); the comparisons, paired, are not
  affected.
* **Comparison** (:func:`compare`) of rows A and B, ``diff = A - B``:
  paired by seed when they share at least 2 seeds (the mean of the per-seed
  differences over the shared seeds; the seed's own effect cancels). With more
  than 3 pairs the variance is the pairs' own (paired t); with 2-3 it is the
  residual variance of the rows + seeds model pooled over the study
  (``paired-pooled``), which for a two-row study is exactly the paired t.
  Unpaired: Welch when both rows have more than 3 seeds, else the pooled
  variance (``pooled``). ``none`` when no variance exists anywhere.
* **p** is the two-sided t test of diff = 0 and ``low``/``high`` its 95%
  interval, each for that comparison alone. **p_holm** is Holm's step-down
  correction over all the comparisons passed together; ``resolved`` means
  ``p_holm <= alpha``, so the chance that any resolved ordering of the study
  points the wrong way is at most alpha.
* **P(A > B)** (``p_a_better``) is ``t.cdf(diff / se, df)``: the probability,
  under the t model with a flat prior, that A's true mean (over infinitely many
  seeds) exceeds B's. It is not the chance that one seed of A beats one seed
  of B (rliable's meaning). ``p == 2 * min(P, 1 - P)``.
* **Seeds needed** (``seeds_needed``): the smallest seeds per row (pairs, when
  paired) at which the same t test, paired or two-sample, has 80% power to
  resolve the measured difference at the measured standard deviation, at the
  Bonferroni level alpha / m: Holm's strictest step, so the promise holds
  whatever the other comparisons do (it overstates when others resolve
  first). The power is that of the comparison's own test, df from its own
  seeds; at <= 3 seeds the table borrows pooled df, so a small figure is
  conservative there too. Power from ``scipy.stats.nct``. ``None`` when more
  than :data:`MAX_SEEDS` would be needed (a zero difference never resolves) or
  when no variance exists.
* **Noise split** (:func:`split_noise`): from each seed's per-clip correctness
  on the same validation clips, the row's seed-to-seed spread of top-1 splits
  into a clip-sampling part (which clips a seed happens to get right; shrinks
  with more clips) and the seed-to-seed part (the models really differ; only
  more seeds average it). Method of moments on a seeds x clips two-way layout.

API (dict in, dataclasses out):

* ``analyze(scores, *, baseline=None, pairs=None, alpha, power) -> StudyStatistics``: all of the below at once.
* ``row_intervals(scores, *, alpha, pool_at_most) -> dict[str, RowInterval]``: per-row mean, interval, n.
* ``default_comparisons(scores, baseline=None) -> list[tuple[str, str]]``: vs baseline, then adjacent by mean.
* ``compare(scores, pairs, *, alpha, power, pool_at_most, max_seeds) -> list[Comparison]``: tests, Holm, seeds.
* ``summarize(comparisons) -> OrderingSummary``: ``str()`` is the header line.
* ``as_frame(rows_or_comparisons) -> pandas.DataFrame``: one line per result, for the table code.
* ``seeds_needed(diff, sd, *, paired, alpha, power, max_seeds) -> int | None``: the power calculation alone.
* ``next_seeds(comparisons, seeds, max_trials) -> dict[str, int]``: extra seeds per row, next wave.
* ``split_noise({seed: per-clip correct}) -> NoiseSplit``: seed vs clip-sampling spread of one row.

Vectorised cores (:func:`pool`, :func:`row_arrays`, :func:`pair_arrays`,
:func:`holm`, :func:`t_test_power`, :func:`noise_components`) take arrays with
any leading axes, ``(..., rows, seeds)`` with NaN for a missing trial (or
``(..., seeds, clips)``), so the tests run 10,000 simulated tables in one call;
the dict functions are thin wrappers around them.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats  # no type information: [tool.mypy] ignore_missing_imports

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Scores = Mapping[str, Mapping[int, float]]
"""Per row, per seed, one accuracy in percentage points (top-1 at the last epoch)."""
Method = Literal["paired", "paired-pooled", "welch", "pooled", "none"]

ALPHA = 0.05
"""Two-sided level of every test; intervals are 1 - ALPHA."""
POWER = 0.8
"""Power the seeds-needed figure aims at."""
POOL_AT_MOST = 3
"""Rows (and pairs) with at most this many seeds use the study's pooled variance."""
MAX_SEEDS = 1000
"""Seeds needed beyond this are reported as None (not worth running)."""

METHODS: tuple[Method, ...] = ("none", "paired", "paired-pooled", "welch", "pooled")


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowInterval:
    """One row's accuracy: mean over its seeds with a (1 - alpha) interval."""

    row: str
    n: int
    mean: float
    sd: float | None
    """The row's own standard deviation over seeds (None with one seed): what tables used to print."""
    low: float | None
    high: float | None
    df: float | None
    pooled: bool
    """The interval uses the study's pooled variance (n <= POOL_AT_MOST)."""

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` against row ``b``; ``diff`` is a minus b, so a positive diff says a is ahead."""

    a: str
    b: str
    diff: float
    low: float | None
    high: float | None
    method: Method
    n_a: int
    n_b: int
    n_pairs: int
    """Seeds the two rows share; the paired methods use only these."""
    df: float | None
    p: float | None
    """Two-sided p of this comparison alone."""
    p_holm: float | None
    """Holm-adjusted over the comparisons analysed together."""
    resolved: bool
    p_a_better: float | None
    """P(true mean of a > true mean of b) under the t model with a flat prior."""
    seeds_needed: int | None
    """Seeds per row for 80% power at alpha / m, at the measured diff and sd; None: > MAX_SEEDS or no variance."""

    @property
    def verdict(self) -> str:
        """``"A > B"``, ``"A < B"`` or ``"A ? B"`` (unresolved), with the row names."""
        if not self.resolved:
            return f"{self.a} ? {self.b}"
        return f"{self.a} > {self.b}" if self.diff > 0 else f"{self.a} < {self.b}"


@dataclass(frozen=True)
class OrderingSummary:
    """The table header's line: how many of the study's orderings its runs support."""

    resolved: int
    total: int
    min_seeds: int
    max_seeds: int

    def __str__(self) -> str:
        seeds = str(self.min_seeds) if self.min_seeds == self.max_seeds else f"{self.min_seeds}-{self.max_seeds}"
        return f"{self.resolved} of {self.total} orderings resolved at {seeds} seeds"


@dataclass(frozen=True)
class StudyStatistics:
    rows: dict[str, RowInterval]
    comparisons: list[Comparison]
    summary: OrderingSummary


@dataclass(frozen=True)
class NoiseSplit:
    """Where a row's spread of top-1 over seeds comes from, as standard deviations in points.

    ``observed_sd**2 == seed_sd**2 + clip_sd**2``: when the clip-sampling estimate exceeds the
    observed spread (seed part floored at 0), the clip part is the whole observed spread.
    """

    seeds: int
    clips: int
    top1: float
    observed_sd: float
    """Standard deviation of top-1 across seeds: the table's +- figure."""
    seed_sd: float
    """The part from the models really differing between seeds; only more seeds average it."""
    clip_sd: float
    """The part from which clips each seed happens to get right; shrinks as 1/sqrt(clips)."""
    valset_sd: float
    """How far the row's mean top-1 would move on another validation set of the same size (bootstrap over clips)."""
    more: Literal["seeds", "clips"]
    hint: str


# ---------------------------------------------------------------------------
# Vectorised cores: (..., rows, seeds) arrays, NaN = no trial
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Variances pooled over a study's rows; one value per table (shape ``values.shape[:-2]``).

    ``var`` is the within-row variance pooled over rows (sum of squares about each row's
    mean over sum(n - 1)), with Satterthwaite's ``df``. ``resid_var`` / ``resid_df`` are
    the residual of the additive model value = row + seed + noise: the variance the
    paired-pooled comparisons use (a paired difference has variance 2 * resid_var).
    """

    var: FloatArray
    df: FloatArray
    resid_var: FloatArray
    resid_df: FloatArray


@dataclass(frozen=True)
class RowArrays:
    n: IntArray
    mean: FloatArray
    sd: FloatArray
    se: FloatArray
    df: FloatArray
    low: FloatArray
    high: FloatArray
    pooled: NDArray[np.bool_]


@dataclass(frozen=True)
class PairArrays:
    """Per comparison (last axis): the unadjusted test; :func:`holm` adjusts ``p`` afterwards."""

    diff: FloatArray
    se: FloatArray
    df: FloatArray
    low: FloatArray
    high: FloatArray
    p: FloatArray
    p_a_better: FloatArray
    unit_sd: FloatArray
    """Per-seed standard deviation the power calculation uses: of the differences when paired, of a row otherwise."""
    method: IntArray
    """Index into METHODS."""
    n_a: IntArray
    n_b: IntArray
    n_pairs: IntArray


def _sum_of_squares(values: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per row: seeds present, mean (NaN when none) and sum of squares about the mean."""
    present = ~np.isnan(values)
    n = present.sum(axis=-1)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=-1) / n
    ss = np.where(present, (filled - mean[..., None]) ** 2, 0.0).sum(axis=-1)
    return n.astype(np.int64), mean, ss


def _additive_residual(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Residual sum of squares and df of value = row + seed + noise, by least squares.

    Row and seed indicator columns for the trials present; df = trials - rank
    (a seed only one row has fits exactly and adds nothing). Tables analysed
    together must miss the same trials, so one residual-maker matrix serves all.
    """
    present = ~np.isnan(values)
    rows, seeds = values.shape[-2:]
    patterns = present.reshape(-1, rows, seeds)
    if patterns.shape[0] == 0 or not (patterns == patterns[0]).all():
        raise ValueError("tables analysed together must have the same trials present (analyse them one at a time)")
    r_idx, s_idx = np.nonzero(patterns[0])
    design = np.zeros((r_idx.size, rows + seeds))
    design[np.arange(r_idx.size), r_idx] = 1.0
    design[np.arange(r_idx.size), rows + s_idx] = 1.0
    y = values[..., r_idx, s_idx]
    resid = y - (y @ np.linalg.pinv(design).T) @ design.T if r_idx.size else y
    df = float(r_idx.size - np.linalg.matrix_rank(design)) if r_idx.size else 0.0
    return (resid**2).sum(axis=-1), np.full(values.shape[:-2], df)


def pool(values: ArrayLike) -> Pool:
    """Pooled within-row and additive-model residual variances of ``(..., rows, seeds)`` tables.

    The pooled variance's df: its sum of squares splits into a part explained by
    seeds shared between rows and the residual; Satterthwaite's formula weighs
    the two by their own df, so a shared seed effect does not count as
    independent evidence from every row.
    """
    v = np.asarray(values, dtype=np.float64)
    n, _, ss_rows = _sum_of_squares(v)
    ss_within = ss_rows.sum(axis=-1)
    df_within = np.clip(n - 1, 0, None).sum(axis=-1).astype(np.float64)
    ss_resid, df_resid = _additive_residual(v)
    ss_seed = np.clip(ss_within - ss_resid, 0.0, None)  # lstsq round-off can make it -1e-15
    df_seed = df_within - df_resid
    with np.errstate(invalid="ignore", divide="ignore"):
        var = ss_within / df_within
        resid_var = np.where(df_resid > 0, ss_resid / df_resid, np.nan)
        seed_term = np.where(df_seed > 0, (ss_seed / df_within) ** 2 / df_seed, 0.0)
        resid_term = np.where(df_resid > 0, (ss_resid / df_within) ** 2 / df_resid, 0.0)
        satterthwaite = (ss_within / df_within) ** 2 / (seed_term + resid_term)
    df = np.where(ss_within > 0, satterthwaite, df_within)  # all values equal: nothing to weigh
    df = np.where(df_within > 0, df, 0.0)
    return Pool(var=var, df=df, resid_var=resid_var, resid_df=df_resid)


def _t_quantile(alpha: float, df: FloatArray) -> FloatArray:
    with np.errstate(invalid="ignore"):
        return np.where(df > 0, stats.t.ppf(1 - alpha / 2, np.where(df > 0, df, 1.0)), np.nan)


def row_arrays(values: ArrayLike, table_pool: Pool | None = None, *, alpha: float = ALPHA,
               pool_at_most: int = POOL_AT_MOST) -> RowArrays:
    """Mean and (1 - alpha) interval of each row of ``(..., rows, seeds)`` tables."""
    v = np.asarray(values, dtype=np.float64)
    p = table_pool if table_pool is not None else pool(v)
    n, mean, ss = _sum_of_squares(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        own_var = np.where(n >= 2, ss / (n - 1), np.nan)
        use_pool = (n <= pool_at_most) & (p.df[..., None] > 0) & (n >= 1)
        var = np.where(use_pool, p.var[..., None], own_var)
        df = np.where(use_pool, p.df[..., None], np.where(n >= 2, n - 1, 0).astype(np.float64))
        se = np.sqrt(var / n)
    half = _t_quantile(alpha, df) * se
    return RowArrays(n=n, mean=mean, sd=np.sqrt(own_var), se=se, df=df, low=mean - half, high=mean + half,
                     pooled=use_pool)


def pair_arrays(values: ArrayLike, a: Sequence[int], b: Sequence[int], table_pool: Pool | None = None, *,
                alpha: float = ALPHA, pool_at_most: int = POOL_AT_MOST) -> PairArrays:
    """Row ``a[i]`` minus row ``b[i]`` of ``(..., rows, seeds)`` tables: the rules of the module docstring."""
    v = np.asarray(values, dtype=np.float64)
    p = table_pool if table_pool is not None else pool(v)
    ia, ib = np.asarray(a, dtype=np.intp), np.asarray(b, dtype=np.intp)
    n, mean, ss = _sum_of_squares(v)
    n_a, n_b = n[..., ia], n[..., ib]
    with np.errstate(invalid="ignore", divide="ignore"):
        var_a, var_b = ss[..., ia] / (n_a - 1), ss[..., ib] / (n_b - 1)
        va, vb = v[..., ia, :], v[..., ib, :]
        shared = ~np.isnan(va) & ~np.isnan(vb)
        n_pairs = shared.sum(axis=-1).astype(np.int64)
        d = np.where(shared, va - vb, 0.0)
        d_mean = d.sum(axis=-1) / n_pairs
        d_var = np.where(shared, (d - d_mean[..., None]) ** 2, 0.0).sum(axis=-1) / (n_pairs - 1)
        resid_var, resid_df = p.resid_var[..., None], p.resid_df[..., None]
        pool_var, pool_df = p.var[..., None], p.df[..., None]

        paired = n_pairs >= 2  # two rows sharing 2 seeds make resid_df >= 1, so a paired method always exists
        paired_own = paired & (n_pairs > pool_at_most)
        paired_pooled = paired & ~paired_own
        welch = ~paired & (n_a > pool_at_most) & (n_b > pool_at_most)
        pooled = ~paired & ~welch & (pool_df > 0) & (n_a >= 1) & (n_b >= 1)

        welch_var = var_a / n_a + var_b / n_b
        welch_df = welch_var**2 / ((var_a / n_a) ** 2 / (n_a - 1) + (var_b / n_b) ** 2 / (n_b - 1))
        inv_n = 1 / n_a + 1 / n_b
        se = np.select([paired_own, paired_pooled, welch, pooled],
                       [np.sqrt(d_var / n_pairs), np.sqrt(2 * resid_var / n_pairs), np.sqrt(welch_var),
                        np.sqrt(pool_var * inv_n)], np.nan)
        df = np.select([paired_own, paired_pooled, welch, pooled],
                       [n_pairs - 1.0, resid_df, welch_df, pool_df], np.nan)
        unit_sd = np.where(paired, se * np.sqrt(n_pairs), se / np.sqrt(inv_n))
        diff = np.where(paired, d_mean, mean[..., ia] - mean[..., ib])
        method = np.select([paired_own, paired_pooled, welch, pooled], [1, 2, 3, 4], 0).astype(np.int64)
        # se == 0 (identical seeds): the sign alone decides; 0/0 is no evidence either way.
        z = np.where(se > 0, diff / se, np.sign(diff) * np.inf)
        z = np.where(np.isnan(z) & ~np.isnan(se), 0.0, z)
    safe_df = np.where(df > 0, df, 1.0)
    p_two = np.where(df > 0, 2 * stats.t.sf(np.abs(z), safe_df), np.nan)
    p_better = np.where(df > 0, stats.t.cdf(z, safe_df), np.nan)
    half = _t_quantile(alpha, df) * se
    return PairArrays(diff=diff, se=se, df=df, low=diff - half, high=diff + half, p=p_two,
                      p_a_better=p_better, unit_sd=unit_sd, method=method, n_a=n_a, n_b=n_b, n_pairs=n_pairs)


def holm(p: ArrayLike) -> FloatArray:
    """Holm's step-down adjusted p-values over the last axis (NaN counts as 1: an untested comparison).

    The i-th smallest of m p-values is multiplied by (m - i), i from 0; the running
    maximum keeps the adjusted values in the same order as the raw ones. scipy has
    only Benjamini-Hochberg (``false_discovery_control``), which controls a weaker
    error rate than a table of verdicts wants.
    """
    raw = np.asarray(p, dtype=np.float64)
    raw = np.where(np.isnan(raw), 1.0, raw)
    m = raw.shape[-1]
    order = np.argsort(raw, axis=-1, kind="stable")
    scaled = np.take_along_axis(raw, order, axis=-1) * (m - np.arange(m))
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled, axis=-1), 1.0)
    adjusted = np.empty_like(adjusted_sorted)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=-1)
    return adjusted


# ---------------------------------------------------------------------------
# Power and seeds needed
# ---------------------------------------------------------------------------


def t_test_power(n: ArrayLike, effect: ArrayLike, *, paired: ArrayLike, alpha: float = ALPHA) -> FloatArray:
    """Power of the two-sided t test with ``n`` seeds per row (pairs when paired).

    ``effect`` is |difference| / per-seed sd (of the differences when paired, of a
    row otherwise). Paired: df n - 1, noncentrality effect * sqrt(n); two-sample:
    df 2n - 2, noncentrality effect * sqrt(n / 2).
    """
    n_ = np.asarray(n, dtype=np.float64)
    e = np.abs(np.asarray(effect, dtype=np.float64))
    is_paired = np.asarray(paired, dtype=bool)
    df = np.where(is_paired, n_ - 1, 2 * n_ - 2)
    nc = np.where(is_paired, e * np.sqrt(n_), e * np.sqrt(n_ / 2))
    crit = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail as sf at -nc, not cdf(-crit, nc): scipy's nct.cdf returns NaN deep in the lower
    # tail (e.g. df 8, nc 9.8), which would silently break the bisection in seeds needed.
    return np.asarray(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc), dtype=np.float64)


def _seeds_needed_array(effect: FloatArray, paired: NDArray[np.bool_], alpha: float, power: float,
                        max_seeds: int) -> IntArray:
    """Smallest n in [2, max_seeds] with power >= target, by bisection (power grows with n); 0 when none."""
    e = np.abs(effect)
    finite = np.isfinite(e) & (e > 0)
    e_safe = np.where(finite, e, 1.0)
    lo = np.ones(e.shape, dtype=np.int64)  # n = 1 has no test
    hi = np.full(e.shape, max_seeds, dtype=np.int64)
    reachable = t_test_power(hi, e_safe, paired=paired, alpha=alpha) >= power
    while np.any(hi - lo > 1):
        mid = (lo + hi) // 2
        ok = t_test_power(mid, e_safe, paired=paired, alpha=alpha) >= power
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    needed = np.where(finite & reachable, hi, 0)
    return np.where(np.isinf(e), 2, needed)  # zero variance, nonzero difference: any test resolves it


def seeds_needed(diff: float, sd: float, *, paired: bool, alpha: float = ALPHA, power: float = POWER,
                 max_seeds: int = MAX_SEEDS) -> int | None:
    """Seeds per row (pairs, when paired) for ``power`` at two-sided ``alpha``; None if more than ``max_seeds``.

    ``sd`` is the per-seed standard deviation: of the per-seed differences when
    paired, of one row otherwise.
    """
    if not (np.isfinite(diff) and np.isfinite(sd)):
        return None
    effect = np.asarray(abs(diff) / sd if sd > 0 else (np.inf if diff != 0 else 0.0), dtype=np.float64)
    n = int(_seeds_needed_array(effect, np.asarray(paired), alpha, power, max_seeds))
    return n or None


# ---------------------------------------------------------------------------
# Dict API: what the tables call
# ---------------------------------------------------------------------------


def _table(scores: Scores) -> tuple[list[str], FloatArray]:
    """Rows in the given order, seeds sorted, NaN where a row lacks a seed (or its value is NaN)."""
    rows = list(scores)
    seeds = sorted({s for per_seed in scores.values() for s in per_seed})
    column = {s: j for j, s in enumerate(seeds)}
    values = np.full((len(rows), len(seeds)), np.nan)
    for i, row in enumerate(rows):
        for seed, value in scores[row].items():
            values[i, column[seed]] = value
    return rows, values


def _opt(x: float | np.floating | np.integer) -> float | None:
    return None if np.isnan(x) else float(x)


def row_intervals(scores: Scores, *, alpha: float = ALPHA, pool_at_most: int = POOL_AT_MOST
                  ) -> dict[str, RowInterval]:
    """Per row: mean, (1 - alpha) interval and n over its seeds (rows with no seed are left out)."""
    rows, values = _table(scores)
    r = row_arrays(values, alpha=alpha, pool_at_most=pool_at_most)
    return {row: RowInterval(row=row, n=int(r.n[i]), mean=float(r.mean[i]), sd=_opt(r.sd[i]),
                             low=_opt(r.low[i]), high=_opt(r.high[i]),
                             df=_opt(r.df[i]) if r.df[i] > 0 else None, pooled=bool(r.pooled[i]))
            for i, row in enumerate(rows) if r.n[i] > 0}


def default_comparisons(scores: Scores, baseline: str | None = None) -> list[tuple[str, str]]:
    """Each row against ``baseline`` (row, baseline), then each adjacent pair by mean (higher, lower), deduped.

    Rows without any seed are left out. Ties keep the rows' given order.
    """
    means = {row: float(np.nanmean(list(s.values()))) for row, s in scores.items()
             if any(not np.isnan(v) for v in s.values())}
    if baseline is not None and baseline not in means:
        raise ValueError(f"baseline {baseline!r} is not a row with results; rows: {', '.join(means)}")
    pairs: list[tuple[str, str]] = [(row, baseline) for row in means if baseline is not None and row != baseline]
    ranked = sorted(means, key=lambda row: -means[row])
    seen = {frozenset(p) for p in pairs}
    for higher, lower in zip(ranked, ranked[1:]):
        if frozenset((higher, lower)) not in seen:
            seen.add(frozenset((higher, lower)))
            pairs.append((higher, lower))
    return pairs


def compare(scores: Scores, pairs: Sequence[tuple[str, str]], *, alpha: float = ALPHA, power: float = POWER,
            pool_at_most: int = POOL_AT_MOST, max_seeds: int = MAX_SEEDS) -> list[Comparison]:
    """Test each (a, b) of ``pairs``, Holm-correct over all of them, and size the seeds each would need."""
    rows, values = _table(scores)
    index = {row: i for i, row in enumerate(rows)}
    unknown = sorted({r for pair in pairs for r in pair} - set(index))
    if unknown:
        raise ValueError(f"comparisons name rows without results: {', '.join(unknown)}")
    if not pairs:
        return []
    pa = pair_arrays(values, [index[a] for a, _ in pairs], [index[b] for _, b in pairs], alpha=alpha,
                     pool_at_most=pool_at_most)
    p_holm = holm(pa.p)
    is_paired = (pa.method == 1) | (pa.method == 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(pa.unit_sd > 0, np.abs(pa.diff) / pa.unit_sd, np.where(pa.diff != 0, np.inf, 0.0))
    effect = np.where(pa.method == 0, np.nan, effect)
    needed = _seeds_needed_array(effect, is_paired, alpha / len(pairs), power, max_seeds)
    return [Comparison(a=a, b=b, diff=float(pa.diff[i]), low=_opt(pa.low[i]), high=_opt(pa.high[i]),
                       method=METHODS[int(pa.method[i])], n_a=int(pa.n_a[i]), n_b=int(pa.n_b[i]),
                       n_pairs=int(pa.n_pairs[i]), df=_opt(pa.df[i]), p=_opt(pa.p[i]),
                       p_holm=None if np.isnan(pa.p[i]) else float(p_holm[i]),
                       resolved=bool(p_holm[i] <= alpha) and not np.isnan(pa.p[i]),
                       p_a_better=_opt(pa.p_a_better[i]), seeds_needed=int(needed[i]) or None)
            for i, (a, b) in enumerate(pairs)]


def summarize(comparisons: Sequence[Comparison]) -> OrderingSummary:
    """``k of m orderings resolved at n seeds`` (a range of seeds when the rows differ)."""
    counts = [n for c in comparisons for n in (c.n_a, c.n_b)] or [0]
    return OrderingSummary(resolved=sum(c.resolved for c in comparisons), total=len(comparisons),
                           min_seeds=min(counts), max_seeds=max(counts))


def analyze(scores: Scores, *, baseline: str | None = None, pairs: Sequence[tuple[str, str]] | None = None,
            alpha: float = ALPHA, power: float = POWER) -> StudyStatistics:
    """Row intervals, comparisons (``pairs``, else :func:`default_comparisons`) and the header's summary."""
    chosen = list(pairs) if pairs is not None else default_comparisons(scores, baseline)
    comparisons = compare(scores, chosen, alpha=alpha, power=power)
    return StudyStatistics(rows=row_intervals(scores, alpha=alpha), comparisons=comparisons,
                           summary=summarize(comparisons))


def as_frame(items: Iterable[RowInterval] | Iterable[Comparison]) -> pd.DataFrame:
    """One row per dataclass, one column per field (plus ``verdict`` for comparisons)."""
    records = []
    for item in items:
        record = asdict(item)
        if isinstance(item, Comparison):
            record["verdict"] = item.verdict
        records.append(record)
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------
# Seeds where they decide
# ---------------------------------------------------------------------------


def _wave_goal(c: Comparison, have: tuple[int, int]) -> int:
    """Seeds per row this comparison asks for in one wave: at most double, at least one more for the lagging row.

    Seeds needed is measured on few seeds and is noisy, so a wave never jumps
    straight to it; the next wave re-measures.
    """
    needed = 2 if c.method == "none" else (c.seeds_needed or 0)
    return max(min(needed, 2 * max(have)), min(have) + 1)


def next_seeds(comparisons: Sequence[Comparison], seeds: Mapping[str, int], max_trials: int) -> dict[str, int]:
    """Extra seeds per row for the next wave of ``harness run --until-resolved``; {} means stop.

    Only rows of unresolved comparisons get seeds; comparisons that could not
    resolve within MAX_SEEDS (seeds_needed None, e.g. equal rows) are given up.
    The cheapest comparisons (fewest seeds needed) are served first; a row in
    several comparisons gets the largest of their goals. ``seeds`` has every
    row's current seed count; ``max_trials`` caps the study's trials in all,
    counting those already run. New seeds should continue each row's numbering
    (seed n, n+1, ...) so rows keep sharing seeds and stay paired.
    """
    left = max_trials - sum(seeds.values())
    target = dict(seeds)
    open_ = [c for c in comparisons if not c.resolved and (c.seeds_needed is not None or c.method == "none")]
    for c in sorted(open_, key=lambda c: 2 if c.seeds_needed is None else c.seeds_needed):
        have = (seeds[c.a], seeds[c.b])
        for goal in range(_wave_goal(c, have), min(have), -1):  # shrink the goal until the budget fits
            cost = sum(max(goal - target[r], 0) for r in {c.a, c.b})
            if cost <= left:
                for r in {c.a, c.b}:
                    target[r] = max(target[r], goal)
                left -= cost
                break
    return {row: target[row] - seeds[row] for row in target if target[row] > seeds[row]}


# ---------------------------------------------------------------------------
# Where the noise comes from
# ---------------------------------------------------------------------------


def noise_components(correct: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Variances (fractions^2) of ``(..., seeds, clips)`` correctness: observed, seed, clip, valset.

    Two-way layout c[s, k] = mean + seed s + clip k + interaction. A seed's top-1
    varies across seeds by seed_var + interaction / clips; the interaction mean
    square (seeds x clips residual, by the sums-of-squares identity, no residual
    array) estimates it, and seed_var is the observed variance minus it, floored
    at 0 (method of moments, the usual random-effects estimator). valset is the
    bootstrap variance over clips of the row's mean top-1, in closed form: for a
    mean, the infinite-resample bootstrap variance is the plug-in variance / clips.
    """
    c = np.asarray(correct, dtype=np.float64)
    seeds, clips = c.shape[-2:]
    if seeds < 2 or clips < 2:
        raise ValueError(f"a noise split needs at least 2 seeds and 2 clips, got {seeds} and {clips}")
    seed_acc = c.mean(axis=-1)
    clip_acc = c.mean(axis=-2)
    grand = seed_acc.mean(axis=-1)
    ss_total = (c**2).sum(axis=(-2, -1)) - seeds * clips * grand**2
    ss_seed = clips * ((seed_acc - grand[..., None]) ** 2).sum(axis=-1)
    ss_clip = seeds * ((clip_acc - grand[..., None]) ** 2).sum(axis=-1)
    ms_interaction = np.clip(ss_total - ss_seed - ss_clip, 0.0, None) / ((seeds - 1) * (clips - 1))
    observed = ss_seed / clips / (seeds - 1)
    clip_part = ms_interaction / clips
    seed_part = np.clip(observed - clip_part, 0.0, None)
    valset = ((clip_acc - grand[..., None]) ** 2).mean(axis=-1) / clips
    return observed, seed_part, clip_part, valset


def _points(variance: float) -> float:
    """A variance of accuracy as a fraction -> standard deviation in percentage points."""
    return 100 * float(np.sqrt(variance))


def split_noise(correct: Mapping[int, ArrayLike]) -> NoiseSplit:
    """Split one row's seed-to-seed spread of top-1; ``correct`` maps seed -> per-clip correctness (same clip order)."""
    arrays = [np.asarray(correct[s], dtype=bool).ravel() for s in sorted(correct)]
    if len({a.size for a in arrays}) > 1:
        raise ValueError(f"every seed must be scored on the same clips, got {sorted({a.size for a in arrays})} clips")
    matrix = np.stack(arrays) if arrays else np.zeros((0, 0), dtype=bool)
    observed, seed_var, clip_var, valset = (float(x) for x in noise_components(matrix))
    clip_var = min(clip_var, observed)  # a part of the observed spread: when seed_var was floored, all of it
    more: Literal["seeds", "clips"] = "clips" if clip_var >= seed_var else "seeds"
    of_spread = f"of the spread (sd {{:.1f}} of {_points(observed):.1f} points)"
    if more == "clips":
        hint = (f"clip sampling is most {of_spread.format(_points(clip_var))}: more validation clips "
                "would help (they cost evaluation, not training)")
    else:
        hint = (f"seed-to-seed variance is most {of_spread.format(_points(seed_var))}: more seeds would help; "
                "more validation clips would not")
    return NoiseSplit(seeds=matrix.shape[0], clips=matrix.shape[1], top1=100 * float(matrix.mean()),
                      observed_sd=_points(observed), seed_sd=_points(seed_var), clip_sd=_points(clip_var),
                      valset_sd=_points(valset), more=more, hint=hint)
