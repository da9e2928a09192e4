"""Calibration: do a model's confidences match how often it is right?

A model is *calibrated* when, among the answers it gives with confidence 0.8, about 80% are correct.
Kadavath et al. (2022, *Language Models (Mostly) Know What They Know*) found large pretrained models well
calibrated on lettered multiple choice, RLHF-tuned ones less so, and a single temperature largely fixing it.

Metrics take arrays of confidences (in [0, 1]) and correctness (0/1). Binning follows scikit-learn's
``calibration_curve``: ``n_bins`` equal-width bins (``"uniform"``) or bins holding equal numbers of answers
(``"quantile"``), each bin closed on the right, (e_i, e_{i+1}]. torchmetrics' ``CalibrationError`` closes
bins on the left, so the two can differ only for confidences exactly on a bin edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.io import read_jsonl
from playbook.models import chat_batches, next_token_logits_at
from playbook.stats import bootstrap_interval
from playbook.tensors import pad_sequences

Strategy = Literal["uniform", "quantile"]
LETTERS = "ABCDEFGHIJ"
ANSWER_PREFIX = "The answer is:"


# ------------------------------------------------------------------------------------------- metrics


def _check(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    confidences = np.asarray(confidences, dtype=float).ravel()
    correct = np.asarray(correct, dtype=float).ravel()
    if len(confidences) != len(correct):
        raise ValueError(f"confidences has {len(confidences)} values but correct has {len(correct)}.")
    if len(confidences) == 0:
        raise ValueError("confidences is empty.")
    if np.isnan(confidences).any() or np.isnan(correct).any():
        raise ValueError("confidences or correct contains NaN.")
    if confidences.min() < 0 or confidences.max() > 1:
        raise ValueError(f"confidences must lie in [0, 1]; got values from {confidences.min()} to {confidences.max()}.")
    if not np.isin(correct, (0.0, 1.0)).all():
        raise ValueError("correct must hold only 0/1 (or False/True).")
    return confidences, correct


@dataclass(frozen=True)
class Bins:
    """Per non-empty bin: mean confidence, accuracy and number of answers; and the bin edges."""

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray
    index: np.ndarray  # which bins (of len(edges) - 1) the rows above describe

    @property
    def centre(self) -> np.ndarray:
        """The middle of each non-empty bin (where a reliability diagram draws its bar)."""
        return (self.edges[self.index] + self.edges[self.index + 1]) / 2

    @property
    def width(self) -> np.ndarray:
        """The width of each non-empty bin."""
        return self.edges[self.index + 1] - self.edges[self.index]


def calibration_bins(confidences, correct, n_bins: int = 10, strategy: Strategy = "uniform") -> Bins:
    """Group answers into bins by confidence, as scikit-learn's ``calibration_curve`` does."""
    confidences, correct = _check(confidences, correct)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(confidences, np.linspace(0, 100, n_bins + 1))
    else:
        raise ValueError(f"strategy={strategy!r}: use 'uniform' or 'quantile'.")
    index = np.searchsorted(edges[1:-1], confidences)
    count = np.bincount(index, minlength=len(edges) - 1)
    sums = np.bincount(index, weights=confidences, minlength=len(edges) - 1)
    hits = np.bincount(index, weights=correct, minlength=len(edges) - 1)
    filled = count > 0
    return Bins(
        sums[filled] / count[filled], hits[filled] / count[filled], count[filled], edges, np.flatnonzero(filled)
    )


def expected_calibration_error(confidences, correct, n_bins: int = 10, strategy: Strategy = "uniform") -> float:
    """ECE: the answer-weighted mean gap |accuracy − confidence| over bins."""
    bins = calibration_bins(confidences, correct, n_bins, strategy)
    return float(np.sum(bins.count / bins.count.sum() * np.abs(bins.accuracy - bins.confidence)))


def maximum_calibration_error(confidences, correct, n_bins: int = 10, strategy: Strategy = "uniform") -> float:
    """MCE: the largest gap |accuracy − confidence| over non-empty bins."""
    bins = calibration_bins(confidences, correct, n_bins, strategy)
    return float(np.max(np.abs(bins.accuracy - bins.confidence)))


