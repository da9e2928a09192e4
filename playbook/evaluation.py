"""Is one policy better than another? Pairwise win rates under a judge, and best-of-N sampling with its KL.

A judge is anything that gives a number to a reply: the course's reward model (``RewardModel.score_batch``), a
rule, or a language model asked which of two replies is better (:class:`LanguageModelJudge`). Policies are compared
on the same held-out prompts, so every comparison is paired: policy A wins a prompt when the judge prefers A's reply
to B's, a tie counts half, and the win rate's interval is a bootstrap over prompts (``playbook.stats``).

Best-of-N draws N replies from a policy and keeps the one a reward model scores highest. Gao, Schulman & Hilton
(2022, "Scaling Laws for Reward Model Overoptimization") measure how far that moves from the policy by the closed
form KL = log N − (N − 1)/N; :func:`expected_best_of_n` gives the expected score of the kept reply for every N from
one set of samples, which is what makes a curve over N affordable on a laptop.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from scipy import stats
from scipy.special import gammaln
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.io import Messages
from playbook.stats import proportion_interval
from playbook.tensors import positions_from_mask

# ----------------------------------------------------------------------------------------------------------------
# Win rates


def pairwise_outcomes(scores_a: ArrayLike, scores_b: ArrayLike, *, tie_margin: float = 0.0) -> np.ndarray:
    """Per prompt, 1 where A's reply scores higher than B's by more than ``tie_margin``, 0 where lower, 0.5 for a tie.

    A tie margin above 0 stops a judge's rounding noise from deciding prompts where both replies are equally good
    (identical replies always tie).
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"scores_a and scores_b must be 1-D, non-empty and paired; got shapes {a.shape}, {b.shape}")
    if tie_margin < 0:
        raise ValueError(f"tie_margin must be 0 or more, got {tie_margin}")
    difference = a - b
    return np.where(difference > tie_margin, 1.0, np.where(difference < -tie_margin, 0.0, 0.5))


@dataclass(frozen=True)
class WinRate:
    """How often policy ``first`` beat policy ``second`` on the same prompts, ties counted half."""

    first: str
    second: str
    wins: int
    ties: int
    losses: int
    rate: float
    low: float
    high: float
    confidence: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def excludes_even(self) -> bool:
        """Whether the interval lies wholly above or below 0.5: one policy is preferred beyond the noise."""
        return self.low > 0.5 or self.high < 0.5

    def describe(self) -> str:
        """``PPO beats SFT on 62% of 40 prompts [95% CI 48%, 75%] (22 wins, 5 ties, 13 losses): ...``."""
        level = f"{self.confidence * 100:g}%"
        verdict = (
            f"{self.first if self.rate > 0.5 else self.second} is preferred beyond the noise"
            if self.excludes_even
            else "the interval includes 50%, so neither is preferred beyond the noise at this sample size"
        )
        return (
            f"{self.first} beats {self.second} on {self.rate:.0%} of {self.n} prompts [{level} CI {self.low:.0%}, "
            f"{self.high:.0%}] ({self.wins} wins, {self.ties} ties, {self.losses} losses): {verdict}."
        )

    def __str__(self) -> str:
        return self.describe()


def win_rate(
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    names: tuple[str, str] = ("A", "B"),
    tie_margin: float = 0.0,
    confidence: float = 0.95,
) -> WinRate:
    """The win rate of A over B from their judge scores on the same prompts (ties counted half), with an interval.

    The interval is the Wilson interval of A's share of the decisive prompts (wins and losses), mapped onto the
    rate with the ties held at ½: rate = ½ + (decisive / n)·(share − ½). Without ties it is the plain Wilson interval
    of the rate. Ties carry no evidence either way (the sign test's view), so three decisive prompts among many ties
    stay within the noise; a bootstrap of the 0/½/1 outcomes would call them beyond it, since most resamples keep at
    least one of the three.
    """
    outcomes = pairwise_outcomes(scores_a, scores_b, tie_margin=tie_margin)
    wins, ties = int((outcomes == 1).sum()), int((outcomes == 0.5).sum())
    decisive = len(outcomes) - ties
    if decisive:
        share_low, share_high = proportion_interval(wins, decisive, confidence=confidence)
        low, high = (0.5 + decisive / len(outcomes) * (share - 0.5) for share in (share_low, share_high))
    else:
        low = high = 0.5
    return WinRate(
        names[0], names[1], wins, ties, len(outcomes) - wins - ties, float(outcomes.mean()), low, high, confidence
    )


