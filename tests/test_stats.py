import numpy as np
import pytest

from playbook.stats import (
    AurocInterval,
    PairedDifference,
    auroc_interval,
    bootstrap_interval,
    bootstrap_mean_interval,
    describe_auroc,
    describe_effect,
    format_p_value,
    mcnemar_exact,
    paired_difference,
    proportion_interval,
)


def test_wilson_interval_matches_the_textbook_values():
    # Wilson score interval, z = 1.96: 8/10 -> (0.4902, 0.9433); 0/10 -> (0, 0.2775), never a point or below 0
    assert proportion_interval(8, 10) == pytest.approx((0.490, 0.943), abs=5e-4)
    assert proportion_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    low90, high90 = proportion_interval(8, 10, confidence=0.90)
    assert low90 > 0.490 and high90 < 0.943  # a lower confidence gives a narrower interval


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "argument"),
    [(1, 0, 0.95, "n"), (11, 10, 0.95, "successes"), (-1, 10, 0.95, "successes"), (5, 10, 1.0, "confidence")],
)
def test_proportion_interval_rejects_impossible_counts(successes, n, confidence, argument):
    with pytest.raises(ValueError, match=argument):
        proportion_interval(successes, n, confidence)


def test_bootstrap_interval_of_constant_values_is_that_value():
    assert bootstrap_mean_interval(np.full(50, 2.5)) == (2.5, 2.5)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean_like_the_normal_interval():
    values = np.random.default_rng(3).normal(10.0, 2.0, 400)
    low, high = bootstrap_mean_interval(values, seed=1)
    assert (low, high) == bootstrap_mean_interval(values, seed=1)
    assert (low, high) != bootstrap_mean_interval(values, seed=2)
    # for 400 normal values the bootstrap agrees with mean ± 1.96 standard errors to within a few percent of the width
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half_width, abs=0.05 * half_width)
    assert high == pytest.approx(values.mean() + half_width, abs=0.05 * half_width)


@pytest.mark.parametrize(("values", "argument"), [([], "values"), ([1.0], "values"), ([1.0, np.nan], "values")])
def test_bootstrap_interval_rejects_too_few_or_missing_values(values, argument):
    with pytest.raises(ValueError, match=argument):
        bootstrap_mean_interval(values)


def test_paired_difference_finds_a_strong_shift_and_its_size():
    rng = np.random.default_rng(0)
    before = rng.normal(3.0, 0.5, 300)  # units differ a lot from each other...
    after = before + 0.127 + rng.normal(0.0, 0.09, 300)  # ...but each moves by about 0.127
    effect = paired_difference(after, before)
    assert effect.n == 300
    assert effect.mean == pytest.approx((after - before).mean())
    assert effect.low < 0.127 < effect.high and effect.high - effect.low < 0.03
    assert effect.excludes_zero and effect.wilcoxon_p_value < 1e-10


def test_paired_difference_of_pure_noise_includes_zero():
    rng = np.random.default_rng(0)
    before = rng.normal(0.0, 1.0, 200)
    effect = paired_difference(before + rng.normal(0.0, 0.5, 200), before)
    assert effect.low < 0 < effect.high and not effect.excludes_zero
    assert effect.wilcoxon_p_value > 0.05