def brier_score(confidences, correct) -> float:
    """Mean squared difference between confidence and correctness (0 is perfect)."""
    confidences, correct = _check(confidences, correct)
    return float(np.mean((confidences - correct) ** 2))


def negative_log_likelihood(confidences, correct, eps: float = 1e-12) -> float:
    """Mean −log of the probability given to what happened: p when right, 1 − p when wrong."""
    confidences, correct = _check(confidences, correct)
    probability = np.where(correct == 1, confidences, 1 - confidences)
    return float(-np.mean(np.log(np.clip(probability, eps, 1.0))))


def calibration_report(confidences, correct, n_bins: int = 10) -> dict[str, float]:
    """Accuracy, mean confidence, ECE, MCE, Brier score and the binary NLL of the top answer in one dict."""
    confidences, correct = _check(confidences, correct)
    return {
        "accuracy": float(correct.mean()),
        "mean confidence": float(confidences.mean()),
        "ECE": expected_calibration_error(confidences, correct, n_bins),
        "MCE": maximum_calibration_error(confidences, correct, n_bins),
        "Brier": brier_score(confidences, correct),
        "NLL (top answer, binary)": negative_log_likelihood(confidences, correct),
    }


def _ece_per_row(confidences: np.ndarray, outcomes: np.ndarray, n_bins: int, strategy: Strategy) -> np.ndarray:
    """ECE of each row of ``outcomes`` ``[S, n]`` (0/1) against the one set of ``confidences`` ``[n]``."""
    edges = calibration_bins(confidences, np.zeros_like(confidences), n_bins, strategy).edges
    index = np.searchsorted(edges[1:-1], confidences)
    members = np.zeros((len(confidences), len(edges)))
    members[np.arange(len(confidences)), index] = 1.0
    count = members.sum(0)
    filled = count > 0
    mean_confidence = (confidences @ members)[filled] / count[filled]
    accuracy = (outcomes @ members)[:, filled] / count[filled]
    return np.abs(accuracy - mean_confidence) @ (count[filled] / len(confidences))