def win_rate_table(
    scores: Mapping[str, ArrayLike], *, tie_margin: float = 0.0, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per pair of policies (each pair once, in the order given): wins, ties, losses, rate and interval.

    ``beyond noise`` says whether that pair's interval excludes 0.5; ``beyond noise, Bonferroni`` whether it still
    does at the confidence that keeps the chance of any false call across all the table's pairs at ``1 −
    confidence`` (1 − (1 − confidence) / pairs): with ten independent pairs at 95%, about two tables in five would
    show a false call without it (1 − 0.95¹⁰ ≈ 0.40)."""
    if len(scores) < 2:
        raise ValueError(f"need the scores of at least two policies, got {list(scores)}")
    pairs = list(itertools.combinations(scores, 2))
    corrected = 1 - (1 - confidence) / len(pairs)
    rows = []
    for first, second in pairs:
        result = win_rate(
            scores[first], scores[second], names=(first, second), tie_margin=tie_margin, confidence=confidence
        )
        strict = win_rate(
            scores[first], scores[second], names=(first, second), tie_margin=tie_margin, confidence=corrected
        )
        rows.append(
            {
                "policy": first,
                "against": second,
                "wins": result.wins,
                "ties": result.ties,
                "losses": result.losses,
                "win rate": result.rate,
                "low": result.low,
                "high": result.high,
                "beyond noise": result.excludes_even,
                "beyond noise, Bonferroni": strict.excludes_even,
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# A language model as the judge


JUDGE_QUESTION = (
    "Which reply to the user is more helpful, honest and harmless? Answer with the letter only.\n\n"
    "User: {prompt}\n\nReply A: {first}\n\nReply B: {second}"
)


class LanguageModelJudge:
    """Asks a chat model which of two replies is better and reads P("A") against P("B") from its next-token logits.

    Language-model judges prefer whichever reply they see first (or second) more often than content warrants, so
    :meth:`compare` asks both orders and averages: ``prefers_first`` is the content preference, ``position_bias``
    how much the judge leans to the slot labelled A regardless of content (0 = none, +0.5 = always A). Any Hub id
    or local folder works (``load_model``), so a learner online or on a GPU can pass a larger judge.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.letter_ids = [self._single_token(letter) for letter in ("A", "B")]

    def _single_token(self, letter: str) -> int:
        ids = self.tokenizer.encode(letter, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"the judge's tokenizer splits {letter!r} into {len(ids)} tokens; it needs one.")
        return ids[0]

    @torch.no_grad()
    def probability_first_label(self, prompt: str, first: str, second: str) -> float:
        """P("A") / (P("A") + P("B")) for one ordering: reply ``first`` shown as A, ``second`` as B."""
        question = JUDGE_QUESTION.format(prompt=prompt, first=first, second=second)
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"].to(self.model.device)
        logits = self.model(ids).logits[0, -1, self.letter_ids]
        return float(torch.softmax(logits.float(), dim=-1)[0])

    def compare(self, prompts: Sequence[str], replies_a: Sequence[str], replies_b: Sequence[str]) -> pd.DataFrame:
        """Per prompt: P(A's reply better) asked with A first and with A second, their mean (``prefers_first``, the
        content preference) and the position bias (how much both orders lean to the first slot)."""
        if not len(prompts) == len(replies_a) == len(replies_b):
            raise ValueError(f"{len(prompts)} prompts, {len(replies_a)} and {len(replies_b)} replies: must be equal")
        rows = []
        for prompt, a, b in zip(prompts, replies_a, replies_b, strict=True):
            a_shown_first = self.probability_first_label(prompt, a, b)
            b_shown_first = self.probability_first_label(prompt, b, a)
            rows.append(
                {
                    "A shown first": a_shown_first,
                    "A shown second": 1 - b_shown_first,
                    "prefers_first": (a_shown_first + 1 - b_shown_first) / 2,
                    "position_bias": (a_shown_first + b_shown_first) / 2 - 0.5,
                }
            )
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------
# Best-of-N


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ policy) in nats by the closed form log n − (n − 1)/n (Gao et al. 2022, appendix; Stiennon et
    al. 2020). An upper bound (Beirami et al. 2024), approached when every single reply is unlikely: with a reply of
    probability p at the top, best-of-n can never be more than −log p from the policy."""
    if n < 1:
        raise ValueError(f"n must be 1 or more, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_distribution(probabilities: ArrayLike, rewards: ArrayLike, n: int) -> np.ndarray:
    """The exact distribution of best-of-n over a finite set of outcomes with probabilities and distinct rewards.

    With outcomes sorted by reward, the kept one is y when all n draws are at most y and not all below it:
    P_n(y) = F(y)^n − F(y⁻)^n, with F the cumulative probability in reward order.
    """
    p, r = np.asarray(probabilities, dtype=float), np.asarray(rewards, dtype=float)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"probabilities and rewards must be 1-D and the same length; got {p.shape}, {r.shape}")
    if (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError("probabilities must be non-negative and sum to 1")
    if len(np.unique(r)) != len(r):
        raise ValueError("rewards must be distinct (with ties, which one best-of-n keeps is not defined)")
    order = np.argsort(r)
    cumulative = np.cumsum(p[order])
    below = np.concatenate([[0.0], cumulative[:-1]])
    kept = np.empty_like(p)
    kept[order] = np.clip(cumulative, 0, 1) ** n - below**n
    return kept


def exact_kl(p: ArrayLike, q: ArrayLike) -> float:
    """KL(p ‖ q) in nats for two distributions over the same finite outcomes (``scipy.stats.entropy``)."""
    return float(stats.entropy(np.asarray(p, dtype=float), np.asarray(q, dtype=float)))


def _log_comb(n: np.ndarray | int, k: int) -> np.ndarray:
    return gammaln(np.asarray(n) + 1) - gammaln(k + 1) - gammaln(np.asarray(n) - k + 1)


def expected_best_of_n(selection_scores: ArrayLike, reported_scores: ArrayLike | None = None, *, n: int) -> np.ndarray:
    """Per prompt, the expected reported score of best-of-n, estimated from m ≥ n samples per prompt without bias.

    ``selection_scores`` (prompts × m) decide which sample is kept (a proxy reward model); ``reported_scores`` (same
    shape, default the same) are what is measured on the kept one (a gold reward model). Rather than one random
    subset of n, every subset of the m samples counts: sorted by selection score, the i-th lowest (1-based) is the
    best of a random n-subset with probability C(i − 1, n − 1) / C(m, n). One set of m samples thus gives the whole
    curve over n ≤ m, as Gao et al. (2022) did.
    """
    selection = np.asarray(selection_scores, dtype=float)
    reported = selection if reported_scores is None else np.asarray(reported_scores, dtype=float)
    if selection.ndim != 2 or selection.shape != reported.shape:
        raise ValueError(f"scores must be 2-D (prompts × samples) and the same shape; got {selection.shape}")
    m = selection.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"n must be between 1 and the number of samples per prompt ({m}), got {n}")
    order = np.argsort(selection, axis=1, kind="stable")
    ranked = np.take_along_axis(reported, order, axis=1)
    ranks = np.arange(1, m + 1)
    weights = np.zeros(m)
    eligible = ranks >= n
    weights[eligible] = np.exp(_log_comb(ranks[eligible] - 1, n - 1) - _log_comb(m, n))
    return ranked @ weights


def best_of_n_curve(
    selection_scores: ArrayLike, reported_scores: ArrayLike | None = None, *, ns: Sequence[int]
) -> pd.DataFrame:
    """For each n: the closed-form KL, √KL, and the mean over prompts of the expected selection and reported score
    of best-of-n (the points of Gao et al.'s figure 1, best-of-n half)."""
    rows = []
    for n in ns:
        kl = best_of_n_kl(n)
        rows.append(
            {
                "n": n,
                "kl": kl,
                "sqrt_kl": math.sqrt(kl),
                "selection score": float(expected_best_of_n(selection_scores, n=n).mean()),
                "reported score": float(expected_best_of_n(selection_scores, reported_scores, n=n).mean()),
            }
        )
    return pd.DataFrame(rows)


@torch.no_grad()
def sample_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    samples: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
) -> list[list[str]]:
    """``samples`` sampled replies per prompt (top-k and top-p off: best-of-n's KL assumes the policy's own
    distribution), repeatable for a seed; the cache best-of-n re-uses for every n.

    Each prompt is read once: its key-value cache is copied to each of its rows. A batch of the prompt repeated
    would read it once per row, and a chat prompt is often longer than the reply (``benchmarks/best_of_n_speed.py``
    times both ways). A batch holds up to ``batch_size`` rows: the replies of several prompts (left-padded) when
    ``samples`` is smaller, else ``batch_size`` replies of one prompt. A model whose generation config names its own
    cache class (``cache_implementation``) gets each prompt repeated instead."""
    from playbook.models import cache_keyword, chat_batches, decode_new_tokens, generate_replies, returned_cache

    torch.manual_seed(seed)
    options = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    if model.generation_config.cache_implementation is not None:
        repeated = [list(p) for p in prompts for _ in range(samples)]
        flat = generate_replies(model, tokenizer, repeated, batch_size=batch_size, **options)
        return [flat[i * samples : (i + 1) * samples] for i in range(len(prompts))]
    rows_per_prompt = min(samples, batch_size)
    replies: list[list[str]] = []
    for _, encoded in chat_batches(
        tokenizer, list(prompts), batch_size=batch_size // rows_per_prompt, device=model.device
    ):
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        positions = positions_from_mask(mask)
        # every prompt but its last token, once; generate reads that token and samples from it
        prefix = returned_cache(
            model.base_model(ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], use_cache=True)
        )
        group: list[list[str]] = [[] for _ in range(len(ids))]
        for start in range(0, samples, rows_per_prompt):
            rows = min(rows_per_prompt, samples - start)
            cache = copy.deepcopy(prefix) if rows_per_prompt < samples else prefix
            cache.batch_repeat_interleave(rows)
            output = model.generate(
                input_ids=ids.repeat_interleave(rows, dim=0),
                attention_mask=mask.repeat_interleave(rows, dim=0),
                pad_token_id=tokenizer.pad_token_id,
                **options,
                **{cache_keyword(model): cache},
            )
            texts = decode_new_tokens(tokenizer, output, ids.shape[1])
            for i, own in enumerate(group):
                own += texts[i * rows : (i + 1) * rows]
        replies += group
    return replies
