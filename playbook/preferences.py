"""Statistics of a preference data set (hh-rlhf or any set in TRL's conversational preference format).

What matters before training a reward model on pairs: how long the conversations are (truncation), how long the
responses are, and whether a trivial rule already predicts the human choice. If "the longer response wins" is
right 60% of the time, a reward model must beat 60%, not 50%, before it has learned anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from datasets import Dataset
from matplotlib.figure import Figure
from transformers import PreTrainedTokenizerBase

from playbook.stats import bootstrap_mean_interval

MAX_TURNS_SHOWN = 10


def pair_statistics(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> pd.DataFrame:
    """One row per pair: user turns in the prompt, and token and character lengths of prompt and both responses.

    Token counts are of the raw text (no chat template), so they compare across models with the same tokenizer.
    """

    def token_lengths(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    prompts = ["\n".join(m["content"] for m in prompt) for prompt in dataset["prompt"]]
    chosen = [c[-1]["content"] for c in dataset["chosen"]]
    rejected = [r[-1]["content"] for r in dataset["rejected"]]
    return pd.DataFrame(
        {
            "turns": [sum(m["role"] == "user" for m in prompt) for prompt in dataset["prompt"]],
            "prompt_tokens": token_lengths(prompts),
            "chosen_tokens": token_lengths(chosen),
            "rejected_tokens": token_lengths(rejected),
            "chosen_chars": [len(t) for t in chosen],
            "rejected_chars": [len(t) for t in rejected],
        }
    )


def longer_wins_scores(statistics: pd.DataFrame, unit: str = "tokens") -> np.ndarray:
    """Per pair, whether the chosen response is the longer one: 1, 0, or 0.5 for a tie (the course's convention for
    ties everywhere: a coin flip)."""
    chosen, rejected = statistics[f"chosen_{unit}"], statistics[f"rejected_{unit}"]
    if len(chosen) == 0:
        raise ValueError("no pairs to score.")
    return ((chosen > rejected) + 0.5 * (chosen == rejected)).to_numpy(float)


def length_bias_accuracy(statistics: pd.DataFrame, unit: str = "tokens") -> float:
    """Accuracy of the rule "the longer response is the chosen one" (a tie counts as a coin flip, 0.5)."""
    return float(longer_wins_scores(statistics, unit).mean())


@dataclass(frozen=True)
class LengthPreference:
    """How often people chose the longer response, with a bootstrap interval over pairs."""

    name: str
    share: float
    interval: tuple[float, float]
    pairs: int

    def __str__(self) -> str:
        low, high = self.interval
        head = (
            f"{self.name}: the longer reply is the chosen one in {self.share:.1%} of {self.pairs:,} pairs "
            f"(95% interval {low:.1%} to {high:.1%}, a tie counting half)"
        )
        if low <= 0.5 <= high:
            return (
                f"{head}; that is within the noise of a coin flip, so length alone gives a reward model no direction."
            )
        longer = self.share > 0.5
        return (
            f"{head}; the {'longer' if longer else 'shorter'} reply wins more often, so a reward model that picks up "
            f"length from these pairs pushes a policy towards {'longer' if longer else 'shorter'} replies."
        )


def length_preference(name: str, statistics: pd.DataFrame, unit: str = "tokens") -> LengthPreference:
    """The share of pairs whose chosen response is the longer one (ties half) and its BCa bootstrap interval."""
    scores = longer_wins_scores(statistics, unit)
    return LengthPreference(name, float(scores.mean()), bootstrap_mean_interval(scores), len(scores))


TERMINAL = ".!?…"
_CLOSERS = "\"'”’)]*_ "


def ends_mid_sentence(text: str) -> bool:
    """True when ``text``, after closing quotes and brackets, does not end in terminal punctuation (``. ! ? …``):
    the reply stops mid-sentence, as some hh-rlhf replies do upstream (the collecting model's reply was cut off)."""
    stripped = text.rstrip().rstrip(_CLOSERS)
    return not stripped.endswith(tuple(TERMINAL))


def unfinished_replies(dataset: Dataset) -> pd.DataFrame:
    """Per role (chosen, rejected): replies, how many end mid-sentence (:func:`ends_mid_sentence`), and the share."""
    rows = {}
    for role in ("chosen", "rejected"):
        replies = [messages[-1]["content"] for messages in dataset[role]]
        unfinished = sum(ends_mid_sentence(reply) for reply in replies)
        rows[role] = {"replies": len(replies), "mid-sentence": unfinished, "share": unfinished / max(len(replies), 1)}
    return pd.DataFrame.from_dict(rows, orient="index")


def summary_table(statistics: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per data set: pairs, median turns and lengths, and the length-bias baselines.

    "best length rule" is the better of "longer wins" and "shorter wins": the accuracy a reward model gets for
    free by learning only length, so the bar it has to clear.
    """
    rows = {}
    for name, stats in statistics.items():
        rows[name] = {
            "pairs": len(stats),
            "median user turns": stats["turns"].median(),
            "multi-turn share": (stats["turns"] > 1).mean(),
            "median prompt tokens": stats["prompt_tokens"].median(),
            "median chosen tokens": stats["chosen_tokens"].median(),
            "median rejected tokens": stats["rejected_tokens"].median(),
            "longer-wins accuracy (tokens)": length_bias_accuracy(stats, "tokens"),
            "longer-wins accuracy (chars)": length_bias_accuracy(stats, "chars"),
            "best length rule (tokens)": max(length_bias_accuracy(stats), 1 - length_bias_accuracy(stats)),
        }
    return pd.DataFrame(rows)


def find_examples(dataset: Dataset, pattern: str, *, limit: int | None = None) -> list[int]:
    """Indices of pairs whose user turns match ``pattern`` (a regular expression, case-insensitive)."""
    regex = re.compile(pattern, re.IGNORECASE)
    found = []
    for index, prompt in enumerate(dataset["prompt"]):
        if any(m["role"] == "user" and regex.search(m["content"]) for m in prompt):
            found.append(index)
            if limit is not None and len(found) == limit:
                break
    return found


def plot_statistics(statistics: dict[str, pd.DataFrame]) -> Figure:
    """Four panels: user turns, prompt length, response length (chosen vs rejected), and the length baseline."""
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    turns, prompts, responses, bias = axes.ravel()
    turn_bins = np.arange(0.5, MAX_TURNS_SHOWN + 1.5)
    for name, stats in statistics.items():
        turns.hist(stats["turns"].clip(upper=MAX_TURNS_SHOWN), bins=turn_bins, alpha=0.6, label=name, density=True)
        prompts.hist(np.log10(stats["prompt_tokens"].clip(lower=1)), bins=30, alpha=0.6, label=name, density=True)
    turns.set(
        title="User turns per prompt",
        xlabel=f"turns ({MAX_TURNS_SHOWN} = {MAX_TURNS_SHOWN} or more)",
        ylabel="share of pairs",
    )
    prompts.set(title="Prompt length", xlabel="log10(tokens)", ylabel="density")
    for axis in (turns, prompts):
        axis.legend(fontsize=8)
    first = next(iter(statistics))
    stats = statistics[first]
    bins = np.linspace(0, np.log10(max(stats["chosen_tokens"].max(), stats["rejected_tokens"].max(), 10)), 30)
    for column, label in (("chosen_tokens", "chosen"), ("rejected_tokens", "rejected")):
        responses.hist(np.log10(stats[column].clip(lower=1)), bins=bins, alpha=0.6, label=label, density=True)
    responses.set(title=f"Response length ({first})", xlabel="log10(tokens)", ylabel="density")
    responses.legend(fontsize=8)
    names = list(statistics)
    accuracies = [length_bias_accuracy(statistics[n]) for n in names]
    bars = bias.bar(names, accuracies, color="tab:gray")
    bias.bar_label(bars, fmt="%.3f")
    bias.axhline(0.5, color="k", linestyle="--", linewidth=1, label="coin flip")
    bias.set(title='Baseline: "the longer response wins"', ylabel="accuracy", ylim=(0, 1))
    bias.legend(fontsize=8)
    figure.tight_layout()
    return figure