def ece_interval(
    confidences,
    correct,
    *,
    n_bins: int = 10,
    strategy: Strategy = "uniform",
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval for the ECE (:func:`playbook.stats.bootstrap_interval`): resample the
    questions (each a confidence with its correctness) with replacement, recompute the ECE, and take the central
    ``level`` share of the results.

    Percentile rather than BCa: the binned ECE jumps as answers cross bin edges, the case BCa's smoothness
    assumption does not cover. The ECE is biased upwards at small n, and resampling does not remove that bias
    (resampled ECEs run a little higher still, so for a nearly calibrated model the estimate can sit at or just
    under the interval's low end); read the interval with :func:`calibrated_ece_floor`.
    """
    confidences, correct = _check(confidences, correct)
    return bootstrap_interval(
        (confidences, correct),
        lambda c, y: expected_calibration_error(c, y, n_bins, strategy),
        confidence=level,
        draws=resamples,
        seed=seed,
    )


def calibrated_ece_floor(
    confidences, *, n_bins: int = 10, strategy: Strategy = "uniform", simulations: int = 2000, seed: int = 0
) -> float:
    """The ECE a perfectly calibrated predictor would show, on average, with these confidences and this many
    answers: outcomes drawn as Bernoulli(confidence), the ECE of each draw, averaged.

    ECE is never negative, so sampling noise alone makes it positive: about 0.14 for 40 answers in 10 bins. A
    measured ECE near this floor is what a calibrated model would show at this n; only an ECE well above it
    shows miscalibration.
    """
    confidences, _ = _check(confidences, np.zeros(np.size(confidences)))
    if simulations < 1:
        raise ValueError(f"simulations must be at least 1, got {simulations}.")
    rng = np.random.default_rng(seed)
    total = 0.0
    for start in range(0, simulations, 500):
        outcomes = (rng.uniform(size=(min(500, simulations - start), len(confidences))) < confidences).astype(float)
        total += _ece_per_row(confidences, outcomes, n_bins, strategy).sum()
    return float(total / simulations)


def ece_with_uncertainty(
    confidences, correct, *, n_bins: int = 10, level: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float], float]:
    """The ECE, its bootstrap interval (:func:`ece_interval`) and the calibrated floor
    (:func:`calibrated_ece_floor`)."""
    ece = expected_calibration_error(confidences, correct, n_bins)
    interval = ece_interval(confidences, correct, n_bins=n_bins, level=level, seed=seed)
    return ece, interval, calibrated_ece_floor(confidences, n_bins=n_bins, seed=seed)


def describe_ece(confidences, correct, *, n_bins: int = 10, level: float = 0.95, seed: int = 0) -> str:
    """One line: "0.127 [95% CI 0.081, 0.254]; a perfectly calibrated predictor at this n would show ≈ 0.140". A
    single item (the bundled sample's few held-out pairs, split in two) has no interval, and the line says so."""
    items = len(_check(confidences, correct)[0])
    if items < 2:
        ece = expected_calibration_error(confidences, correct, n_bins)
        return f"{ece:.3f} (from {items} item: too few to resample for an interval)"
    ece, (low, high), floor = ece_with_uncertainty(confidences, correct, n_bins=n_bins, level=level, seed=seed)
    return (
        f"{ece:.3f} [{level:.0%} CI {low:.3f}, {high:.3f}]; "
        f"a perfectly calibrated predictor at this n would show ≈ {floor:.3f}"
    )


def reliability_diagram(
    confidences,
    correct,
    *,
    n_bins: int = 10,
    strategy: Strategy = "uniform",
    title: str = "Reliability diagram",
    accuracy_interval: tuple[np.ndarray, np.ndarray] | None = None,
    ece_text: str | None = None,
    counted: str = "answers",
) -> Figure:
    """Accuracy per confidence bin against the diagonal, over a histogram of confidences.

    Each bar spans its bin (centred on the bin, as wide as the bin, so bars never overlap); a black dot marks the
    bin's mean confidence, and a red band the gap between it and the accuracy. ``accuracy_interval`` (low and high
    per non-empty bin, e.g. from :func:`grouped_bin_accuracy_interval`) adds error bars; ``ece_text`` replaces the
    plain ECE in the title (e.g. with its interval). ``counted`` names what the histogram counts (e.g. "pairs").
    """
    confidences, correct = _check(confidences, correct)
    bins = calibration_bins(confidences, correct, n_bins, strategy)
    ece_text = ece_text or f"{expected_calibration_error(confidences, correct, n_bins, strategy):.3f}"
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, height_ratios=(3, 1))
    top.bar(
        bins.centre, bins.accuracy, width=bins.width, color="tab:blue", alpha=0.8, edgecolor="white", label="accuracy"
    )
    top.bar(
        bins.centre,
        bins.confidence - bins.accuracy,
        bottom=bins.accuracy,
        width=bins.width,
        color="tab:red",
        alpha=0.3,
        label="gap to mean confidence",
    )
    top.plot(bins.centre, bins.confidence, "k.", label="mean confidence of the bin")
    if accuracy_interval is not None:
        low, high = (np.asarray(bound, dtype=float) for bound in accuracy_interval)
        if low.shape != bins.accuracy.shape or high.shape != bins.accuracy.shape:
            raise ValueError(
                f"accuracy_interval: need one low and one high per non-empty bin ({len(bins.accuracy)}), "
                f"got shapes {low.shape} and {high.shape}."
            )
        top.errorbar(
            bins.centre,
            bins.accuracy,
            yerr=np.abs(np.vstack([bins.accuracy - low, high - bins.accuracy])),
            fmt="none",
            ecolor="black",
            capsize=2,
            linewidth=1,
            label="95% interval of the accuracy",
        )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"{title}\nECE = {ece_text}")
    top.legend(fontsize=7, loc="upper left")
    bottom.hist(confidences, bins=bins.edges, color="tab:gray")
    bottom.set(xlabel="confidence", ylabel=counted, xlim=(0, 1))
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------------------------- temperature


def _log_softmax_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range :func:`fit_temperature` searches by default: a fit at the upper end flattens every answer towards
uniform (notebook 11 reads a T there as "these scores carry too little to sharpen")."""


def fit_temperature(
    logits, labels, *, bounds: tuple[float, float] = TEMPERATURE_BOUNDS, tolerance: float = 1e-5
) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on ``labels`` (golden-section search).

    The NLL is convex in 1/T, so a bounded one-dimensional search finds the optimum; ``bounds`` limit T.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be [N, K] with one label each; got {tuple(logits.shape)} and {len(labels)}.")
    if len(logits) == 0:
        raise ValueError("logits: no rows; fit the temperature on the logits of at least one question.")
    if not torch.isfinite(logits).all():
        row = int((~torch.isfinite(logits)).any(dim=1).nonzero()[0])
        raise ValueError(
            f"logits: row {row} holds NaN or infinite values; drop those questions or compute the logits again."
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels: each must be an option index from 0 to {logits.shape[1] - 1}.")
    low, high = 1 / bounds[1], 1 / bounds[0]  # search over the inverse temperature
    ratio = (math.sqrt(5) - 1) / 2
    while high - low > tolerance:
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        if _log_softmax_nll(logits, labels, 1 / left) < _log_softmax_nll(logits, labels, 1 / right):
            high = right
        else:
            low = left
    return float(2 / (low + high))


def option_nll(logits, labels, temperature: float = 1.0) -> float:
    """The K-way cross-entropy, mean −log softmax(logits / T)[right option]: what :func:`fit_temperature`
    minimises (unlike :func:`negative_log_likelihood`, the binary NLL of the top answer's confidence)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits must be [N, K] with one label each; got {tuple(logits.shape)} and {len(labels)}.")
    return _log_softmax_nll(logits, labels, temperature)


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """Probabilities softmax(logits / T); the arg-max, and so the accuracy, does not change for T > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}.")
    return torch.softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature, dim=-1).numpy()


def split_by_answer(answers, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of the questions (to fit a temperature on one and measure it on the other), drawn at
    random with ``seed`` and stratified by the right answer: each answer index (letter) is dealt as evenly as
    possible, so its count in the two halves differs by at most one, and so do the halves' sizes.

    Taking every second question instead would put all A and C answers in one half and all B and D in the other
    for a file whose right letters cycle. Written with numpy rather than scikit-learn's ``train_test_split(...,
    stratify=...)``: that one raises when a letter has a single question (the smoke profile's handful of questions).
    """
    answers = np.asarray(answers).ravel()
    if len(answers) < 2:
        raise ValueError(f"answers: need at least 2 questions to split into two halves, got {len(answers)}.")
    rng = np.random.default_rng(seed)
    fit, held, odd = [], [], []
    for value in np.unique(answers):
        members = rng.permutation(np.flatnonzero(answers == value))
        half = len(members) // 2
        fit.extend(members[:half])
        held.extend(members[half : 2 * half])
        odd.extend(members[2 * half :])  # at most one per answer
    odd = rng.permutation(np.asarray(odd, dtype=int))
    first, second = (fit, held) if rng.uniform() < 0.5 else (held, fit)  # who gets the first odd one, at random
    first.extend(odd[0::2])
    second.extend(odd[1::2])
    return np.sort(np.asarray(fit, dtype=int)), np.sort(np.asarray(held, dtype=int))


def accuracy_coverage(confidences, correct) -> pd.DataFrame:
    """Answer only the most confident questions: accuracy at each coverage (share of questions answered)."""
    confidences, correct = _check(confidences, correct)
    order = np.argsort(-confidences, kind="stable")
    answered = np.arange(1, len(order) + 1)
    return pd.DataFrame(
        {
            "coverage": answered / len(order),
            "accuracy": np.cumsum(correct[order]) / answered,
            "threshold": confidences[order],
        }
    )


# ------------------------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class MCQuestion:
    """A question with lettered options, one of them right."""

    question: str
    options: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        if not 2 <= len(self.options) <= len(LETTERS):
            raise ValueError(f"{self.question!r}: needs 2 to {len(LETTERS)} options, got {len(self.options)}.")
        if not 0 <= self.answer < len(self.options):
            raise ValueError(f"{self.question!r}: answer index {self.answer} is out of range.")

    def prompt(self) -> list[dict[str, str]]:
        options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(self.options))
        letters = ", ".join(LETTERS[: len(self.options)])
        return [
            {
                "role": "user",
                "content": f"{self.question}\n{options}\nAnswer with the letter of the correct option ({letters}).",
            }
        ]


def truthfulqa_mc_questions(dataset, *, options: int = 4, seed: int = 0) -> list[MCQuestion]:
    """TruthfulQA MC1 as lettered questions: the true answer and the first ``options − 1`` false ones, shuffled
    with a fixed seed so the right letter is spread evenly. Questions with fewer choices are skipped, so that
    every question has the same number of options (and chance is the same 1/``options`` throughout)."""
    rng = np.random.default_rng(seed)
    questions, rows = [], []
    for row in dataset:
        labels = row["mc1_labels"]
        rows.append(len(labels))
        true = [c for c, label in zip(row["mc1_choices"], labels, strict=True) if label == 1]
        false = [c for c, label in zip(row["mc1_choices"], labels, strict=True) if label == 0][: options - 1]
        if len(false) < options - 1:
            continue
        choices = true + false
        order = rng.permutation(len(choices))
        questions.append(MCQuestion(row["question"], tuple(choices[i] for i in order), int(np.argmax(order == 0))))
    if not questions and rows:
        most = max(rows)
        raise ValueError(
            f"truthfulqa_mc_questions: none of the {len(rows)} questions has {options} MC1 choices (the true one and "
            f"{options - 1} false ones); the most any has is {most}. Pass options={most} or fewer, or load the full "
            "TruthfulQA (set PLAYBOOK_DATA_DIR)."
        )
    return questions


def _letter_token_ids(tokenizer: PreTrainedTokenizerBase, count: int) -> list[int]:
    ids = []
    for letter in LETTERS[:count]:
        encoded = tokenizer.encode(letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"the tokenizer splits the letter {letter!r} into {len(encoded)} tokens.")
        ids.append(encoded[0])
    return ids


@torch.no_grad()
def next_token_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence, *, batch_size: int = 8
) -> torch.Tensor:
    """Logits of the first token of the assistant's reply to each conversation, ``[N, vocab]`` on the CPU."""
    batches = chat_batches(tokenizer, list(conversations), batch_size=batch_size, device=model.device)
    rows = [
        model(**batch, logits_to_keep=1).logits[:, -1].float().cpu()
        for _, batch in tqdm(
            batches, desc="scoring", unit="batch", leave=False, total=-(-len(conversations) // batch_size)
        )
    ]
    return torch.cat(rows)


def letter_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[MCQuestion], *, batch_size: int = 8
) -> np.ndarray:
    """``[N, K]`` logits of the option letters at the answer position (all questions must have K options)."""
    counts = {len(q.options) for q in questions}
    if len(counts) != 1:
        raise ValueError(f"all questions need the same number of options; got {sorted(counts)}.")
    letters = _letter_token_ids(tokenizer, counts.pop())
    logits = next_token_logits(model, tokenizer, [q.prompt() for q in questions], batch_size=batch_size)
    return logits[:, letters].numpy()