def test_paired_difference_with_no_change_at_all():
    effect = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (effect.mean, effect.low, effect.high, effect.wilcoxon_p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not effect.excludes_zero


def test_paired_difference_needs_the_same_units_before_and_after():
    with pytest.raises(ValueError, match="after and before"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="after - before"):
        paired_difference([], [])


def test_paired_difference_prints_mean_interval_and_n():
    effect = PairedDifference(mean=0.127, low=0.118, high=0.138, n=300, confidence=0.95, wilcoxon_p_value=1e-6)
    assert str(effect) == effect.describe() == "+0.127 [95% CI +0.118, +0.138], n=300"
    lower = PairedDifference(mean=-0.5, low=-0.75, high=-0.25, n=40, confidence=0.9, wilcoxon_p_value=0.01)
    assert lower.describe(digits=2) == "-0.50 [90% CI -0.75, -0.25], n=40"


def test_describe_effect_says_direction_only_outside_the_noise():
    higher = PairedDifference(mean=0.2, low=0.1, high=0.3, n=50, confidence=0.95, wilcoxon_p_value=0.001)
    lower = PairedDifference(mean=-0.2, low=-0.3, high=-0.1, n=50, confidence=0.95, wilcoxon_p_value=0.001)
    noise = PairedDifference(mean=0.05, low=-0.05, high=0.15, n=50, confidence=0.95, wilcoxon_p_value=0.4)
    assert describe_effect(higher, "the reward") == (
        "After − before, the reward is higher: +0.200 [95% CI +0.100, +0.300], n=50; the interval excludes 0, "
        "so this is outside the noise."
    )
    assert "the reward is lower: -0.200" in describe_effect(lower, "the reward")
    sentence = describe_effect(noise, "the reward")
    assert "within the noise at this sample size" in sentence and "higher" not in sentence
    assert "+0.050 [95% CI -0.050, +0.150], n=50" in sentence


def test_mcnemar_counts_and_exact_p_value():
    # 4 units went no -> yes, 1 yes -> no, 2 stayed yes, 3 stayed no: p = 2 * P(Binomial(5, 1/2) <= 1) = 12/32
    before = [False] * 4 + [True] + [True] * 2 + [False] * 3
    after = [True] * 4 + [False] + [True] * 2 + [False] * 3
    result = mcnemar_exact(before, after)
    assert (result.both, result.only_before, result.only_after, result.neither) == (2, 1, 4, 3)
    assert result.n == 10
    assert result.p_value == pytest.approx(0.375)
    assert str(result) == result.describe() == "4 better, 1 worse (exact McNemar p = 0.38)"


def test_mcnemar_without_discordant_pairs_and_with_a_lopsided_change():
    unchanged = mcnemar_exact([True, False, True], [True, False, True])
    assert (unchanged.only_before, unchanged.only_after, unchanged.p_value) == (0, 0, 1.0)
    lopsided = mcnemar_exact(np.zeros(12, dtype=bool), np.ones(12, dtype=bool))  # p = 2 / 2**12
    assert lopsided.p_value == pytest.approx(2 / 2**12)
    assert lopsided.describe() == "12 better, 0 worse (exact McNemar p < 0.001)"


def test_mcnemar_rejects_unpaired_or_non_binary_outcomes():
    with pytest.raises(ValueError, match="before and after"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="before"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match="after"):
        mcnemar_exact([0, 1], [0, 2])


def test_p_values_print_with_two_significant_figures():
    assert [format_p_value(p) for p in (0.375, 0.04123, 0.0004)] == ["p = 0.38", "p = 0.041", "p < 0.001"]


def test_bootstrap_interval_of_the_mean_with_bca_is_bootstrap_mean_interval():
    values = np.random.default_rng(3).normal(size=50)
    assert bootstrap_interval(values, np.mean, method="BCa") == bootstrap_mean_interval(values)


def test_bootstrap_interval_percentile_values_on_two_items():
    # two items 0 and 1: a resample's mean is 0, 1/2 or 1 with chances 1/4, 1/2, 1/4, so the central 95% is (0, 1)
    assert bootstrap_interval([0.0, 1.0], np.mean, draws=4000) == (0.0, 1.0)
    low, high = bootstrap_interval([0.0, 1.0], np.mean, confidence=0.4, draws=4000)  # central 40%: all 1/2
    assert (low, high) == (0.5, 0.5)


def test_bootstrap_interval_resamples_paired_arrays_row_for_row_and_returns_vectors():
    values = np.random.default_rng(0).normal(size=30)
    # paired: each resample takes the same rows of both arrays, so their difference is 0 in every resample
    assert bootstrap_interval((values, values), lambda a, b: np.mean(a - b)) == (0.0, 0.0)
    rows = np.stack([values, 2 * values], axis=1)  # one row per item, two columns
    low, high = bootstrap_interval(rows, lambda r: r.mean(0), draws=2000)
    assert low[1] == pytest.approx(2 * low[0]) and high[1] == pytest.approx(2 * high[0])
    assert bootstrap_interval(values, np.mean, seed=1) == bootstrap_interval(values, np.mean, seed=1)


@pytest.mark.parametrize(
    ("items", "message"),
    [(([1.0, 2.0], [1.0]), "pair up row for row"), ([1.0], "at least 2 independent units")],
)
def test_bootstrap_interval_names_bad_input(items, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(items, np.mean)


def test_bootstrap_interval_can_leave_out_resamples_where_the_statistic_is_undefined():
    # the mean of the items above 0; a resample of [-1, 2] drawing -1 twice (1 in 4) has none
    def mean_of_positive(values):
        return values[values > 0].mean() if (values > 0).any() else np.nan

    assert bootstrap_interval(np.array([-1.0, 2.0]), mean_of_positive, omit_undefined=True) == (2.0, 2.0)
    low, high = bootstrap_interval(np.array([-1.0, -2.0]), mean_of_positive, omit_undefined=True)
    assert np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="needs method='percentile'"):
        bootstrap_interval([1.0, 2.0], np.mean, method="BCa", omit_undefined=True)


def test_auroc_interval_of_a_hand_counted_case_is_seeded_and_brackets_it():
    # 9 (positive, negative) pairs: 0.9 beats all 3; 0.4 beats 0.1 and 0.3; 0.3 beats 0.1 and ties 0.3 (half)
    scores, labels = [0.9, 0.4, 0.3, 0.5, 0.1, 0.3], [True, True, True, False, False, False]
    result = auroc_interval(scores, labels, draws=100)
    assert result.auroc == pytest.approx(6.5 / 9)
    assert (result.positives, result.negatives) == (3, 3)
    assert 0 <= result.low <= result.auroc <= result.high <= 1
    assert result == auroc_interval(scores, labels, draws=100)


def test_auroc_interval_of_perfect_separation_is_one_in_every_stratified_resample():
    result = auroc_interval([3.0, 4.0, 5.0, 0.0, 1.0, 2.0], [1, 1, 1, 0, 0, 0], draws=50)
    assert (result.auroc, result.low, result.high) == (1.0, 1.0, 1.0)
    assert result.excludes_chance


def test_auroc_interval_width_matches_the_hanley_mcneil_standard_error():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(25, bool), np.zeros(15, bool)]
    scores = rng.normal(size=40) + 0.8 * labels
    result = auroc_interval(scores, labels, draws=400)
    area = result.auroc
    q1, q2 = area / (2 - area), 2 * area**2 / (1 + area)
    variance = (area * (1 - area) + 24 * (q1 - area**2) + 14 * (q2 - area**2)) / (25 * 15)
    assert (result.high - result.low) / 2 == pytest.approx(1.96 * np.sqrt(variance), rel=0.3)


