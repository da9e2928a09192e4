"""Effects with their uncertainty: intervals and paired tests for the numbers the notebooks print.

Every comparison in the course is measured on a few dozen to a few hundred prompts, so a difference of means alone
says little: these helpers give each effect its interval (and a paired test) so a notebook can say whether it is
outside the noise. The statistics are ``scipy.stats``'; this module only picks the methods, checks the inputs and
words the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score

DRAWS = 10_000  # bootstrap resamples: between seeds the interval's ends move by about 1% of its width
RESAMPLED_VALUES_PER_BATCH = 2_000_000  # bounds the bootstrap's (resamples × values) array to about 16 MB


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def _as_values(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a 1-D float array of at least two finite numbers (one value has no spread to measure)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if len(array) < 2:
        raise ValueError(f"{name} needs at least 2 values, got {len(array)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _as_pair(first: ArrayLike, second: ArrayLike, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``first`` and ``second`` as arrays measured on the same units, in the same order (so the same shape)."""
    first_array, second_array = np.asarray(first), np.asarray(second)
    if first_array.shape != second_array.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must pair up unit for unit: {names[0]} has shape {first_array.shape}, "
            f"{names[1]} {second_array.shape}"
        )
    return first_array, second_array


def format_p_value(p_value: float) -> str:
    """``p = 0.38``, ``p = 0.0041``, or ``p < 0.001``: two significant figures, which is all a p-value carries."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"


def proportion_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a rate of ``successes`` out of ``n``.

    Wilson rather than the normal approximation (p ± z·√(p(1−p)/n)) because the course's rates are often near 0 or
    1 on small n, where the normal interval collapses to a point or spills outside [0, 1].
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    _check_confidence(confidence)
    interval = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_mean_interval(
    values: ArrayLike, confidence: float = 0.95, draws: int = DRAWS, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``values`` (one value per independent unit, e.g. per prompt).

    BCa (bias-corrected and accelerated) rather than the plain percentile interval: it corrects for the skew of the
    bootstrap distribution, which per-prompt scores have at the course's small sample sizes, and its coverage is
    closer to the nominal level. Its one failure, values with no spread (the jackknife's acceleration is 0/0), is
    answered directly: every resample's mean is that value, so the interval is (value, value). Its cost, a jackknife
    quadratic in the number of values, is about a second for 10,000 values; the course's comparisons have hundreds.
    Same ``seed``, same interval.
    """
    array = _as_values(values, "values")
    _check_confidence(confidence)
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    if np.ptp(array) == 0:
        return float(array[0]), float(array[0])
    result = stats.bootstrap(
        (array,),
        np.mean,
        n_resamples=draws,
        batch=max(1, RESAMPLED_VALUES_PER_BATCH // len(array)),
        confidence_level=confidence,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_interval(
    items: ArrayLike | tuple[ArrayLike, ...],
    statistic: Callable[..., float | np.ndarray],
    *,
    confidence: float = 0.95,
    draws: int = DRAWS,
    seed: int = 0,
    method: Literal["percentile", "BCa"] = "percentile",
    omit_undefined: bool = False,
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval of any ``statistic`` of independent items: resample the items with replacement,
    recompute ``statistic`` on each resample, and read the interval off those values (``scipy.stats.bootstrap``).

    ``items`` is one array, or a tuple of arrays that pair up item for item along their first axis (a confidence and a
    correctness per question; a row of per-bin counts per document): each resample takes the same rows of every
    array, and ``statistic(*arrays)`` gets those rows. Whatever is one row must be one independent unit: tokens of
    the same text are not, so resample the texts. ``statistic`` may return a vector (one interval per entry).

    ``method="percentile"`` (the central ``confidence`` share of the resampled values) suits statistics that are
    not smooth in the data, such as a binned ECE; ``"BCa"`` (as :func:`bootstrap_mean_interval`) corrects for bias
    and skew where the statistic is smooth, e.g. a mean. ``omit_undefined=True`` (percentile only) leaves out the
    resamples where the statistic is NaN, e.g. the accuracy of a bin a resample leaves empty: the interval is then
    that of the resamples where it is defined (NaN only if it never is). Same ``seed``, same interval.
    """
    arrays = [np.asarray(array) for array in items] if isinstance(items, tuple) else [np.asarray(items)]
    sizes = {len(array) for array in arrays}
    if len(sizes) != 1:
        raise ValueError(f"items: the arrays must pair up row for row, got lengths {sorted(sizes)}")
    size = sizes.pop()
    if size < 2:
        raise ValueError(f"items needs at least 2 independent units to resample, got {size}")
    _check_confidence(confidence)
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")
    if method not in ("percentile", "BCa"):
        raise ValueError(f"method={method!r}: use 'percentile' or 'BCa'")
    if omit_undefined and method != "percentile":
        raise ValueError("omit_undefined=True needs method='percentile' (BCa has no rule for undefined resamples)")

    def on_rows(rows: np.ndarray) -> float | np.ndarray:
        return statistic(*(array[rows] for array in arrays))

    with warnings.catch_warnings():
        if omit_undefined:  # NaN resamples make scipy warn of a degenerate distribution; they are handled below
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.arange(size),),
            on_rows,
            vectorized=False,
            n_resamples=draws,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if omit_undefined:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": the statistic is never defined
            low, high = np.nanpercentile(
                result.bootstrap_distribution, [50 * (1 - confidence), 50 * (1 + confidence)], axis=-1
            )
    if np.ndim(low) == 0:
        return float(low), float(high)
    return np.asarray(low, dtype=float), np.asarray(high, dtype=float)


@dataclass(frozen=True)
class PairedDifference:
    """The mean of after − before over paired units, its bootstrap interval, and a Wilcoxon signed-rank p-value."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    wilcoxon_p_value: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below 0, i.e. the change is outside the noise."""
        return self.low > 0 or self.high < 0

    def describe(self, digits: int = 3) -> str:
        """``+0.127 [95% CI +0.118, +0.138], n=300``."""
        level = f"{self.confidence * 100:g}%"
        return f"{self.mean:+.{digits}f} [{level} CI {self.low:+.{digits}f}, {self.high:+.{digits}f}], n={self.n}"

    def __str__(self) -> str:
        return self.describe()


def paired_difference(
    after: ArrayLike,
    before: ArrayLike,
    confidence: float = 0.95,
    draws: int = DRAWS,
    seed: int = 0,
) -> PairedDifference:
    """How ``after`` differs from ``before`` when both were measured on the same units (prompts, conversations).

    Pairing removes the units' own spread (some prompts are hard before and after), so the interval is that of the
    per-unit differences' mean (``bootstrap_mean_interval``), not two separate intervals compared by eye. The
    Wilcoxon signed-rank p-value is a second opinion that does not lean on the mean: differences of exactly 0 are
    dropped (scipy's default), and if every difference is 0 the p-value is 1.
    """
    after_array, before_array = _as_pair(after, before, ("after", "before"))
    differences = _as_values(after_array.astype(float) - before_array.astype(float), "after - before")
    low, high = bootstrap_mean_interval(differences, confidence=confidence, draws=draws, seed=seed)
    p_value = 1.0 if not differences.any() else float(stats.wilcoxon(differences).pvalue)
    return PairedDifference(
        mean=float(differences.mean()),
        low=low,
        high=high,
        n=len(differences),
        confidence=confidence,
        wilcoxon_p_value=p_value,
    )


@dataclass(frozen=True)
class McNemarResult:
    """Paired yes/no outcomes counted by how they changed, and the exact McNemar p-value of the change."""

    both: int
    only_before: int
    only_after: int
    neither: int
    p_value: float

    @property
    def n(self) -> int:
        return self.both + self.only_before + self.only_after + self.neither

    def describe(self) -> str:
        """``4 better, 1 worse (exact McNemar p = 0.38)``: better means yes only after, worse yes only before."""
        return f"{self.only_after} better, {self.only_before} worse (exact McNemar {format_p_value(self.p_value)})"

    def __str__(self) -> str:
        return self.describe()


def mcnemar_exact(before: ArrayLike, after: ArrayLike) -> McNemarResult:
    """Exact McNemar test: did paired yes/no outcomes (e.g. "answered correctly", per prompt) change?

    Units with the same outcome before and after say nothing about the change; under no change, each discordant unit
    is equally likely to have gone either way, so the p-value is a two-sided binomial test (p = 1/2) on the
    discordant counts. Exact rather than the chi-squared version because discordant counts are often single digits.
    """
    before_array, after_array = _as_pair(before, after, ("before", "after"))
    for name, array in (("before", before_array), ("after", after_array)):
        if array.ndim != 1 or len(array) == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array of yes/no outcomes, got shape {array.shape}")
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must hold only yes/no outcomes (bool, or 0 and 1)")
    before_array, after_array = before_array.astype(bool), after_array.astype(bool)
    only_before = int((before_array & ~after_array).sum())
    only_after = int((after_array & ~before_array).sum())
    discordant = only_before + only_after
    return McNemarResult(
        both=int((before_array & after_array).sum()),
        only_before=only_before,
        only_after=only_after,
        neither=int((~before_array & ~after_array).sum()),
        p_value=1.0 if discordant == 0 else float(stats.binomtest(only_after, discordant).pvalue),
    )


def describe_effect(effect: PairedDifference, what: str = "the score") -> str:
    """The sentence a notebook prints for ``effect``, a change in ``what``: its direction if the interval excludes
    0, otherwise that it is within the noise at this sample size."""
    if effect.excludes_zero:
        direction = "higher" if effect.mean > 0 else "lower"
        return (
            f"After − before, {what} is {direction}: {effect}; the interval excludes 0, so this is outside the noise."
        )
    return (
        f"After − before, {what} changed by {effect}; the interval includes 0, so the change is within the noise "
        "at this sample size."
    )


AUROC_DRAWS = 2_000  # each resample calls scikit-learn once (about 1 ms): 2,000 keep an interval to ~2 s


@dataclass(frozen=True)
class AurocInterval:
    """AUROC of a score as a detector of the positive class, with a bootstrap interval over the scored units."""

    auroc: float
    low: float
    high: float
    positives: int
    negatives: int
    confidence: float

    @property
    def excludes_chance(self) -> bool:
        """Whether the interval lies wholly above or below 0.5 (no signal), i.e. the separation is outside the noise."""
        return self.low > 0.5 or self.high < 0.5

    def describe(self, digits: int = 2) -> str:
        """``AUROC 0.72 [95% CI 0.55, 0.87], 25 positive / 15 negative``."""
        level = f"{self.confidence * 100:g}%"
        return (
            f"AUROC {self.auroc:.{digits}f} [{level} CI {self.low:.{digits}f}, {self.high:.{digits}f}], "
            f"{self.positives} positive / {self.negatives} negative"
        )

    def __str__(self) -> str:
        return self.describe()


def auroc_interval(
    scores: ArrayLike, labels: ArrayLike, confidence: float = 0.95, draws: int = AUROC_DRAWS, seed: int = 0
) -> AurocInterval:
    """AUROC of ``scores`` for ``labels`` (True = positive) by ``sklearn.metrics.roc_auc_score``, with a percentile
    bootstrap interval over the units (e.g. questions).

    The resampling is stratified: positives and negatives are resampled separately, each keeping its count, so
    every resample has both classes (AUROC is undefined otherwise) and the class balance of the data. Percentile
    rather than BCa because AUROC is bounded by 0 and 1 and often sits near a bound on small samples, where BCa's
    jackknife correction is unstable. Same ``seed``, same interval.
    """
    score_array = _as_values(scores, "scores")
    label_array = np.asarray(labels)
    if label_array.shape != score_array.shape or not np.isin(label_array, (0, 1)).all():
        raise ValueError(
            f"labels must be yes/no outcomes (bool, or 0 and 1), one per score: got shape {label_array.shape} for "
            f"{len(score_array)} scores"
        )
    label_array = label_array.astype(bool)
    positives, negatives = score_array[label_array], score_array[~label_array]
    if len(positives) < 2 or len(negatives) < 2:
        raise ValueError(
            f"AUROC needs at least 2 positives and 2 negatives to resample, got {len(positives)} and {len(negatives)}"
        )
    _check_confidence(confidence)
    if draws < 1:
        raise ValueError(f"draws must be positive, got {draws}")

    def area(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
        truth = np.r_[np.ones(len(positive_scores)), np.zeros(len(negative_scores))]
        return float(roc_auc_score(truth, np.r_[positive_scores, negative_scores]))

    result = stats.bootstrap(
        (positives, negatives),
        area,
        n_resamples=draws,
        vectorized=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return AurocInterval(
        auroc=area(positives, negatives),
        low=float(result.confidence_interval.low),
        high=float(result.confidence_interval.high),
        positives=len(positives),
        negatives=len(negatives),
        confidence=confidence,
    )


def describe_auroc(
    result: AurocInterval, what: str = "the score", positive: str = "positives", negative: str = "negatives"
) -> str:
    """The sentence a notebook prints for ``result``: whether ``what`` separates ``positive`` from ``negative``
    beyond chance (AUROC 0.5) at this sample size, and in which direction."""
    subject = what[:1].upper() + what[1:]
    if result.excludes_chance:
        direction = "higher" if result.auroc > 0.5 else "lower"
        return (
            f"{subject} tends to be {direction} for {positive} than for {negative}: {result}; the interval excludes "
            "0.5, so this separation is outside the noise."
        )
    return (
        f"{subject} does not separate {positive} from {negative} beyond the noise at this sample size: {result}; "
        "the interval includes 0.5 (no signal)."
    )