@torch.no_grad()
def option_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, questions: Sequence[MCQuestion], *, batch_size: int = 8
) -> np.ndarray:
    """``[N, K]`` mean log-probability of each option's text as the end of the assistant's reply
    "The answer is: <option>" to the bare question.

    The cloze-style alternative to letters: small models that cannot map knowledge to a letter often still
    give the right answer's words a higher probability. The prefix puts the option where an answer goes (without
    it, every option is an unlikely first word); averaging over tokens keeps long options from losing just for
    being long; softmax over the options (with a fitted temperature) turns these into probabilities.
    """
    counts = {len(q.options) for q in questions}
    if len(counts) != 1:
        raise ValueError(f"all questions need the same number of options; got {sorted(counts)}.")
    items = []
    for q in questions:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": q.question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
        for option in q.options:
            option_ids = tokenizer(" " + option.strip(), add_special_tokens=False)["input_ids"]
            items.append((prompt_ids + option_ids, len(option_ids)))
    scores = []
    for start in tqdm(range(0, len(items), batch_size), desc="scoring options", unit="batch", leave=False):
        chunk = items[start : start + batch_size]
        ids, mask = pad_sequences([sequence for sequence, _ in chunk], tokenizer.pad_token_id)
        predicts_option = torch.zeros(len(chunk), ids.shape[1] - 1, dtype=torch.bool)
        for row, (sequence, length) in enumerate(chunk):  # the positions before each option token
            predicts_option[row, len(sequence) - length - 1 : len(sequence) - 1] = True
        logits = next_token_logits_at(model, ids, mask, predicts_option).float()
        option_tokens = ids[:, 1:][predicts_option]
        token_log_probs = torch.log_softmax(logits, -1).cpu().gather(-1, option_tokens[:, None]).squeeze(-1)
        for option_scores in token_log_probs.split([length for _, length in chunk]):  # rows in reading order
            scores.append(float(option_scores.mean()))
    return np.asarray(scores).reshape(len(questions), -1)