@pytest.mark.parametrize(
    ("scores", "labels", "argument"),
    [
        ([0.1, 0.2, 0.3], [True, False, False], "at least 2 positives"),
        ([0.1, 0.2, 0.3], [True, False], "one per score"),
        ([0.1, 0.2, 0.3], [2, 0, 1], "yes/no"),
    ],
)
def test_auroc_interval_rejects_a_missing_class_or_unpaired_labels(scores, labels, argument):
    with pytest.raises(ValueError, match=argument):
        auroc_interval(scores, labels)


def test_describe_auroc_says_direction_only_outside_the_noise():
    signal = AurocInterval(auroc=0.8, low=0.65, high=0.92, positives=25, negatives=15, confidence=0.95)
    noise = AurocInterval(auroc=0.6, low=0.42, high=0.77, positives=25, negatives=15, confidence=0.95)
    assert describe_auroc(signal, "the log-probability", "right answers", "wrong answers") == (
        "The log-probability tends to be higher for right answers than for wrong answers: AUROC 0.80 "
        "[95% CI 0.65, 0.92], 25 positive / 15 negative; the interval excludes 0.5, so this separation is outside "
        "the noise."
    )
    sentence = describe_auroc(noise, "the log-probability", "right answers", "wrong answers")
    assert "does not separate right answers from wrong answers beyond the noise" in sentence
    assert "higher" not in sentence and "AUROC 0.60 [95% CI 0.42, 0.77]" in sentence
