"""One worked solution per exercise id (see playbook/exercises.py for the questions)."""

from __future__ import annotations

import math
import re
from collections import defaultdict

import numpy as np


def model_bytes(parameters: int, dtype: str) -> int:
    return parameters * {"float32": 4, "bfloat16": 2, "int8": 1}[dtype]


def q4_1_block(weights: list[float]) -> list[float]:
    low, high = min(weights), max(weights)
    step = (high - low) / 15
    if step == 0:
        return list(weights)
    return [low + min(15, max(0, round((w - low) / step))) * step for w in weights]


def principle_shares(results: list[tuple[str, bool]]) -> dict[str, float]:
    passed, total = defaultdict(int), defaultdict(int)
    for principle, ok in results:
        total[principle] += 1
        passed[principle] += ok
    return {principle: passed[principle] / total[principle] for principle in total}


def ratings_to_pairs(ratings: dict[str, int]) -> list[tuple[str, str]]:
    return [(a, b) for a in ratings for b in ratings if ratings[a] > ratings[b]]


def ranking_pairs(ranking: str) -> list[tuple[str, str]]:
    letters = ranking.split()
    return [(better, worse) for place, better in enumerate(letters) for worse in letters[place + 1 :]]


def longer_wins(pairs: list[tuple[str, str]]) -> float:
    wins = sum(1.0 if len(c) > len(r) else 0.5 if len(c) == len(r) else 0.0 for c, r in pairs)
    return wins / len(pairs)


def sft_loss_mask(tokenizer, conversation: list[dict[str, str]]) -> list[int]:
    full = tokenizer.apply_chat_template(conversation, return_dict=False)
    prompt = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=False)
    return [0] * len(prompt) + [1] * (len(full) - len(prompt))


def reply_nll(token_logprobs: list[float], mask: list[int]) -> float:
    trained = [-logprob for logprob, counts in zip(token_logprobs, mask, strict=True) if counts]
    return sum(trained) / len(trained)


def preference_probability(r_chosen: float, r_rejected: float) -> float:
    return 1 / (1 + math.exp(-(r_chosen - r_rejected)))


def kl_shaped_rewards(score: float, logprobs: list[float], ref_logprobs: list[float], beta: float) -> list[float]:
    rewards = [-beta * (lp - ref) for lp, ref in zip(logprobs, ref_logprobs, strict=True)]
    rewards[-1] += score
    return rewards


def gae(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    advantages, following = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0  # nothing comes after the last token
        delta = rewards[t] + gamma * next_value - values[t]
        following = delta + gamma * lam * following
        advantages[t] = following
    return advantages


def dpo_loss(chosen_logratio: float, rejected_logratio: float, beta: float) -> float:
    return -math.log(1 / (1 + math.exp(-beta * (chosen_logratio - rejected_logratio))))


def rloo_advantages(rewards: list[float]) -> list[float]:
    total, k = sum(rewards), len(rewards)
    return [r - (total - r) / (k - 1) for r in rewards]


def f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
    precision = true_positives / (true_positives + false_positives)
    recall = true_positives / (true_positives + false_negatives)
    return 2 * precision * recall / (precision + recall)


def dotted_date(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"\b([0-3]?\d)\.([01]?\d)\.((?:19|20)\d\d)\b", text)
    if not match:
        return None
    day, month, year = (int(g) for g in match.groups())
    return year, month, day


def flag_rates(logprobs: np.ndarray, correct: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = np.asarray(logprobs) < threshold
    correct = np.asarray(correct, dtype=bool)
    return float(flagged[~correct].mean()), float(flagged[correct].mean())


def plausible(probs: np.ndarray, alpha: float) -> np.ndarray:
    return probs >= alpha * probs.max()


def dola_contrast(final_logprobs: np.ndarray, premature_logprobs: np.ndarray, alpha: float) -> np.ndarray:
    plausible = final_logprobs >= np.log(alpha) + final_logprobs.max()
    return np.where(plausible, final_logprobs - premature_logprobs, -np.inf)


def ece(confidences: list[float], correct: list[int]) -> float:
    confidences, correct = np.asarray(confidences), np.asarray(correct)
    total = 0.0
    for in_bin in (confidences < 0.5, confidences >= 0.5):
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidences[in_bin].mean())
    return total


def ece_bootstrap(confidences: np.ndarray, correct: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    from playbook.calibration import expected_calibration_error

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = rng.integers(0, len(confidences), size=len(confidences))  # questions, with replacement
        values.append(expected_calibration_error(confidences[rows], correct[rows]))
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def pick(cuda_available: bool, mps_available: bool) -> str:
    if cuda_available:
        return "cuda"
    return "mps" if mps_available else "cpu"


def expected_behaviour(principle: str) -> str:
    return {"helpful": "answer", "honest": "hedge", "harmless": "refuse"}[principle]


def last_reply(transcript: str) -> str:
    return transcript.rsplit("\n\nAssistant:", 1)[1].strip()


def margin_accuracy(margins: list[float]) -> float:
    return sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / len(margins)


def length_controlled_accuracy(margins: list[float], chosen_is_shorter: list[bool]) -> float:
    groups = [[m for m, s in zip(margins, chosen_is_shorter, strict=True) if s == side] for side in (True, False)]
    return sum(margin_accuracy(group) for group in groups) / 2


def best_of_n_kl(n: int) -> float:
    return math.log(n) - (n - 1) / n


def expected_best_of_two(scores: list[float]) -> float:
    pairs = [max(a, b) for i, a in enumerate(scores) for b in scores[i + 1 :]]
    return sum(pairs) / len(pairs)


SOLUTIONS = {
    "00.1": model_bytes,
    "00.2": pick,
    "00.3": q4_1_block,
    "01.1": principle_shares,
    "01.2": expected_behaviour,
    "02.1": ratings_to_pairs,
    "02.2": ranking_pairs,
    "03.1": longer_wins,
    "03.2": last_reply,
    "04.1": sft_loss_mask,
    "04.2": reply_nll,
    "05.1": preference_probability,
    "05.2": margin_accuracy,
    "05.3": length_controlled_accuracy,
    "06.1": kl_shaped_rewards,
    "06.2": gae,
    "07.1": dpo_loss,
    "07.2": rloo_advantages,
    "08.1": best_of_n_kl,
    "08.2": expected_best_of_two,
    "09.1": f1,
    "09.2": dotted_date,
    "09.3": flag_rates,
    "10.1": plausible,
    "10.2": dola_contrast,
    "11.1": ece,
    "11.2": ece_bootstrap,
}