def p_true(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[MCQuestion],
    proposed: Sequence[int],
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """P(True) (Kadavath et al. 2022): the model judges whether a proposed option is right; its probability of
    "True" (renormalised over True/False) is the confidence in that answer."""
    true_false = [tokenizer.encode(word, add_special_tokens=False)[0] for word in ("True", "False")]
    conversations = [
        [
            {
                "role": "user",
                "content": f"Question: {q.question}\nProposed answer: {q.options[choice]}\n"
                "Is the proposed answer true or false? Answer True or False.",
            }
        ]
        for q, choice in zip(questions, proposed, strict=True)
    ]
    logits = next_token_logits(model, tokenizer, conversations, batch_size=batch_size)[:, true_false]
    return torch.softmax(logits.double(), dim=-1)[:, 0].numpy()


def load_mc_questions(path: str | Path) -> list[MCQuestion]:
    """Questions from a JSONL file of ``{"question", "options": [...], "answer": index}`` lines."""
    questions = []
    for number, record in read_jsonl(path):
        try:
            questions.append(MCQuestion(record["question"], tuple(record["options"]), int(record["answer"])))
        except KeyError as error:
            raise ValueError(
                f"{path}:{number}: missing field {error}; each line needs question, options and answer."
            ) from error
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: {error}") from error
    return questions


# -------------------------------------------------------------------------- next-token calibration


ReplyTokens = list[tuple[list[int], list[int]]]
"""Per conversation, its token ids and a 0/1 mask of the reply tokens to score (:func:`reply_tokens`)."""


def reply_tokens(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence, *, max_length: int | None = None
) -> ReplyTokens:
    """Each conversation's token ids and the 0/1 mask of the tokens SFT trains on (:func:`playbook.sft.loss_mask`:
    the last reply, its ``<|im_end|>`` and the template's newline); ``max_length`` cuts as the trainer does.
    Encode once, then score with every model that shares the tokenizer (:func:`next_token_predictions`)."""
    from playbook.sft import loss_mask  # the SFT module imports the trainers; load it only when needed

    if not conversations:
        raise ValueError("conversations: nothing to score; pass at least one conversation ending with a reply.")
    return [loss_mask(tokenizer, conversation, max_length) for conversation in conversations]


@torch.no_grad()
def next_token_predictions(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, replies: ReplyTokens, *, batch_size: int = 8
) -> pd.DataFrame:
    """One row per scored token of :func:`reply_tokens`: ``document`` (the conversation's index), ``confidence``
    (the largest next-token probability the model gives at the position before the token) and ``correct`` (1 if
    that most likely token is the one the text has).

    Rows come in the same order for every model, so two models' predictions pair up token for token. Batches group
    conversations of similar length, so little of each forward pass is padding.
    """
    was_training = model.training
    model.eval()
    order = np.argsort([len(token_ids) for token_ids, _ in replies], kind="stable")
    frames = []
    for start in range(0, len(order), batch_size):
        documents = order[start : start + batch_size]
        ids, attention = pad_sequences([replies[i][0] for i in documents], tokenizer.pad_token_id)
        scored, _ = pad_sequences([replies[i][1] for i in documents], 0)
        keep = scored[:, 1:].bool()  # token t is predicted from the hidden state at t - 1
        logits = next_token_logits_at(model, ids, attention, keep)
        confidence, guess = torch.softmax(logits.float(), dim=-1).max(dim=-1)
        rows, _ = keep.nonzero(as_tuple=True)
        frames.append(
            pd.DataFrame(
                {
                    "document": documents[rows.numpy()],
                    "confidence": confidence.double().cpu().numpy(),
                    "correct": (guess.cpu() == ids[:, 1:][keep]).numpy().astype(int),
                }
            )
        )
    model.train(was_training)
    return pd.concat(frames).sort_values("document", kind="stable").reset_index(drop=True)


def _grouped_bin_sums(predictions: pd.DataFrame, n_bins: int) -> np.ndarray:
    """``[documents, 3, n_bins]``: per document and equal-width bin, the number of tokens, the sum of their
    confidences and the number right. Sums add up over any resample of documents, which makes the bootstrap cheap."""
    confidence, correct = _check(predictions["confidence"], predictions["correct"])
    documents = pd.factorize(predictions["document"], sort=True)[0]
    bin_index = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)
    cell = documents * n_bins + bin_index
    size = (documents.max() + 1) * n_bins
    sums = [np.bincount(cell, weights=weights, minlength=size) for weights in (None, confidence, correct)]
    return np.stack(sums).reshape(3, -1, n_bins).transpose(1, 0, 2)


