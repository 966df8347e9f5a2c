"""harness.stats against simulation (issue 22, point 6) and against hand-worked numbers.

Simulated tables are value = row mean + seed effect + noise, with the seed
effect shared by every row (same seed = same data order and initialisation) or
each row on its own seeds. Every simulation uses a fixed numpy seed, so the
rates below are the same on every run; the bounds leave several Monte Carlo
standard errors (about 0.2 points at 95% over 10,000 tables) of room.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from harness import stats as hs

TABLES = 10_000


def simulate(rng: np.random.Generator, means: list[float], seeds: int, *, seed_sd: float = 0.0,
             shared: bool = True, tables: int = TABLES) -> np.ndarray:
    """``(tables, rows, seeds)`` values, noise sd 1; unshared: row r on seeds r*seeds.., NaN elsewhere."""
    mu = np.asarray(means, dtype=float)[None, :, None]
    rows = mu.shape[1]
    if shared:
        return mu + rng.normal(0, seed_sd, (tables, 1, seeds)) + rng.normal(0, 1, (tables, rows, seeds))
    values = np.full((tables, rows, rows * seeds), np.nan)
    for r in range(rows):
        own = rng.normal(0, seed_sd, (tables, seeds)) + rng.normal(0, 1, (tables, seeds))
        values[:, r, r * seeds:(r + 1) * seeds] = mu[0, r, 0] + own
    return values


def all_pairs(rows: int) -> tuple[list[int], list[int]]:
    a, b = zip(*[(i, j) for i in range(rows) for j in range(i + 1, rows)])
    return list(a), list(b)


# ---------------------------------------------------------------------------
# Simulation: coverage, verdicts, false resolutions, power
# ---------------------------------------------------------------------------

DESIGNS = [  # (seeds, seed_sd, shared): pooled at 2-3 seeds, own variance at 5; with and without a seed effect
    (2, 0.0, True), (2, 1.0, True), (3, 1.0, True), (5, 1.0, True), (2, 0.0, False), (5, 0.0, False),
]


@pytest.mark.parametrize("seeds, seed_sd, shared", DESIGNS)
def test_row_intervals_cover_the_true_mean_95_percent(seeds: int, seed_sd: float, shared: bool) -> None:
    rng = np.random.default_rng([100, seeds, int(10 * seed_sd), shared])
    means = [0.0, 1.0, 3.0, 3.0, 6.0, 10.0]
    values = simulate(rng, means, seeds, seed_sd=seed_sd, shared=shared)
    r = hs.row_arrays(values)
    truth = np.asarray(means)[None, :]
    covered = (r.low <= truth) & (truth <= r.high)
    assert r.pooled.all() == (seeds <= hs.POOL_AT_MOST)
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()


def test_a_one_seed_row_gets_a_pooled_interval_that_covers() -> None:
    rng = np.random.default_rng(7)
    values = simulate(rng, [0.0, 2.0, 4.0, 6.0, 8.0], 2, seed_sd=0.5)
    values[:, 0, 1] = np.nan  # row 0 lost its second seed (a failed trial) in every table
    r = hs.row_arrays(values)
    assert (r.n[:, 0] == 1).all() and r.pooled[:, 0].all()
    covered = (r.low[:, 0] <= 0.0) & (0.0 <= r.high[:, 0])
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()


# A seed effect 3x the noise: the paired comparisons cancel it. (Row intervals do not: at 2 seeds they
# cover about 90% then, since the shared part has 1 df; see the harness.stats docstring.)
@pytest.mark.parametrize("seeds, seed_sd, shared", DESIGNS + [(2, 3.0, True)])
def test_difference_intervals_cover_the_true_difference_95_percent(seeds: int, seed_sd: float,
                                                                   shared: bool) -> None:
    rng = np.random.default_rng([200, seeds, int(10 * seed_sd), shared])
    means = np.array([0.0, 1.0, 3.0, 3.0, 6.0])
    values = simulate(rng, list(means), seeds, seed_sd=seed_sd, shared=shared)
    a, b = all_pairs(len(means))
    pa = hs.pair_arrays(values, a, b)
    truth = (means[a] - means[b])[None, :]
    covered = (pa.low <= truth) & (truth <= pa.high)
    expected = {2: "paired-pooled", 3: "paired-pooled", 5: "paired"} if shared else {2: "pooled", 5: "welch"}
    assert {hs.METHODS[m] for m in np.unique(pa.method)} == {expected[seeds]}
    assert 0.93 <= covered.mean() <= 0.97, covered.mean()


GAP_MEANS = [0.0, 2.0, 4.0, 7.0]  # every pair at least 2 sd apart
GAP_PAIRS = ([1, 2, 3, 2, 3], [0, 0, 0, 1, 2])  # each row vs the baseline, then adjacent pairs not already there


@pytest.mark.parametrize("shared", [True, False])
def test_verdicts_on_gaps_of_2_sd_at_the_needed_seeds_are_right(shared: bool) -> None:
    m = len(GAP_PAIRS[0])
    # Shared: seed effect sd 1 cancels in the pairs, differences have sd sqrt(2). Unshared: rows have sd 1.
    unit_sd = math.sqrt(2) if shared else 1.0
    n = hs.seeds_needed(2.0, unit_sd, paired=shared, alpha=hs.ALPHA / m)
    assert n is not None and 4 <= n <= 12
    values = simulate(np.random.default_rng(300), GAP_MEANS, n, seed_sd=1.0 if shared else 0.0, shared=shared)
    pa = hs.pair_arrays(values, *GAP_PAIRS)
    resolved = hs.holm(pa.p) <= hs.ALPHA
    truth = np.sign(np.asarray(GAP_MEANS)[GAP_PAIRS[0]] - np.asarray(GAP_MEANS)[GAP_PAIRS[1]])
    right_order = np.sign(pa.diff) == truth
    assert right_order.mean() >= 0.95, right_order.mean()  # the order the table prints
    assert (resolved & ~right_order).mean() <= 0.005  # a resolved verdict all but never points the wrong way
    gap_2 = np.abs(np.asarray(GAP_MEANS)[GAP_PAIRS[0]] - np.asarray(GAP_MEANS)[GAP_PAIRS[1]]) == 2
    assert resolved[:, gap_2].mean() >= 0.78, resolved[:, gap_2].mean()  # the promised 80% power, less MC noise


@pytest.mark.parametrize("seeds, seed_sd, shared", DESIGNS + [(8, 1.0, True)])
def test_equal_rows_are_rarely_called_resolved(seeds: int, seed_sd: float, shared: bool) -> None:
    rng = np.random.default_rng([400, seeds, int(10 * seed_sd), shared])
    values = simulate(rng, [5.0] * 5, seeds, seed_sd=seed_sd, shared=shared)
    pa = hs.pair_arrays(values, *all_pairs(5))
    resolved = hs.holm(pa.p) <= hs.ALPHA
    assert resolved.mean() <= 0.05, resolved.mean()
    assert resolved.any(axis=1).mean() <= 0.06  # Holm: at most alpha of tables claim any false ordering


@pytest.mark.parametrize("effect, paired", [(2.0, False), (1.0, False), (1.0, True), (0.6, True)])
def test_seeds_needed_matches_a_simulated_power_curve_within_one_seed(effect: float, paired: bool) -> None:
    needed = hs.seeds_needed(effect, 1.0, paired=paired)
    assert needed is not None
    rng = np.random.default_rng(500 + needed)
    simulated_power = {}
    for n in range(max(2, needed - 2), needed + 3):
        if paired:  # a large seed effect shared by both rows cancels; the differences have sd 1
            base = rng.normal(0, 3, (TABLES, n))
            values = np.stack([base + effect + rng.normal(0, 1, (TABLES, n)), base], axis=1)
        else:
            values = simulate(rng, [effect, 0.0], n, shared=False)
        pa = hs.pair_arrays(values, [0], [1])
        simulated_power[n] = float((pa.p[:, 0] <= hs.ALPHA).mean())
    first = min((n for n, power in simulated_power.items() if power >= hs.POWER), default=needed + 3)
    assert abs(first - needed) <= 1, (needed, simulated_power)


def test_t_test_power_agrees_with_simulating_the_t_test() -> None:
    rng = np.random.default_rng(600)
    x = rng.normal(0.8, 1, (TABLES, 12))
    simulated = (stats.ttest_1samp(x, 0, axis=1).pvalue <= 0.05).mean()
    assert abs(float(hs.t_test_power(12, 0.8, paired=True)) - simulated) < 0.015


# ---------------------------------------------------------------------------
# Noise split: simulated per-clip correctness
# ---------------------------------------------------------------------------


def simulate_clips(rng: np.random.Generator, rows: int, seeds: int, clips: int, seed_sd: float) -> tuple:
    """Correctness (rows, seeds, clips): clip difficulty shared by seeds plus a per-seed shift of accuracy."""
    difficulty = rng.uniform(0.2, 0.9, (rows, 1, clips))
    shift = rng.normal(0, seed_sd, (rows, seeds, 1))
    q = np.clip(difficulty + shift, 0, 1)
    return rng.random(q.shape) < q, q


@pytest.mark.parametrize("seed_sd", [0.0, 0.03])
def test_noise_split_recovers_the_planted_seed_and_clip_variances(seed_sd: float) -> None:
    correct, q = simulate_clips(np.random.default_rng(700), 2000, 4, 400, seed_sd)
    observed, seed_var, clip_var, _ = hs.noise_components(correct)
    planted_clip = (q * (1 - q)).mean(axis=(1, 2)) / 400  # Bernoulli noise of a seed's top-1 over 400 clips
    assert clip_var.mean() == pytest.approx(planted_clip.mean(), rel=0.03)
    assert observed.mean() == pytest.approx(seed_sd**2 + planted_clip.mean(), rel=0.05)
    if seed_sd:
        assert seed_var.mean() == pytest.approx(seed_sd**2, rel=0.10)
    else:  # unbiased before the floor at 0; the floor alone lifts the mean, to about 0.3 of the clip part at 4 seeds
        assert abs(observed.mean() - clip_var.mean()) < 0.03 * clip_var.mean()
        assert seed_var.mean() < 0.4 * clip_var.mean()


def test_noise_split_valset_sd_is_the_bootstrap_over_clips() -> None:
    rng = np.random.default_rng(800)
    correct, _ = simulate_clips(rng, 1, 3, 250, 0.02)
    split = hs.split_noise({s: correct[0, s] for s in range(3)})
    resamples = rng.integers(0, 250, (4000, 250))
    boot_means = correct[0][:, resamples].mean(axis=(0, 2)) * 100  # row mean top-1 per resample
    assert split.valset_sd == pytest.approx(boot_means.std(), rel=0.05)
    assert split.clips == 250 and split.seeds == 3
    assert split.top1 == pytest.approx(100 * correct.mean())


def test_noise_split_hints_point_at_the_larger_part() -> None:
    rng = np.random.default_rng(900)
    clip_noise, _ = simulate_clips(rng, 1, 5, 250, 0.0)
    seed_noise, _ = simulate_clips(rng, 1, 5, 20_000, 0.05)
    by_clips = hs.split_noise(dict(enumerate(clip_noise[0])))
    by_seeds = hs.split_noise(dict(enumerate(seed_noise[0])))
    assert by_clips.more == "clips" and "more validation clips would help" in by_clips.hint
    assert by_seeds.more == "seeds" and "more seeds would help" in by_seeds.hint
    for split in (by_clips, by_seeds):
        assert split.observed_sd**2 == pytest.approx(split.seed_sd**2 + split.clip_sd**2)
    with pytest.raises(ValueError, match="same clips"):
        hs.split_noise({0: np.ones(10, bool), 1: np.ones(11, bool)})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        hs.split_noise({0: np.ones(10, bool)})


# ---------------------------------------------------------------------------
# Hand-worked numbers
# ---------------------------------------------------------------------------

T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 df (printed tables: 4.303)


def test_pooled_interval_worked_by_hand() -> None:
    # Three rows on their own seeds: pooled variance ((1-2)^2+(3-2)^2 + (4-6)^2+(8-6)^2) / (1+1) = 5, df 2.
    scores = {"A": {0: 1.0, 1: 3.0}, "B": {2: 4.0, 3: 8.0}, "C": {4: 10.0}}
    rows = hs.row_intervals(scores)
    assert rows["A"].pooled and rows["A"].df == 2 and rows["A"].sd == pytest.approx(math.sqrt(2))
    assert rows["A"].half_width == pytest.approx(T_975_DF2 * math.sqrt(5 / 2))  # 6.8031
    assert rows["C"].n == 1 and rows["C"].sd is None
    c_half = T_975_DF2 * math.sqrt(5)  # 9.6210
    assert (rows["C"].low, rows["C"].high) == pytest.approx((10 - c_half, 10 + c_half))


def test_pooled_df_is_satterthwaite_when_rows_share_seeds() -> None:
    # Rows A = [1, 3], B = [4, 8] on seeds 0, 1. Within-row SS 2 + 8 = 10 over 2 df: variance 5.
    # Rows + seeds model: differences -3, -5 -> residual SS ((1)^2 + (1)^2) / 2 = 1 (1 df); seed SS 9 (1 df).
    # Satterthwaite: 5^2 / ((9/2)^2 / 1 + (1/2)^2 / 1) = 25 / 20.5.
    p = hs.pool(np.array([[1.0, 3.0], [4.0, 8.0]]))
    assert float(p.var) == pytest.approx(5.0) and float(p.df) == pytest.approx(25 / 20.5)
    assert float(p.resid_var) == pytest.approx(1.0) and float(p.resid_df) == 1
    unshared = hs.pool(np.array([[1.0, 3.0, np.nan, np.nan], [np.nan, np.nan, 4.0, 8.0]]))
    assert float(unshared.df) == 2 and float(unshared.resid_df) == 0 and np.isnan(unshared.resid_var)


def test_additive_residual_matches_the_two_way_anova_and_handles_a_missing_trial() -> None:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(4, 5))
    resid = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
    p = hs.pool(table)
    assert float(p.resid_var) == pytest.approx((resid**2).sum() / (3 * 4)) and float(p.resid_df) == 12
    # Two rows, B missing seed 2: the extra trial fits exactly, the residual is the paired one on seeds 0, 1.
    two = np.array([[1.0, 3.0, 7.0], [4.0, 8.0, np.nan]])
    p2 = hs.pool(two)
    assert float(p2.resid_var) == pytest.approx(1.0) and float(p2.resid_df) == 1
    with pytest.raises(ValueError, match="same trials"):
        hs.pool(np.stack([two, np.array([[1.0, np.nan, 7.0], [4.0, 8.0, 2.0]])]))


def test_comparisons_match_scipy_t_tests() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(1, 1, 5), rng.normal(0, 1, 5)
    cases = [
        ({"A": dict(enumerate(a)), "B": dict(enumerate(b))}, "paired", stats.ttest_rel(a, b)),
        ({"A": dict(enumerate(a)), "B": {s + 5: v for s, v in enumerate(b)}}, "welch",
         stats.ttest_ind(a, b, equal_var=False)),
        ({"A": dict(enumerate(a[:2])), "B": dict(enumerate(b[:2]))}, "paired-pooled", stats.ttest_rel(a[:2], b[:2])),
        ({"A": dict(enumerate(a[:3])), "B": {s + 5: v for s, v in enumerate(b[:2])}}, "pooled",
         stats.ttest_ind(a[:3], b[:2])),
    ]
    for scores, method, reference in cases:
        (c,) = hs.compare(scores, [("A", "B")])
        assert c.method == method
        assert c.p == pytest.approx(reference.pvalue)
        assert (c.low, c.high) == pytest.approx(tuple(reference.confidence_interval(0.95)))
        assert c.p_a_better is not None
        assert c.p == pytest.approx(2 * min(c.p_a_better, 1 - c.p_a_better))


def test_holm_on_known_p_values() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06.
    assert hs.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert hs.holm([0.5, np.nan]) == pytest.approx([1.0, 1.0])  # an untested comparison counts as p = 1
    assert hs.holm([[0.01, 0.02], [0.04, 0.001]]) == pytest.approx(np.array([[0.02, 0.02], [0.04, 0.002]]))


def test_seeds_needed_reproduces_the_textbook_figures() -> None:
    # Cohen's tables, two-sided alpha 0.05, power 0.8: two-sample d 0.5 -> 64, 0.8 -> 26, 1 -> 17;
    # one-sample (paired) d 0.5 -> 34.
    assert [hs.seeds_needed(d, 1.0, paired=False) for d in (0.5, 0.8, 1.0)] == [64, 26, 17]
    assert hs.seeds_needed(-0.5, 1.0, paired=True) == 34
    assert hs.seeds_needed(0.0, 1.0, paired=False) is None
    assert hs.seeds_needed(0.01, 1.0, paired=False) is None  # over MAX_SEEDS
    assert hs.seeds_needed(1.0, 0.0, paired=True) == 2


def test_identical_rows_and_missing_variance_are_handled() -> None:
    same = {"A": {0: 50.0, 1: 60.0}, "B": {0: 50.0, 1: 60.0}, "C": {0: 40.0, 1: 45.0}}
    (ab,) = hs.compare(same, [("A", "B")])
    assert ab.diff == 0 and ab.p == pytest.approx(1.0) and ab.p_a_better == pytest.approx(0.5)
    assert not ab.resolved and ab.seeds_needed is None and ab.verdict == "A ? B"
    lone = {"A": {0: 50.0}, "B": {1: 40.0}}
    (c,) = hs.compare(lone, [("A", "B")])
    assert c.method == "none" and c.p is None and c.low is None and not c.resolved
    assert hs.row_intervals(lone)["A"].low is None
    with pytest.raises(ValueError, match="without results: Z"):
        hs.compare(same, [("A", "Z")])


def test_dict_api_matches_the_vectorised_core() -> None:
    values = simulate(np.random.default_rng(3), [0.0, 1.0, 2.0], 3, seed_sd=1.0, tables=1)[0]
    scores = {name: dict(enumerate(values[i])) for i, name in enumerate("ABC")}
    pa = hs.pair_arrays(values, [0, 1], [2, 2])
    comparisons = hs.compare(scores, [("A", "C"), ("B", "C")])
    assert [c.p for c in comparisons] == pytest.approx(list(pa.p))
    assert [c.p_holm for c in comparisons] == pytest.approx(list(hs.holm(pa.p)))
    rows = hs.row_intervals(scores)
    assert [rows[n].low for n in "ABC"] == pytest.approx(list(hs.row_arrays(values).low))


def test_default_comparisons_baseline_then_adjacent_deduped() -> None:
    scores = {"TSN": {0: 10.0}, "A": {0: 30.0}, "B": {0: 20.0}, "C": {0: 25.0}, "Empty": {}}
    assert hs.default_comparisons(scores, "TSN") == [
        ("A", "TSN"), ("B", "TSN"), ("C", "TSN"), ("A", "C"), ("C", "B")]  # (B, TSN) adjacent: already there
    assert hs.default_comparisons(scores) == [("A", "C"), ("C", "B"), ("B", "TSN")]
    with pytest.raises(ValueError, match="baseline 'X'"):
        hs.default_comparisons(scores, "X")


def test_analyze_summary_line() -> None:
    scores = {"TSN": {0: 10.0, 1: 11.0}, "A": {0: 60.0, 1: 61.0}, "B": {0: 60.5, 1: 60.0}}
    st = hs.analyze(scores, baseline="TSN")
    assert str(st.summary) == "2 of 3 orderings resolved at 2 seeds"
    frame = hs.as_frame(st.comparisons)
    assert list(frame["verdict"]) == ["A > TSN", "B > TSN", "A ? B"]
    uneven = hs.summarize([dataclasses.replace(c, n_b=5) for c in st.comparisons])
    assert str(uneven) == "2 of 3 orderings resolved at 2-5 seeds"


def comparison(a: str, b: str, *, resolved: bool = False, needed: int | None = 10, n: tuple[int, int] = (2, 2),
               method: hs.Method = "pooled") -> hs.Comparison:
    return hs.Comparison(a=a, b=b, diff=1.0, low=None, high=None, method=method, n_a=n[0], n_b=n[1], n_pairs=0,
                         df=None, p=0.5, p_holm=0.5, resolved=resolved, p_a_better=0.6, seeds_needed=needed)


def test_next_seeds_spends_a_wave_only_on_unresolved_rows() -> None:
    seeds = {"TSN": 2, "A": 2, "B": 2, "C": 2}
    wave = hs.next_seeds([comparison("A", "TSN", resolved=True), comparison("B", "C", needed=3),
                          comparison("A", "B", needed=None)], seeds, max_trials=100)
    assert wave == {"B": 1, "C": 1}  # (A, TSN) resolved, (A, B) hopeless; (B, C) needs 3
    wave = hs.next_seeds([comparison("B", "C", needed=40)], seeds, max_trials=100)
    assert wave == {"B": 2, "C": 2}  # at most double per wave: the needed figure is re-measured
    wave = hs.next_seeds([comparison("B", "C", needed=40), comparison("A", "TSN", needed=6)], seeds, max_trials=13)
    assert wave == {"A": 2, "TSN": 2}  # cheapest first; 1 trial left cannot give (B, C) a shared seed
    assert hs.next_seeds([comparison("B", "C", needed=40)], seeds, max_trials=8) == {}  # budget spent
    assert hs.next_seeds([comparison("B", "C", needed=None, method="none")], {"B": 1, "C": 1}, 10) == {"B": 1, "C": 1}


def test_next_seeds_lets_a_lagging_row_catch_up() -> None:
    wave = hs.next_seeds([comparison("A", "B", needed=5, n=(6, 2))], {"A": 6, "B": 2}, max_trials=100)
    assert wave == {"B": 3}
