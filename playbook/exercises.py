"""Exercises at the end of each notebook, with checkers that say what is wrong, not just that it is.

In a notebook::

    from playbook.exercises import check

    def dpo_loss(chosen_logratio, rejected_logratio, beta):
        ...  # your code

    check("07.1", dpo_loss)

`check` runs the learner's answer on cases the learner cannot see and prints "correct", or a hint aimed at the
most likely mistake. An answer that still raises `NotImplementedError` (the stub) gets a nudge, not a traceback,
so notebooks with untouched exercises still run headless. Worked solutions live in `solutions/`, out of the way,
and the test suite checks every one of them against its checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Feedback:
    """The verdict on one answer and, when it is wrong, a hint."""

    exercise: str
    correct: bool
    message: str

    def __str__(self) -> str:
        return f"{self.exercise}: {'correct' if self.correct else 'not yet'}. {self.message}"


@dataclass(frozen=True)
class Exercise:
    notebook: str
    prompt: str
    checker: Callable[[object], str | None]  # None when right, else the hint


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------------------ checkers


def _model_bytes(answer) -> str | None:
    cases = [(135_000_000, "float32", 540_000_000), (7_000_000_000, "bfloat16", 14_000_000_000), (10, "int8", 10)]
    for params, dtype, expected in cases:
        got = answer(params, dtype)
        if got == expected:
            continue
        if got == expected * 8:
            return "You returned bits; a byte is 8 bits."
        if dtype != "float32" and got == params * 4:
            return "Every dtype got 4 bytes: bfloat16 takes 2 bytes per weight, int8 takes 1."
        return f"model_bytes({params:,}, {dtype!r}) should be {expected:,}, got {got!r}."
    return None


def _q4_1_block(answer) -> str | None:
    from playbook.quantization import q4_1_roundtrip

    block = np.linspace(-1.0, 1.0, 32)
    got = np.asarray(answer(list(block)), dtype=float)
    if got.shape != (32,):
        return f"Return one de-quantized weight per input weight (32 of them), got shape {got.shape}."
    if np.allclose(got, np.round(got)) and got.min() >= 0 and got.max() == 15:
        return "Those are the 4-bit codes q; return the weights they stand for, m + q·d."
    expected = q4_1_roundtrip(block)
    step = 2.0 / 15
    if np.allclose(got, expected + 1.0, atol=1e-3):  # q·d without the minimum m = -1
        return "Add the block's minimum m back: a weight comes back as m + q·d."
    codes_truncated = np.floor((block + 1.0) / step)
    if np.allclose(got, -1.0 + codes_truncated * step, atol=1e-3):
        return (
            "Round (w − m)/d to the nearest code; int() truncates, which moves weights down by half a step on average."
        )
    sixteen_steps = 2.0 / 16
    codes_sixteen = np.floor((block + 1.0) / sixteen_steps + 0.5)
    if any(
        np.allclose(got, -1.0 + codes * sixteen_steps, atol=1e-3)
        for codes in (codes_sixteen, codes_sixteen.clip(0, 15))
    ):
        return "4 bits give 16 levels, codes 0 to 15: that is 15 steps from min to max, so d = (max − min) / 15."
    if not np.allclose(got, expected, atol=1e-3):
        first, mine = [round(float(x), 4) for x in expected[:4]], [round(float(x), 4) for x in got[:4]]
        return f"For np.linspace(-1, 1, 32) expected about {first}..., got {mine}..."
    try:
        with np.errstate(divide="ignore", invalid="ignore"):
            flat = np.asarray(answer([0.5] * 32), dtype=float)
    except ZeroDivisionError:
        flat = None
    if flat is None or not np.allclose(flat, 0.5):
        return "A block of 32 equal weights has d = 0: return it unchanged instead of dividing by zero."
    return None


def _principle_shares(answer) -> str | None:
    results = [("honest", True), ("honest", False), ("harmless", True), ("helpful", True), ("honest", True)]
    got = answer(results)
    expected = {"honest": 2 / 3, "harmless": 1.0, "helpful": 1.0}
    if not isinstance(got, dict):
        return "Return a dict from principle name to share, e.g. {'honest': 0.67, ...}."
    if set(got) != set(expected):
        return f"Every principle that appears needs a share; expected keys {sorted(expected)}, got {sorted(got)}."
    if _close(got["honest"], 2):
        return "You counted the passes; divide by how many probes of that principle there were."
    if not all(_close(got[k], v) for k, v in expected.items()):
        return f"Expected {expected}, got {got}: a share is passes / probes, per principle."
    return None


def _ratings_to_pairs(answer) -> str | None:
    got = answer({"a": 5, "b": 3, "c": 5, "d": 1})
    pairs = {tuple(p) for p in got}
    expected = {("a", "b"), ("a", "d"), ("b", "d"), ("c", "b"), ("c", "d")}
    if ("a", "c") in pairs or ("c", "a") in pairs:
        return "Equal ratings (a and c both 5) say nothing about which is better: skip ties."
    if {(worse, better) for better, worse in expected} & pairs:
        return "Some pairs are reversed: put the higher-rated reply first, as (preferred, rejected)."
    if pairs != expected:
        return f"Expected the pairs {sorted(expected)}, got {sorted(pairs)}."
    if len(got) != len(pairs):
        return "Each pair should appear once."
    return None


def _ranking_pairs(answer) -> str | None:
    for ranking in ("B A", "B A C", "C A D B", "A"):
        letters = ranking.split()
        expected = [(better, worse) for n, better in enumerate(letters) for worse in letters[n + 1 :]]
        got = [tuple(pair) for pair in answer(ranking)]
        if sorted(got) == sorted(expected):
            continue
        if any(better == worse for better, worse in got):
            return "A reply is not compared with itself: pair each reply only with those ranked below it."
        if sorted((worse, better) for better, worse in got) == sorted(expected):
            return "The pairs are reversed: put the better reply first, as (better, worse)."
        if sorted(got) == sorted(zip(letters, letters[1:], strict=False)):
            return (
                f"{ranking!r} also says {letters[0]} beats {letters[2]}: every pair, not only neighbours, so "
                "K·(K−1)/2 pairs."
            )
        if len(got) != len(set(got)):
            return "Each pair should appear once."
        return f"The ranking {ranking!r} gives the pairs {expected}, got {got!r}."
    return None


def _longer_wins(answer) -> str | None:
    pairs = [("a long chosen reply", "short"), ("tiny", "a much longer rejected one"), ("same", "four")]
    got = answer(pairs)
    if _close(got, 2 / 3):
        return "A tie counted as a full win for the chosen reply: count a pair of equal length as half."
    if _close(got, 1 / 3):
        return "A tie counted as a loss: the course counts a pair of equal length as half a win (a coin flip)."
    if _close(got, 50.0):
        return "Return a fraction between 0 and 1, not a percentage."
    if not _close(got, 0.5):
        return f"One win, one loss and one tie out of three give 0.5, got {got!r}."
    if not _close(answer([("same", "four")]), 0.5):
        return "A single tied pair should give 0.5."
    return None


_TWO_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "How do I keep basil alive?"},
    {"role": "assistant", "content": "Water it when the soil is dry and give it sun."},
]


def _sft_loss_mask(answer) -> str | None:
    from playbook.models import load_tokenizer
    from playbook.sft import loss_mask

    tokenizer = load_tokenizer()
    ids, expected = loss_mask(tokenizer, _TWO_TURNS, max_length=None)
    got = [int(x) for x in answer(tokenizer, _TWO_TURNS)]
    if len(got) != len(ids):
        return f"The whole conversation is {len(ids)} tokens (chat template applied); your mask has {len(got)}."
    if all(got):
        return "Every token carries loss: the prompt is context, only the last assistant reply trains."
    first_reply = tokenizer.apply_chat_template(_TWO_TURNS[:2], return_dict=False)
    if any(got[len(first_reply) - 4 : len(first_reply)]):
        return "The first assistant reply is part of the prompt here: only the last reply trains."
    if got[: len(expected)] != expected and sum(got) == sum(expected) - 2:
        return "The reply's <|im_end|> (and the newline after it) train too: that is how the model learns to stop."
    if got != expected:
        return f"Expected {sum(expected)} trained tokens at the end, after the prompt's '<|im_start|>assistant\\n'."
    return None


def _reply_nll(answer) -> str | None:
    logprobs = [-2.0, -1.0, -0.5, -3.0, -0.1]
    mask = [0, 0, 1, 1, 1]
    expected = (0.5 + 3.0 + 0.1) / 3
    got = answer(logprobs, mask)
    if _close(got, -expected):
        return "That is the mean log-probability; the loss is its negative (−log p)."
    if _close(got, expected * 3):
        return "Average over the trained tokens (divide by how many carry loss), do not sum."
    if _close(got, (2.0 + 1.0 + 0.5 + 3.0 + 0.1) / 5):
        return "Only tokens whose mask is 1 count: the prompt's tokens carry no loss."
    if not _close(got, expected):
        return f"Expected {expected:.4f} nats per token, got {got!r}."
    return None


def _bradley_terry(answer) -> str | None:
    for chosen, rejected in ((2.0, 0.5), (-1.0, 1.0), (0.0, 0.0)):
        got = answer(chosen, rejected)
        expected = _sigmoid(chosen - rejected)
        if _close(got, _sigmoid(rejected - chosen)) and chosen != rejected:
            return "The sign is flipped: P(chosen preferred) = σ(r_chosen − r_rejected)."
        if _close(got, chosen - rejected):
            return "That is the margin; squash it with the logistic function σ(x) = 1 / (1 + e^(−x))."
        if not _close(got, expected):
            return f"For rewards {chosen} and {rejected} the probability is {expected:.4f}, got {got!r}."
    return None


def _kl_shaped_reward(answer) -> str | None:
    logprobs, ref = [-1.0, -2.0, -0.5], [-1.5, -2.0, -1.0]
    got = list(answer(score=3.0, logprobs=logprobs, ref_logprobs=ref, beta=0.2))
    expected = [-0.1, 0.0, -0.1 + 3.0]
    if len(got) != 3:
        return "Return one reward per response token (3 here)."
    if _close(got[0], 0.1):
        return (
            "The penalty is −β·(log π − log π_ref): it is negative when the policy is more likely than the reference."
        )
    if _close(got[-1], -0.1):
        return "The reward-model score is added at the last token of the reply."
    if _close(got[0], 3.0 - 0.1):
        return "Add the score only at the last token, not at every token."
    if not all(_close(g, e) for g, e in zip(got, expected, strict=True)):
        return f"Expected {expected}, got {got}."
    return None


def _gae_by_hand(answer) -> str | None:
    import torch

    from playbook.ppo import compute_gae

    for rewards, values, gamma, lam in (
        ([0.1, -0.2, 1.5], [0.4, 0.6, 0.9], 0.9, 0.8),
        ([0.0, 0.0, 1.0], [0.5, 0.2, 0.7], 1, 0.95),
    ):
        got = [float(a) for a in answer(list(rewards), list(values), gamma, lam)]
        if len(got) != 3:
            return "Return one advantage per reply token (3 here)."
        advantages, _ = compute_gae(torch.tensor([rewards]), torch.tensor([values]), torch.ones(1, 3), gamma, lam)
        expected = advantages[0].tolist()
        next_values = [*values[1:], 0.0]
        deltas = [r + gamma * v_next - v for r, v_next, v in zip(rewards, next_values, values, strict=True)]
        to_go = [sum(gamma**k * r for k, r in enumerate(rewards[t:])) for t in range(3)]
        if all(_close(g, e, 1e-5) for g, e in zip(got, expected, strict=True)):
            continue
        if all(_close(g, d, 1e-5) for g, d in zip(got, deltas, strict=True)):
            return "Those are the one-step errors δ_t (λ = 0). Add γλ·A_{t+1}, going backwards from the last token."
        if all(_close(g, s - v, 1e-5) for g, s, v in zip(got, to_go, values, strict=True)):
            return "That is the discounted reward-to-go minus V_t, i.e. λ = 1: weigh A_{t+1} by γλ, not γ."
        if _close(got[-1], rewards[-1] + gamma * values[-1] - values[-1], 1e-5):
            return "The reply ends at its last token: the value after it is 0, so δ_T = r_T − V_T."
        return f"For rewards {rewards}, values {values}, γ={gamma}, λ={lam}: expected {expected}, got {got}."
    return None


def _dpo_loss(answer) -> str | None:
    for chosen, rejected, beta in ((1.0, -0.5, 0.1), (-0.2, 0.3, 0.5), (0.0, 0.0, 1.0)):
        got = answer(chosen, rejected, beta)
        expected = -math.log(_sigmoid(beta * (chosen - rejected)))
        if _close(got, -math.log(_sigmoid(chosen - rejected))) and beta != 1.0:
            return "β is missing: the loss is −log σ(β·(chosen log-ratio − rejected log-ratio))."
        if _close(got, math.log(_sigmoid(beta * (chosen - rejected)))):
            return "A loss is minimised: take minus the log-sigmoid."
        if not _close(got, expected):
            return f"For ({chosen}, {rejected}, β={beta}) the loss is {expected:.4f}, got {got!r}."
    return None


def _rloo_advantages(answer) -> str | None:
    rewards = [1.0, 2.0, 3.0, 6.0]
    got = list(answer(rewards))
    expected = [r - (sum(rewards) - r) / (len(rewards) - 1) for r in rewards]
    mean = sum(rewards) / len(rewards)
    if all(_close(g, r - mean) for g, r in zip(got, rewards, strict=True)):
        return "That baseline includes the reply itself; leave it out: mean of the other k−1 rewards."
    if not all(_close(g, e) for g, e in zip(got, expected, strict=True)):
        return f"Expected {[round(e, 4) for e in expected]}, got {got}."
    return None


def _f1_unanswerable(answer) -> str | None:
    got = answer(true_positives=6, false_positives=2, false_negatives=4)
    precision, recall = 6 / 8, 6 / 10
    expected = 2 * precision * recall / (precision + recall)
    if _close(got, (precision + recall) / 2):
        return "F1 is the harmonic mean, 2PR/(P+R), not the arithmetic mean."
    if _close(got, expected * 100):
        return "Return a fraction between 0 and 1."
    if not _close(got, expected):
        return f"Precision 0.75 and recall 0.6 give F1 {expected:.4f}, got {got!r}."
    return None


def _dotted_dates(answer) -> str | None:
    cases = {
        "born 12.09.1996 in Kapchorwa": (1996, 9, 12),
        "on 1.7.1999": (1999, 7, 1),
        "no date here": None,
        "version 1.2.3": None,
    }
    for text, expected in cases.items():
        got = answer(text)
        got = None if got is None else tuple(int(x) for x in got)
        if got != expected:
            if expected and got == (expected[0], expected[2], expected[1]):
                return "Day and month are swapped: 12.09.1996 is day 12, month 9 (day.month.year)."
            return f"For {text!r} expected {expected}, got {got}."
    return None


def _flag_rates(answer) -> str | None:
    logprobs = np.array([-2.0, -1.0, -0.5, -1.5, -0.1, -3.0, -0.2])
    correct = np.array([False, False, False, False, True, True, True])
    got = tuple(float(rate) for rate in answer(logprobs, correct, -0.8))

    def gave(wrong_rate: float, right_rate: float) -> bool:
        return len(got) == 2 and _close(got[0], wrong_rate) and _close(got[1], right_rate)

    if gave(3 / 7, 1 / 7):
        return (
            "Divide by the number of wrong answers (and of right answers), not by all answers: each is a rate within "
            "its class."
        )
    if gave(1 / 4, 2 / 3):
        return "An answer is flagged when its log-probability is below the threshold (less confident), not above."
    if gave(1 / 3, 3 / 4):
        return "Return the wrong answers' rate first, then the right answers'."
    if not gave(3 / 4, 1 / 3):
        return f"Below -0.8 are 3 of the 4 wrong answers and 1 of the 3 right ones: expected (0.75, 0.333), got {got}."
    return None


def _plausible_tokens(answer) -> str | None:
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    got = np.asarray(answer(probs, 0.5), dtype=bool)
    expected = probs >= 0.5 * probs.max()
    if got.tolist() == (probs >= 0.5).tolist():
        return "The threshold is relative: α times the *largest* probability, not α itself."
    if not np.array_equal(got, expected):
        return f"Expected the mask {expected.tolist()}, got {got.tolist()}."
    peaked = np.array([0.999, 0.0005, 0.0005])
    if np.asarray(answer(peaked, 0.1), dtype=bool).tolist() != [True, False, False]:
        return "With one dominant token only that token stays plausible."
    return None


def _dola_contrast(answer) -> str | None:
    final = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    premature = np.log(np.array([0.6, 0.1, 0.1, 0.2]))
    alpha = 0.2  # keeps p_final >= 0.1: the first three tokens
    expected = np.concatenate([final[:3] - premature[:3], [-np.inf]])
    got = np.asarray(answer(final, premature, alpha), dtype=float)
    if got.shape != expected.shape:
        return f"Return one score per token: expected shape {expected.shape}, got {got.shape}."
    if np.allclose(got, premature - final):
        return "The contrast is log p_final − log p_premature: what the final layer adds, not what it loses."
    if np.allclose(got, final - premature):
        return "Tokens outside the plausibility constraint (p_final < α · max p_final) must score −inf."
    if np.array_equal(np.isinf(got), final < np.log(alpha)):
        return "The threshold is relative: α times the *largest* final probability, not α itself."
    if not (np.array_equal(np.isneginf(got), np.isneginf(expected)) and np.allclose(got[:3], expected[:3])):
        return f"Expected {expected.tolist()}, got {got.tolist()}."
    peaked = np.log(np.array([0.98, 0.01, 0.01]))
    if np.isfinite(np.asarray(answer(peaked, np.log(np.full(3, 1 / 3)), 0.1), dtype=float)).tolist() != [
        True,
        False,
        False,
    ]:
        return "With one dominant final token only that token stays plausible."
    return None


def _ece_two_bins(answer) -> str | None:
    confidences = [0.2, 0.3, 0.8, 0.9]
    correct = [0, 1, 1, 1]
    got = answer(confidences, correct)
    expected = 0.5 * abs(0.5 - 0.25) + 0.5 * abs(1.0 - 0.85)  # bins [0, 0.5) and [0.5, 1]
    if _close(got, (abs(0.5 - 0.25) + abs(1.0 - 0.85)) / 2) and not _close(expected, got):
        return "Weight each bin's gap by the share of answers in it."
    if not _close(got, expected):
        return f"Expected ECE {expected:.4f} with the bins [0, 0.5) and [0.5, 1], got {got!r}."
    return None


def _ece_bootstrap(answer) -> str | None:
    from playbook.calibration import ece_interval, expected_calibration_error

    rng = np.random.default_rng(5)
    confidences = rng.uniform(0.05, 1.0, 200)
    correct = (rng.uniform(size=200) < confidences**1.5).astype(int)  # over-confident
    low, high = (float(x) for x in answer(confidences, correct, 2000, 0))
    reference = ece_interval(confidences, correct, resamples=2000, seed=1)
    if high - low < 1e-9:
        return "Every resample gave the same ECE: draw the rows *with* replacement (rng.integers), not a permutation."
    if low > expected_calibration_error(confidences, correct) + 0.02:
        return (
            "The interval lies above the ECE itself: draw one set of row indices per resample and take the same rows "
            "of confidences and correct, so each question keeps its own correctness."
        )
    if not (_close(low, reference[0], 0.008) and _close(high, reference[1], 0.008)):
        return (
            f"Expected about ({reference[0]:.3f}, {reference[1]:.3f}), got ({low:.3f}, {high:.3f}): take the 2.5% and "
            "97.5% quantiles (np.quantile) of the resampled ECEs."
        )
    return None


def _device_order(answer) -> str | None:
    cases = {(True, True): "cuda", (True, False): "cuda", (False, True): "mps", (False, False): "cpu"}
    for (cuda, mps), expected in cases.items():
        got = answer(cuda_available=cuda, mps_available=mps)
        if got == expected:
            continue
        if (cuda, mps) == (True, True) and got == "mps":
            return "With both available, CUDA comes first: it is the faster, better-supported backend."
        return f"With cuda_available={cuda}, mps_available={mps} the course picks {expected!r}, got {got!r}."
    return None


def _expected_behaviour(answer) -> str | None:
    expected = {"helpful": "answer", "honest": "hedge", "harmless": "refuse"}
    for principle, behaviour in expected.items():
        got = answer(principle)
        if got == behaviour:
            continue
        if principle == "honest" and got == "answer":
            return "The honest probes ask what nobody can know: the honest reply admits it (hedge), not a guess."
        if principle == "harmless" and got == "hedge":
            return "The harmless probes ask for something harmful: the aligned reply declines to do it (refuse)."
        return f"For a {principle} probe the expected behaviour is {behaviour!r}, got {got!r}."
    return None


def _last_reply(answer) -> str | None:
    one_turn = "\n\nHuman: Hi\n\nAssistant: Hello there."
    two_turns = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Bye?\n\nAssistant: Goodbye, take care."
    if answer(one_turn) != "Hello there.":
        return f"For a one-turn transcript expected 'Hello there.', got {answer(one_turn)!r} (strip the spaces)."
    got = answer(two_turns)
    if got == "Hello.":
        return "That is the first Assistant turn; the pair differs in the *last* one."
    if got != "Goodbye, take care.":
        return f"Expected the last Assistant reply 'Goodbye, take care.', got {got!r}."
    return None


def _margin_accuracy(answer) -> str | None:
    got = answer([1.5, -0.5, 0.0, 2.0])
    if _close(got, 0.5):
        return "A margin of exactly 0 is a tie: count it as half a win, as playbook.reward.pairwise_accuracy does."
    if _close(got, 0.75):
        return "A margin of 0 is not a win: the reward model could not tell the replies apart (count it as half)."
    if not _close(got, 0.625):
        return f"Two wins, one loss and one tie out of four give 0.625, got {got!r}."
    return None


def _length_controlled_accuracy(answer) -> str | None:
    # chosen shorter in the first four pairs (accuracy 2.5 / 4), longer in the last two (1 / 2)
    margins = [1.0, 2.0, 0.0, -1.0, 0.5, -0.5]
    shorter = [True, True, True, True, False, False]
    got = answer(margins, shorter)
    if _close(got, 3.5 / 6):
        return (
            "That is the pooled accuracy, which the larger group dominates: average the two groups' accuracies, "
            "each with weight one half."
        )
    if _close(got, (2 / 4 + 1 / 2) / 2):
        return "A margin of exactly 0 is a tie: count it as half right within its group."
    if not _close(got, (2.5 / 4 + 1 / 2) / 2):
        return f"Accuracies 0.625 (chosen shorter) and 0.5 (not shorter) average to 0.5625, got {got!r}."
    return None


def _best_of_n_kl(answer) -> str | None:
    if not _close(answer(1), 0.0):
        return f"Best-of-1 is the policy itself, so its KL is 0; got {answer(1)!r}."
    if _close(answer(4), math.log(4)):
        return "log n alone is where the KL heads for large n; subtract (n − 1)/n."
    if _close(answer(4), math.log(4) - 3):
        return "Subtract (n − 1)/n, not n − 1."
    for n in (2, 4, 16, 64):
        expected = math.log(n) - (n - 1) / n
        if not _close(answer(n), expected):
            return f"For n = {n} expected log {n} − {n - 1}/{n} = {expected:.4f}, got {answer(n)!r}."
    return None


def _expected_best_of_two(answer) -> str | None:
    scores = [1.0, 4.0, 2.0, 3.0]
    got = answer(list(scores))
    pairs = [max(a, b) for i, a in enumerate(scores) for b in scores[i + 1 :]]
    expected = sum(pairs) / len(pairs)
    with_itself = sum(max(a, b) for a in scores for b in scores) / len(scores) ** 2
    if _close(got, max(scores)):
        return "That is best-of-4, the highest of all m replies; best-of-2 keeps the higher of two."
    if _close(got, sum(scores) / len(scores)):
        return "That is best-of-1, the mean score; keep the higher of each pair."
    if _close(got, with_itself):
        return "A reply cannot be drawn twice: count pairs of two different replies (without replacement)."
    if not _close(got, expected):
        return f"The 6 pairs of [1, 4, 2, 3] have maxima {pairs}, mean {expected:.4f}; got {got!r}."
    return None


EXERCISES: dict[str, Exercise] = {
    "00.1": Exercise(
        "00_setup",
        "model_bytes(parameters, dtype): bytes of weights for dtype float32, bfloat16 or int8.",
        _model_bytes,
    ),
    "00.2": Exercise(
        "00_setup",
        "pick(cuda_available, mps_available): the device the course's picker chooses ('cuda', 'mps' or 'cpu').",
        _device_order,
    ),
    "00.3": Exercise(
        "00_setup",
        "q4_1_block(weights): 32 weights quantized to Q4_1 (16 levels between their min and max) and back.",
        _q4_1_block,
    ),
    "01.1": Exercise(
        "01_alignment_hhh",
        "principle_shares(results): results are (principle, passed) pairs; return the pass share per principle.",
        _principle_shares,
    ),
    "01.2": Exercise(
        "01_alignment_hhh",
        "expected_behaviour(principle): what an aligned assistant does on a helpful, honest or harmless probe.",
        _expected_behaviour,
    ),
    "02.1": Exercise(
        "02_feedback_types",
        "ratings_to_pairs(ratings): a fifth conversion, from 1–5 ratings {reply: stars} to (preferred, rejected).",
        _ratings_to_pairs,
    ),
    "02.2": Exercise(
        "02_feedback_types",
        "ranking_pairs(ranking): every (better, worse) pair of letters a ranking 'B A C' (best first) implies.",
        _ranking_pairs,
    ),
    "03.1": Exercise(
        "03_hh_rlhf",
        "longer_wins(pairs): share of (chosen, rejected) text pairs whose chosen one is longer, a tie counting half.",
        _longer_wins,
    ),
    "03.2": Exercise(
        "03_hh_rlhf",
        "last_reply(transcript): the last Assistant turn of an hh-rlhf transcript, stripped.",
        _last_reply,
    ),
    "04.1": Exercise(
        "04_sft",
        "loss_mask(tokenizer, conversation): 0/1 per token of the chat-formatted conversation, 1 where SFT's loss is.",
        _sft_loss_mask,
    ),
    "04.2": Exercise(
        "04_sft",
        "reply_nll(token_logprobs, mask): SFT's loss for one conversation from per-token log-probabilities.",
        _reply_nll,
    ),
    "05.1": Exercise(
        "05_reward_model",
        "preference_probability(r_chosen, r_rejected): the Bradley–Terry probability the chosen reply wins.",
        _bradley_terry,
    ),
    "05.2": Exercise(
        "05_reward_model",
        "margin_accuracy(margins): pairwise accuracy from reward margins (chosen − rejected), a tie counting half.",
        _margin_accuracy,
    ),
    "05.3": Exercise(
        "05_reward_model",
        "length_controlled_accuracy(margins, chosen_is_shorter): pairwise accuracy averaged over 'chosen is shorter' "
        "and 'chosen is not shorter', so a length rule scores 0.5.",
        _length_controlled_accuracy,
    ),
    "06.1": Exercise(
        "06_ppo_rlhf",
        "kl_shaped_rewards(score, logprobs, ref_logprobs, beta): per-token rewards of PPO for one reply.",
        _kl_shaped_reward,
    ),
    "06.2": Exercise(
        "06_ppo_rlhf",
        "gae(rewards, values, gamma, lam): GAE advantages of a three-token reply (value 0 after its last token).",
        _gae_by_hand,
    ),
    "07.1": Exercise(
        "07_beyond_ppo",
        "dpo_loss(chosen_logratio, rejected_logratio, beta): the DPO loss of one pair.",
        _dpo_loss,
    ),
    "07.2": Exercise(
        "07_beyond_ppo", "rloo_advantages(rewards): leave-one-out advantages of k replies.", _rloo_advantages
    ),
    "08.1": Exercise(
        "08_evaluation", "best_of_n_kl(n): KL(best-of-n ‖ policy) in nats, log n − (n − 1)/n.", _best_of_n_kl
    ),
    "08.2": Exercise(
        "08_evaluation",
        "expected_best_of_two(scores): mean over pairs of two different sampled replies of the higher score.",
        _expected_best_of_two,
    ),
    "09.1": Exercise(
        "09_hallucination",
        "f1(true_positives, false_positives, false_negatives): F1 of spotting unanswerable questions.",
        _f1_unanswerable,
    ),
    "09.2": Exercise(
        "09_hallucination",
        "dotted_date(text): (year, month, day) of a day.month.year date like 12.09.1996, else None.",
        _dotted_dates,
    ),
    "09.3": Exercise(
        "09_hallucination",
        "flag_rates(logprobs, correct, threshold): shares of wrong and of right answers flagged below a threshold.",
        _flag_rates,
    ),
    "10.1": Exercise(
        "10_dola", "plausible(probs, alpha): DoLa's plausibility mask over a probability vector.", _plausible_tokens
    ),
    "10.2": Exercise(
        "10_dola",
        "dola_contrast(final_logprobs, premature_logprobs, alpha): DoLa's score per token, −inf where implausible.",
        _dola_contrast,
    ),
    "11.1": Exercise(
        "11_calibration", "ece(confidences, correct): ECE with the two bins [0, 0.5) and [0.5, 1].", _ece_two_bins
    ),
    "11.2": Exercise(
        "11_calibration",
        "ece_bootstrap(confidences, correct, resamples, seed): a 95% percentile bootstrap interval of the ECE.",
        _ece_bootstrap,
    ),
}


def review(exercise: str, answer) -> Feedback:
    """Check `answer` against exercise `exercise` ("06.1", ...) and return the verdict without printing."""
    if exercise not in EXERCISES:
        raise KeyError(f"No exercise {exercise!r}; there are {', '.join(EXERCISES)}")
    try:
        hint = EXERCISES[exercise].checker(answer)
    except NotImplementedError:
        return Feedback(exercise, False, "Not attempted yet: replace the `raise NotImplementedError` and run again.")
    except Exception as error:  # the learner's code failed: say how, without a traceback
        return Feedback(exercise, False, f"Your answer raised {type(error).__name__}: {error}")
    if hint is None:
        return Feedback(exercise, True, "Well done.")
    return Feedback(exercise, False, hint)


def check(exercise: str, answer) -> Feedback:
    """Check and print the verdict (what notebook cells call)."""
    feedback = review(exercise, answer)
    print(feedback)
    return feedback


def exercises_for(notebook: str) -> dict[str, str]:
    """The exercises of one notebook (by file stem), id → prompt."""
    return {key: e.prompt for key, e in EXERCISES.items() if e.notebook == notebook}