def _ece_of_sums(sums: np.ndarray) -> float:
    """The ECE of the tokens whose bin sums ``[3, n_bins]`` (count, confidence, right) are given."""
    count, confidence, right = sums
    filled = count > 0
    gaps = np.abs(right[filled] - confidence[filled])  # count × |accuracy − mean confidence|
    return float(gaps.sum() / count.sum())


def _check_documents(predictions: pd.DataFrame) -> None:
    if predictions["document"].nunique() < 2:
        raise ValueError(
            "predictions: tokens of a single document cannot be bootstrapped by document; score at least 2 texts."
        )


def grouped_ece_interval(
    predictions: pd.DataFrame, *, n_bins: int = 10, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """The ECE of :func:`next_token_predictions` and a percentile bootstrap interval that resamples whole
    documents (:func:`playbook.stats.bootstrap_interval`): (ECE, low, high).

    Documents, not tokens: tokens of one text share its topic and style, so whether the model predicts them well
    goes together; resampling tokens as if independent would give a falsely narrow interval.
    """
    _check_documents(predictions)
    sums = _grouped_bin_sums(predictions, n_bins)
    low, high = bootstrap_interval(
        sums, lambda rows: _ece_of_sums(rows.sum(0)), confidence=level, draws=resamples, seed=seed
    )
    return _ece_of_sums(sums.sum(0)), low, high


def grouped_bin_accuracy_interval(
    predictions: pd.DataFrame, *, n_bins: int = 10, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per non-empty bin (as :func:`calibration_bins` lists them), a percentile interval of the bin's accuracy,
    resampling whole documents. Resamples that leave a bin empty say nothing about its accuracy and are left out
    of that bin's interval."""
    _check_documents(predictions)
    sums = _grouped_bin_sums(predictions, n_bins)
    filled = sums.sum(0)[0] > 0

    def accuracy(rows: np.ndarray) -> np.ndarray:
        count, _, right = rows.sum(0)[:, filled]
        with np.errstate(invalid="ignore", divide="ignore"):
            return right / count

    return bootstrap_interval(sums, accuracy, confidence=level, draws=resamples, seed=seed, omit_undefined=True)


@dataclass(frozen=True)
class ECEDifference:
    """ECE of one model minus another's on the same tokens, with a bootstrap interval over documents."""

    difference: float
    low: float
    high: float
    documents: int
    level: float
    units: str = "texts"  # what was resampled, as the sentence names it

    def describe(self, first: str, second: str) -> str:
        """The sentence a notebook prints: the direction if the interval excludes 0, otherwise "inside the noise"."""
        if math.isnan(self.low):  # a single prediction (ece_difference), so the unit in the singular
            return (
                f"ECE {first} − {second} = {self.difference:+.4f} from 1 {self.units.removesuffix('s')}: too few to "
                "resample for an interval, so this difference cannot be told from noise."
            )
        numbers = (
            f"ECE {first} − {second} = {self.difference:+.4f} [{self.level:.0%} CI {self.low:+.4f}, "
            f"{self.high:+.4f}] over {self.documents} {self.units}"
        )
        if self.low > 0:
            return f"{numbers}: {first} is less calibrated than {second}, outside the noise."
        if self.high < 0:
            return f"{numbers}: {first} is better calibrated than {second}, outside the noise."
        return f"{numbers}: the interval includes 0, so any difference is inside the noise at this many {self.units}."


def grouped_ece_difference(
    first: pd.DataFrame,
    second: pd.DataFrame,
    *,
    n_bins: int = 10,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> ECEDifference:
    """ECE(first) − ECE(second) for two models' :func:`next_token_predictions` on the same texts, with a paired
    percentile bootstrap: each resample draws documents once and recomputes both ECEs on them, so the texts'
    own difficulty, shared by both models, cancels out of the interval."""
    if not first["document"].equals(second["document"]):
        raise ValueError(
            "first and second must score the same texts with the same tokenizer (their document columns differ)."
        )
    _check_documents(first)
    pair = np.concatenate([_grouped_bin_sums(first, n_bins), _grouped_bin_sums(second, n_bins)], axis=1)

    def difference(rows: np.ndarray) -> float:
        total = rows.sum(0)
        return _ece_of_sums(total[:3]) - _ece_of_sums(total[3:])

    low, high = bootstrap_interval(pair, difference, confidence=level, draws=resamples, seed=seed)
    return ECEDifference(difference(pair), low, high, first["document"].nunique(), level)


def ece_difference(
    first_confidences,
    second_confidences,
    correct,
    *,
    units: str = "predictions",
    n_bins: int = 10,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> ECEDifference:
    """ECE(first) − ECE(second) for two sets of confidences in the same predictions (for example before and after
    temperature scaling, which keeps every pick and so every ``correct``), with a paired bootstrap over the
    predictions: each resample draws predictions once and recomputes both ECEs on them. With a single prediction
    (a tiny held-out set, such as the bundled sample data's) the interval is NaN and ``describe`` says so."""
    first_confidences, correct = _check(first_confidences, correct)
    second_confidences, _ = _check(second_confidences, correct)
    if len(correct) < 2:
        difference = expected_calibration_error(first_confidences, correct, n_bins) - expected_calibration_error(
            second_confidences, correct, n_bins
        )
        return ECEDifference(difference, math.nan, math.nan, len(correct), level, units)
    one_per_prediction = np.arange(len(correct))
    first, second = (
        pd.DataFrame({"document": one_per_prediction, "confidence": confidences, "correct": correct})
        for confidences in (first_confidences, second_confidences)
    )
    result = grouped_ece_difference(first, second, n_bins=n_bins, level=level, resamples=resamples, seed=seed)
    return replace(result, units=units)
