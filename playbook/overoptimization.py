"""Reward over-optimisation measured on a laptop, in Gao, Schulman & Hilton's synthetic-gold setup (2022, "Scaling
Laws for Reward Model Overoptimization").

People cannot label thousands of replies for every experiment, so Gao et al. let a large **gold** reward model stand
in for them: it labels the preference pairs, **proxy** reward models are trained on those labels (fewer pairs, a
worse proxy), a policy is optimised against a proxy, and the gold model says how good the result really is. Here
every reward model is a linear Bradley–Terry head on the same frozen features (notebook 05's "head" method), so a
gold model and many proxies cost one feature pass:

- the gold head is fitted on every real hh-rlhf pair the course has;
- the training pairs are relabelled by the gold head's preference, and proxies are fitted on the first 100, 300,
  1,000 of them (a seeded order);
- best-of-n against each proxy is scored by proxy and gold from one set of m samples per prompt
  (:func:`playbook.evaluation.expected_best_of_n`), against √KL of best-of-n (log n − (n − 1)/n);
- PPO against a proxy (:class:`ProxyReward`) records the gold score of every reply it is rewarded for, so one run
  gives proxy and gold against its KL step by step (:func:`ppo_overoptimization`);
- Gao et al.'s functional forms are fitted to the gains: best-of-n d(α_bon − β_bon·d), RL d(α_RL − β_RL log d),
  with d = √KL (the subscripts keep these fitted α and β apart from the KL coefficient β).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from numpy.typing import ArrayLike
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.config import Profile, get_profile, runs_dir
from playbook.data import BUNDLED_DATA_DIR, hh_rlhf_split
from playbook.evaluation import best_of_n_kl, expected_best_of_n, sample_replies, win_rate_table
from playbook.io import Messages, text_key, write_atomically
from playbook.models import generate_replies, load_model, load_policy_and_reference
from playbook.ppo import PPOConfig, PPOTrainer, StartScale
from playbook.reward import (
    RewardConfig,
    RewardModel,
    backbone_features,
    cached_head_features,
    choose_l2,
    encode_conversation,
    fit_bradley_terry_head,
    load_or_train_reward_model,
)
from playbook.sft import load_or_train_sft_model
from playbook.stats import PairedDifference, bootstrap_interval, paired_difference, proportion_interval
from playbook.training import TrainResult, process_state


@dataclass(frozen=True)
class PairFeatures:
    """The backbone every head reads (a reward model whose own head is not used), and φ(chosen), φ(rejected) of the
    course split's training and held-out pairs."""

    backbone: RewardModel
    train: tuple[torch.Tensor, torch.Tensor]
    held_out: tuple[torch.Tensor, torch.Tensor]


def course_pair_features(profile: Profile | str | None = None, *, out: Path | None = None) -> PairFeatures:
    """Features of the course split's pairs, with ``out`` the runs folder (default the profile's).

    With the "head" method (smoke and cpu profiles) they are notebook 05's: its reward model in ``out/reward_model``
    (trained as notebook 05 trains it when missing) and the feature chunks it cached, so nothing is computed twice.
    Other methods fine-tune the backbone, so a "head" reward model of the profile's size is trained into
    ``out/overoptimization/head_reward_model`` for its features.
    """
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    out = out or runs_dir(profile)
    split = hh_rlhf_split(profile)
    config = RewardConfig.from_profile(profile)
    folder = out / "reward_model"
    if config.method != "head":
        config = RewardConfig.from_profile(profile, method="head")
        folder = out / "overoptimization" / "head_reward_model"
    backbone = load_or_train_reward_model(split["train"], config, folder=folder)
    checkpoints = folder.with_name(f"{folder.name}-checkpoints")
    return PairFeatures(
        backbone,
        cached_head_features(backbone, split["train"], config, checkpoints, split="train"),
        cached_head_features(backbone, split["test"], config, checkpoints, split="eval"),
    )


def fit_head(chosen: torch.Tensor, rejected: torch.Tensor, *, seed: int = 0, steps: int = 300) -> torch.Tensor:
    """A Bradley–Terry head on features, its L2 strength chosen on a held-out fifth (notebook 05's "head" fit)."""
    l2 = choose_l2(chosen, rejected, seed=seed)
    weight, _ = fit_bradley_terry_head(chosen, rejected, l2=l2, steps=steps, seed=seed)
    return weight


def gold_preferences(
    gold: torch.Tensor, first: torch.Tensor, second: torch.Tensor, *, noisy: bool = False, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of feature rows reordered as (preferred, other) by the gold head: the label a person would give
    in Gao et al.'s setup. With ``noisy``, the gold head's Bradley–Terry probability σ(r₁ − r₂) is sampled instead
    of always taking the higher reward (people disagree with themselves too)."""
    margin = (first - second) @ gold
    if noisy:
        generator = torch.Generator().manual_seed(seed)
        first_wins = torch.rand(len(margin), generator=generator) < torch.sigmoid(margin)
    else:
        first_wins = margin >= 0
    keep = first_wins[:, None]
    return torch.where(keep, first, second), torch.where(keep, second, first)


@dataclass(frozen=True)
class GoldAndProxies:
    """A gold head and proxy heads (gold-labelled training pairs → weight), with each proxy's agreement with the
    gold head on held-out pairs (``agreement``: pairs, agreement, its Wilson interval)."""

    gold: torch.Tensor
    proxies: dict[int, torch.Tensor]
    agreement: pd.DataFrame


def train_gold_and_proxies(
    train: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
    *,
    sizes: Sequence[int],
    noisy: bool = False,
    seed: int = 0,
) -> GoldAndProxies:
    """Fit the gold head on every real pair (``train`` and ``held_out``, each (φ(chosen), φ(rejected))), relabel
    the training pairs by gold, and fit one proxy per size on the first ``size`` of them in a seeded order.

    Agreement is measured on the held-out pairs relabelled by gold: how often the proxy prefers what gold prefers.
    """
    if any(size > len(train[0]) for size in sizes):
        raise ValueError(f"sizes={list(sizes)}: there are only {len(train[0])} training pairs; use smaller sizes")
    gold = fit_head(torch.cat([train[0], held_out[0]]), torch.cat([train[1], held_out[1]]), seed=seed)
    preferred, other = gold_preferences(gold, *train, noisy=noisy, seed=seed)
    order = torch.randperm(len(preferred), generator=torch.Generator().manual_seed(seed))
    held_preferred, held_other = gold_preferences(gold, *held_out)
    proxies, rows = {}, []
    for size in sizes:
        rows_used = order[:size]
        proxies[size] = fit_head(preferred[rows_used], other[rows_used], seed=seed)
        agrees = int((((held_preferred - held_other) @ proxies[size]) > 0).sum())
        low, high = proportion_interval(agrees, len(held_preferred))
        rows.append({"pairs": size, "agreement": agrees / len(held_preferred), "low": low, "high": high})
    return GoldAndProxies(gold, proxies, pd.DataFrame(rows).set_index("pairs"))


def course_heads(profile: Profile, features: PairFeatures) -> GoldAndProxies:
    """The gold head and the profile's proxies (``overopt_proxy_pairs``, those sizes the training pairs allow), fitted
    on ``features`` as notebook 08 fits them: what the evaluate stage and a recorded best-of-n run score with.

    When the training pairs are fewer than every size (the bundled sample data has 9), one proxy is fitted on all of
    them, so the notebook still runs; notebook 08 prints the sizes it got."""
    pairs = len(features.train[0])
    sizes = [size for size in profile.overopt_proxy_pairs if size <= pairs] or [pairs]
    return train_gold_and_proxies(features.train, features.held_out, sizes=sizes)


def reply_features(
    reward_model: RewardModel,
    prompts: Sequence[Messages],
    replies: Sequence[Sequence[str]],
    *,
    batch_size: int = 16,
) -> torch.Tensor:
    """The features the heads read, ``[prompts, samples, hidden]``, for ``replies[i]`` (samples of equal number)
    to ``prompts[i]``: one pass of the reward model's backbone serves the gold head and every proxy. A progress bar
    shows only for more than 64 replies (not for each PPO rollout)."""
    counts = {len(group) for group in replies}
    if len(replies) != len(prompts) or len(counts) != 1:
        raise ValueError("replies must hold the same number of samples for every prompt, one group per prompt")
    tokenizer: PreTrainedTokenizerBase = reward_model.tokenizer
    encoded = [
        encode_conversation(tokenizer, [*prompt, {"role": "assistant", "content": reply}], reward_model.max_length)
        for prompt, group in zip(prompts, replies, strict=True)
        for reply in group
    ]
    features = backbone_features(
        reward_model.model, encoded, tokenizer.pad_token_id, batch_size=batch_size, progress=len(encoded) > 64
    )
    return features.reshape(len(prompts), counts.pop(), -1)


@dataclass(frozen=True)
class SampleScores:
    """Every head's score of every sampled reply, ``[prompts, samples]``: all that best-of-n needs. From features
    (:meth:`from_features`) in a live run, or read back from a recorded one (:func:`recorded_best_of_n`)."""

    gold: np.ndarray
    proxies: dict[int, np.ndarray]

    @classmethod
    def from_features(
        cls, features: torch.Tensor, gold: torch.Tensor, proxies: Mapping[int, torch.Tensor]
    ) -> SampleScores:
        """Scores of the ``[prompts, samples, hidden]`` features (:func:`reply_features`) by each head."""
        return cls((features @ gold).numpy(), {pairs: (features @ head).numpy() for pairs, head in proxies.items()})

    @property
    def samples(self) -> int:
        """Sampled replies per prompt: the largest n of best-of-n these scores allow."""
        return self.gold.shape[1]


def best_of_n_overoptimization(scores: SampleScores, *, ns: Sequence[int], seed: int = 0) -> pd.DataFrame:
    """Gao et al.'s figure 1, best-of-n half: for each proxy and n, the expected gain of best-of-n (selected by the
    proxy) in proxy and in gold score over the sampling policy's mean, with a bootstrap interval over prompts for
    the gold gain.

    Gains are in standard deviations of that reward model's scores over all samples, so proxies of different scale
    share one axis.
    """
    gold_mean, gold_sd = scores.gold.mean(), scores.gold.std()
    rows = []
    for pairs, proxy_scores in scores.proxies.items():
        proxy_mean, proxy_sd = proxy_scores.mean(), proxy_scores.std()
        for n in ns:
            kl = best_of_n_kl(n)
            gold_gain = (expected_best_of_n(proxy_scores, scores.gold, n=n) - gold_mean) / gold_sd
            low, high = bootstrap_interval(gold_gain, np.mean, seed=seed)
            rows.append(
                {
                    "proxy pairs": pairs,
                    "n": n,
                    "kl": kl,
                    "sqrt_kl": math.sqrt(kl),
                    "proxy gain": float((expected_best_of_n(proxy_scores, n=n).mean() - proxy_mean) / proxy_sd),
                    "gold gain": float(gold_gain.mean()),
                    "gold low": low,
                    "gold high": high,
                }
            )
    return pd.DataFrame(rows)


def gold_change(scores: SampleScores, proxy_pairs: int, *, from_n: int, to_n: int) -> PairedDifference:
    """How the gold score of best-of-n (selected by the proxy of ``proxy_pairs`` pairs) changes from ``from_n`` to
    ``to_n``, paired over prompts, in standard deviations of gold's scores over all samples, with its interval: a
    fall beyond the noise after gold's peak is over-optimisation, not a wobble."""
    before, after = (_gold_of_best_of_n(scores, proxy_pairs, n) for n in (from_n, to_n))
    return paired_difference(after, before)


def gold_difference_between_proxies(
    scores: SampleScores, larger: int, smaller: int, *, n: int, confidence: float = 0.95
) -> PairedDifference:
    """Gold's score of best-of-n picked by the proxy of ``larger`` pairs minus picked by the one of ``smaller``
    pairs, paired over prompts (both pick among the same samples of the same prompts), in standard deviations of
    gold's scores. Two proxies' separate intervals can overlap while this paired one excludes 0: the prompts' own
    difficulty, shared by both, cancels in the difference. ``confidence``: of the interval (e.g. 1 − 0.05 / k for k
    comparisons)."""
    return paired_difference(_gold_of_best_of_n(scores, larger, n), _gold_of_best_of_n(scores, smaller, n), confidence)


def compare_proxy_sizes(scores: SampleScores, *, n: int) -> list[str]:
    """One line per pair of neighbouring proxy sizes: gold's gain of best-of-n with the larger proxy minus with the
    smaller one (:func:`gold_difference_between_proxies`), and, when its 95% interval excludes 0 and there are
    several comparisons, whether it still does at the Bonferroni-corrected confidence."""
    sizes = sorted(scores.proxies)
    comparisons = len(sizes) - 1
    lines = []
    for smaller, larger in zip(sizes[:-1], sizes[1:], strict=True):
        difference = gold_difference_between_proxies(scores, larger, smaller, n=n)
        corrected = gold_difference_between_proxies(scores, larger, smaller, n=n, confidence=1 - 0.05 / comparisons)
        if difference.low > 0:
            verdict = f"beyond the noise at n = {n}: the {larger}-pair proxy picked better replies"
        elif difference.high < 0:
            verdict = f"beyond the noise at n = {n}: the {smaller}-pair proxy picked better replies"
        else:
            verdict = "within the noise: these prompts cannot order the two"
        if comparisons > 1 and difference.excludes_zero:
            verdict += (
                f"; as one of {comparisons} comparisons (Bonferroni, {1 - 0.05 / comparisons:.1%} interval "
                f"[{corrected.low:+.2f}, {corrected.high:+.2f}]) it is "
                + ("still beyond the noise" if corrected.excludes_zero else "within the noise")
            )
        lines.append(
            f"Gold's gain with the {larger}-pair proxy minus the {smaller}-pair one, paired over prompts: "
            f"{difference.mean:+.2f} sd [95% CI {difference.low:+.2f}, {difference.high:+.2f}] over {difference.n} "
            f"prompts, {verdict}."
        )
    return lines


def _gold_of_best_of_n(scores: SampleScores, proxy_pairs: int, n: int) -> np.ndarray:
    """Per prompt: gold's expected score of the best of n samples by a proxy, in sd of gold's scores."""
    return expected_best_of_n(scores.proxies[proxy_pairs], scores.gold, n=n) / scores.gold.std()


def describe_best_of_n(curve: pd.DataFrame, scores: SampleScores) -> list[str]:
    """One line per proxy reading a best-of-n curve (:func:`best_of_n_overoptimization` of ``scores``): the gains at
    the largest n, Gao et al.'s form d(α_bon − β_bon·d) fitted to proxy and gold (concave or not, and whether a
    fitted gold peak lies inside the measured range), and, where gold peaks before the largest n, whether its fall
    from there is beyond the noise (:func:`gold_change`)."""
    largest_n = int(curve["n"].max())
    lines = []
    for pairs, row in gold_peak(curve).iterrows():
        group = curve[curve["proxy pairs"] == pairs]
        gold_alpha, gold_beta = fit_functional_form(group["sqrt_kl"], group["gold gain"], form="best-of-n")
        proxy_alpha, proxy_beta = fit_functional_form(group["sqrt_kl"], group["proxy gain"], form="best-of-n")
        measured = group["sqrt_kl"].max()
        if gold_beta > 0:
            fitted_peak = gold_alpha / (2 * gold_beta)
            where = (
                f"inside the measured range (√KL up to {measured:.2f})"
                if fitted_peak <= measured
                else f"beyond the largest √KL measured ({measured:.2f}): an extrapolation, not a measured peak"
            )
            gold_shape = f"concave, fitted peak at √KL {fitted_peak:.2f}, {where}"
        else:
            gold_shape = "not concave: no fitted peak"
        line = (
            f"proxy of {pairs} pairs: proxy gain at n = {largest_n} {row['proxy gain at largest n']:+.2f} sd, gold "
            f"{row['gold gain at largest n']:+.2f} sd; fits d(α_bon − β_bon·d): proxy α_bon = {proxy_alpha:.2f}, "
            f"β_bon = {proxy_beta:.2f} ({'concave: its rise slows' if proxy_beta > 0 else 'not concave'}); gold "
            f"α_bon = {gold_alpha:.2f}, β_bon = {gold_beta:.2f} ({gold_shape})"
        )
        if row["gold peaks at n"] < largest_n:
            peak_n = int(row["gold peaks at n"])
            fall = gold_change(scores, pairs, from_n=peak_n, to_n=largest_n)
            verdict = (
                "beyond the noise: over-optimisation" if fall.high < 0 else "within the noise at this many prompts"
            )
            line += (
                f". Gold peaks at n = {peak_n}; from there to n = {largest_n} it changes by "
                f"{fall.mean:+.2f} sd [95% CI {fall.low:+.2f}, {fall.high:+.2f}] over {fall.n} prompts, {verdict}."
            )
        else:
            line += f". Gold is highest at the largest n measured ({largest_n}): no fall to see within this budget."
        lines.append(line)
    return lines


def plot_best_of_n(curve: pd.DataFrame, *, title: str = "Best-of-n against proxy reward models, judged by gold"):
    """Gao et al.'s figure 1, best-of-n half, from :func:`best_of_n_overoptimization`: per proxy, its own gain
    (solid) and gold's gain on the replies it picked (dashed, with the 95% interval over prompts shaded), against
    √KL of best-of-n."""
    import matplotlib.pyplot as plt

    sizes = sorted(curve["proxy pairs"].unique())
    colours = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.8, len(sizes))), strict=True))
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    for pairs, group in curve.groupby("proxy pairs"):
        axis.plot(group["sqrt_kl"], group["proxy gain"], "-o", color=colours[pairs], label=f"proxy ({pairs} pairs)")
        axis.plot(group["sqrt_kl"], group["gold gain"], "--s", color=colours[pairs], label="gold, picked by that proxy")
        axis.fill_between(group["sqrt_kl"], group["gold low"], group["gold high"], color=colours[pairs], alpha=0.12)
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.set(xlabel="√KL(best-of-n ‖ SFT)   (n = 1, 2, 4, …)", ylabel="gain over the SFT samples (sd)", title=title)
    axis.legend(fontsize=8)
    return figure


def fit_functional_form(sqrt_kl: ArrayLike, gain: ArrayLike, *, form: str) -> tuple[float, float]:
    """Least-squares (α, β) of Gao et al.'s forms through the origin: ``"best-of-n"`` gain = d(α − βd),
    ``"rl"`` gain = d(α − β log d), with d = √KL (points with d = 0 carry no information and are left out)."""
    d, y = np.asarray(sqrt_kl, dtype=float), np.asarray(gain, dtype=float)
    keep = d > 0
    d, y = d[keep], y[keep]
    if len(d) < 2:
        raise ValueError("fit_functional_form needs at least two points with √KL > 0")
    if form == "best-of-n":
        design = np.column_stack([d, -(d**2)])
    elif form == "rl":
        design = np.column_stack([d, -d * np.log(d)])
    else:
        raise ValueError(f"form={form!r}: use 'best-of-n' or 'rl'")
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(alpha), float(beta)


def gold_peak(curve: pd.DataFrame) -> pd.DataFrame:
    """Per proxy: the n where the gold gain is highest, that gain, and the gold and proxy gain at the largest n
    (gold falling from its peak while the proxy still rises is over-optimisation)."""
    rows = []
    for pairs, group in curve.groupby("proxy pairs"):
        best = group.loc[group["gold gain"].idxmax()]
        last = group.loc[group["n"].idxmax()]
        rows.append(
            {
                "proxy pairs": pairs,
                "gold peaks at n": int(best["n"]),
                "gold gain at peak": best["gold gain"],
                "largest n": int(last["n"]),
                "gold gain at largest n": last["gold gain"],
                "proxy gain at largest n": last["proxy gain"],
            }
        )
    return pd.DataFrame(rows).set_index("proxy pairs")


@dataclass
class ProxyReward:
    """A reward for :class:`playbook.ppo.PPOTrainer` that pays the ``proxy`` head's score and records, for the very
    same replies, the proxy's and the ``gold`` head's scores (one backbone pass serves both; PPO never sees gold).

    ``model`` is the reward model with the proxy head in place, so the trainer's value model starts from it as it
    does from notebook 05's reward model. ``proxy_scores``, ``gold_scores`` and ``prompts`` hold one list per call:
    the start policy's replies that fix PPO's score scale, then one per rollout.
    """

    reward_model: RewardModel
    proxy: torch.Tensor
    gold: torch.Tensor
    proxy_scores: list[list[float]] = field(default_factory=list)
    gold_scores: list[list[float]] = field(default_factory=list)
    prompts: list[list[Messages]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model = copy.deepcopy(self.reward_model.model)
        weight = self.model.score.weight
        weight.data = self.proxy.reshape(1, -1).to(device=weight.device, dtype=weight.dtype)

    def score_batch(self, prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        features = reply_features(self.reward_model, prompts, [[reply] for reply in replies])[:, 0]
        self.prompts.append(list(prompts))
        self.gold_scores.append((features @ self.gold).tolist())
        self.proxy_scores.append((features @ self.proxy).tolist())
        return self.proxy_scores[-1]


def ppo_overoptimization(
    history: pd.DataFrame, reward: ProxyReward, baseline: torch.Tensor, *, window: int = 3
) -> pd.DataFrame:
    """Gao et al.'s figure 1, RL half, from one PPO run against ``reward``'s proxy: per step, the rollout's mean KL
    to the reference and √KL, and the proxy and gold gains of its replies, each smoothed over ``window`` steps (a
    rollout is a handful of replies).

    Gains are measured from the sampling policy's mean on ``baseline`` (features ``[prompts, samples, hidden]`` of
    its replies to the prompts PPO trains on, as :func:`reply_features` gives) in that baseline's standard
    deviations: the units :func:`best_of_n_overoptimization` uses, so both halves share the figure's axes. The
    rollouts recorded before the run's steps (the start policy's replies that fix PPO's score scale) are skipped.
    """
    if len(reward.gold_scores) < len(history):
        raise ValueError(
            f"{len(history)} PPO steps but {len(reward.gold_scores)} rollouts recorded: pass the history of the "
            "run that used this reward, from its first step"
        )
    curve = pd.DataFrame({"step": history["step"].to_numpy(), "kl": history["kl"].to_numpy()})
    for name, head, recorded in (
        ("proxy", reward.proxy, reward.proxy_scores[len(reward.proxy_scores) - len(history) :]),
        ("gold", reward.gold, reward.gold_scores[len(reward.gold_scores) - len(history) :]),
    ):
        reference = (baseline @ head).numpy()
        curve[f"{name} gain"] = (np.array([np.mean(r) for r in recorded]) - reference.mean()) / reference.std()
    smoothed = curve.rolling(window, min_periods=1).mean()
    smoothed["step"] = curve["step"]
    smoothed["sqrt_kl"] = np.sqrt(smoothed["kl"].clip(lower=0))
    return smoothed


def paired_final_gains(
    first: ProxyReward, second: ProxyReward, baseline: torch.Tensor, *, rollouts: int = 3
) -> dict[str, PairedDifference]:
    """Proxy and gold gain of ``first``'s run minus ``second``'s over their last ``rollouts`` rollouts, paired prompt
    by prompt: two PPO runs with the same seed sample the same prompts at each step, so each reply of one run is
    paired with the other run's reply to the same prompt and the prompts' own difficulty cancels in the difference.
    In ``baseline``'s units, as :func:`ppo_overoptimization`'s curve."""
    if first.prompts[-rollouts:] != second.prompts[-rollouts:]:
        raise ValueError(
            f"the two runs' last {rollouts} rollouts sampled different prompts: pair only runs with the same seed, "
            "prompts and batch size"
        )
    differences = {}
    for name, head, first_scores, second_scores in (
        ("proxy", first.proxy, first.proxy_scores, second.proxy_scores),
        ("gold", first.gold, first.gold_scores, second.gold_scores),
    ):
        spread = (baseline @ head).numpy().std()
        differences[name] = paired_difference(
            np.concatenate(first_scores[-rollouts:]) / spread, np.concatenate(second_scores[-rollouts:]) / spread
        )
    return differences


def sampled_reply_features(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backbone: RewardModel,
    prompts: Sequence[Messages],
    samples: int,
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[list[list[str]], torch.Tensor]:
    """``samples`` sampled replies per prompt and their features ``[prompts, samples, hidden]``: the one set that
    best-of-n re-uses for every n and every head. Sample at PPO's temperature, so best-of-n's KL and PPO's are taken
    from the same distribution; up to ``batch_size`` replies of one prompt are generated together (a GPU takes
    many more than a CPU)."""
    replies = sample_replies(
        policy,
        tokenizer,
        prompts,
        samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    return replies, reply_features(backbone, prompts, replies)


def ppo_against_proxy(
    start: str | os.PathLike,
    reward: ProxyReward,
    prompts: Sequence[Messages],
    baseline: torch.Tensor,
    config: PPOConfig,
    *,
    start_scale: StartScale | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, StartScale | None]:
    """PPO from the model in ``start`` (also its reference) on ``prompts``, paid by ``reward``'s proxy: its history,
    the step-by-step proxy and gold gains against √KL (:func:`ppo_overoptimization`, in ``baseline``'s units), and
    the start statistics that fixed its score scale. Pass those to a run with the same seed, prompts and proxy (another
    β) and it skips sampling them again, drawing what it would have drawn (:class:`playbook.ppo.StartScale`)."""
    policy, reference, tokenizer = load_policy_and_reference(start)
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, reward, config, start_scale=start_scale)
    history = trainer.train().history
    return history, ppo_overoptimization(history, reward, baseline), trainer.start_scale


def gold_win_rates(
    replies: Mapping[str, Sequence[str]], prompts: Sequence[Messages], backbone: RewardModel, gold: torch.Tensor
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Each policy's replies (one per prompt, same prompts) scored by the gold head, and the win rate of every pair
    of policies on those prompts with its interval (:func:`playbook.evaluation.win_rate_table`)."""
    scores = {
        name: (reply_features(backbone, prompts, [[reply] for reply in texts])[:, 0] @ gold).numpy()
        for name, texts in replies.items()
    }
    return scores, win_rate_table(scores)


KL_COEFS = (0.1, 0.01)
"""β of the PPO runs against a proxy: the course's default and a ten times looser leash."""


def sample_sizes(samples: int) -> list[int]:
    """The n of best-of-n: powers of two up to ``samples``, and ``samples`` itself."""
    return sorted({2**k for k in range(int(math.log2(samples)) + 1)} | {samples})


def last_user_turns(pairs, count: int) -> list[Messages]:
    """The last user turn of the first ``count`` conversations, as one-message prompts: short prompts keep sampling
    cheap (a whole hh-rlhf conversation can run to hundreds of tokens), and best-of-n and PPO see the same ones."""
    return [[row["prompt"][-1]] for row in pairs.select(range(min(count, len(pairs))))]


def course_policies(out: Path) -> dict[str, Path]:
    """The course's policies saved in the runs folder ``out``: the SFT model (notebook 04), and PPO, DPO and RLOO
    (notebooks 06 and 07) where they have run."""
    folders = {"SFT": out / "sft_model", "PPO": out / "ppo_policy", "DPO": out / "dpo", "RLOO": out / "rloo"}
    return {name: folder for name, folder in folders.items() if (folder / "config.json").is_file()}


def run_evaluation(profile: Profile, out: Path) -> TrainResult:
    """Notebook 08's measurements in one call (``python -m playbook.pipeline evaluate``), written as CSV files into
    ``out/evaluation``: ``proxies.csv`` (agreement with gold), ``best_of_n.csv`` and ``ppo.csv`` (the figure's
    points), ``win_rates.csv`` (the course's policies and best-of-n under the gold head). The SFT model is trained
    first when it is missing (as notebook 04 does); the other policies are compared where they exist."""
    if process_state().num_processes > 1:
        raise SystemExit(
            "evaluate runs in one process (its feature passes are not split across processes): run "
            "`python -m playbook.pipeline evaluate` without `accelerate launch`"
        )
    start = time.perf_counter()
    folder = out / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    features = course_pair_features(profile, out=out)
    heads = course_heads(profile, features)
    sft = load_or_train_sft_model(profile, folder=out / "sft_model")
    prompts = last_user_turns(hh_rlhf_split(profile)["test"], profile.overopt_prompts)
    config = PPOConfig.from_profile(profile, steps=profile.overopt_ppo_steps)
    policy, tokenizer = load_model(sft)
    replies, sampled = sampled_reply_features(
        policy,
        tokenizer,
        features.backbone,
        prompts,
        profile.overopt_samples,
        max_new_tokens=config.response_length,
        temperature=config.temperature,
    )
    scores = SampleScores.from_features(sampled, heads.gold, heads.proxies)
    best_of_n = best_of_n_overoptimization(scores, ns=sample_sizes(scores.samples))
    curves, start_scale = [], None
    for beta in KL_COEFS:  # one seed and proxy: every β run starts from the first one's score scale
        reward = ProxyReward(features.backbone, heads.proxies[min(heads.proxies)], heads.gold)
        _, curve, start_scale = ppo_against_proxy(
            sft, reward, prompts, sampled, replace(config, kl_coef=beta), start_scale=start_scale
        )
        curves.append(curve.assign(**{"proxy pairs": min(heads.proxies), "kl_coef": beta}))
    greedy = {
        name: generate_replies(load_model(path)[0], tokenizer, prompts, max_new_tokens=config.response_length)
        for name, path in course_policies(out).items()
    }
    course_head = features.backbone.model.score.weight.data[0].float().cpu()  # the features are on the CPU
    picked = (sampled @ course_head).argmax(dim=1)
    greedy[f"best-of-{len(replies[0])} (SFT samples, course reward model)"] = [
        group[int(i)] for group, i in zip(replies, picked, strict=True)
    ]
    _, win_rates = gold_win_rates(greedy, prompts, features.backbone, heads.gold)
    ppo = pd.concat(curves, ignore_index=True)
    heads.agreement.to_csv(folder / "proxies.csv")
    best_of_n.to_csv(folder / "best_of_n.csv", index=False)
    ppo.to_csv(folder / "ppo.csv", index=False)
    win_rates.to_csv(folder / "win_rates.csv", index=False)
    return TrainResult(None, ppo, time.perf_counter() - start, folder, {"best_of_n": best_of_n, "win_rates": win_rates})


# A recorded best-of-n run, larger than the cpu profile affords --------------------------------------------------

RECORDED_BEST_OF_N_PATH = BUNDLED_DATA_DIR / "best_of_n_recorded.csv"
"""Notebook 04's SFT model's samples to notebook 08's held-out prompts, at a size the cpu profile cannot afford,
each scored by the gold head and every proxy (:func:`record_best_of_n`), read back by :func:`recorded_best_of_n`."""


@dataclass(frozen=True)
class RecordedBestOfN:
    """A recorded best-of-n run: each prompt's fingerprint (:func:`playbook.io.text_key` of its text), its sampled
    replies, and their scores by the gold head and every proxy."""

    prompt_keys: list[str]
    replies: list[list[str]]
    scores: SampleScores


def record_best_of_n(
    path: str | os.PathLike = RECORDED_BEST_OF_N_PATH,
    *,
    prompts: int,
    samples: int,
    profile: Profile | str | None = "cpu",
    prompts_per_chunk: int = 8,
) -> RecordedBestOfN:
    """Sample ``samples`` replies of the profile's SFT model (notebook 04) to each of the first ``prompts`` held-out
    prompts (:func:`last_user_turns`, so notebook 08's prompts come first), at PPO's temperature and reply length,
    score them with the gold head and the proxies notebook 08 fits, and write one CSV row per reply to ``path``
    (atomically). The prompts are sampled ``prompts_per_chunk`` at a time, chunk k with seed k, with a line of
    progress per chunk. The file names prompts by fingerprint only: it holds no hh-rlhf text."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    features = course_pair_features(profile)
    heads = course_heads(profile, features)
    chosen = last_user_turns(hh_rlhf_split(profile)["test"], prompts)
    config = PPOConfig.from_profile(profile)
    policy, tokenizer = load_model(load_or_train_sft_model(profile))
    replies: list[list[str]] = []
    chunks: list[torch.Tensor] = []
    start = time.perf_counter()
    for chunk, first in enumerate(range(0, len(chosen), prompts_per_chunk)):
        part = chosen[first : first + prompts_per_chunk]
        texts, features_of_part = sampled_reply_features(
            policy,
            tokenizer,
            features.backbone,
            part,
            samples,
            max_new_tokens=config.response_length,
            temperature=config.temperature,
            seed=chunk,
        )
        replies += texts
        chunks.append(features_of_part)
        print(f"{first + len(part)}/{len(chosen)} prompts × {samples} replies, {time.perf_counter() - start:.0f} s")
    recorded = RecordedBestOfN(
        [text_key(prompt[-1]["content"]) for prompt in chosen],
        replies,
        SampleScores.from_features(torch.cat(chunks), heads.gold, heads.proxies),
    )
    table = pd.DataFrame(
        {
            "prompt_key": np.repeat(recorded.prompt_keys, samples),
            "sample": np.tile(np.arange(samples), len(chosen)),
            "gold": recorded.scores.gold.ravel(),
            **{f"proxy {pairs}": scores.ravel() for pairs, scores in recorded.scores.proxies.items()},
            "reply": [reply for group in replies for reply in group],
        }
    )
    write_atomically(Path(path), lambda partial: table.to_csv(partial, index=False, float_format="%.6f"))
    return recorded


def recorded_best_of_n(path: str | os.PathLike = RECORDED_BEST_OF_N_PATH) -> RecordedBestOfN:
    """The recorded run in ``path``, prompts in the file's order. Scores are rounded to 6 decimals in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no recorded best-of-n run. Record one with `python -m playbook.overoptimization "
            f"--record-best-of-n {path} --prompts 96 --samples 64` (after notebooks 04 and 05 have run)."
        )
    table = pd.read_csv(path, keep_default_na=False)
    proxy_columns = [column for column in table.columns if column.startswith("proxy ")]
    expected = ["prompt_key", "sample", "gold", *proxy_columns, "reply"]
    if list(table.columns) != expected or not proxy_columns:
        raise ValueError(
            f"{path}: columns {list(table.columns)}, expected prompt_key, sample, gold, 'proxy <pairs>' for each "
            "proxy, reply; record the file again"
        )
    keys = list(dict.fromkeys(table["prompt_key"]))
    counts = table.groupby("prompt_key", sort=False).size()
    if counts.nunique() != 1:
        raise ValueError(f"{path}: prompts hold different numbers of samples ({sorted(set(counts))}); record again")
    samples = int(counts.iloc[0])
    table = table.set_index("prompt_key").loc[keys]

    def grid(column: str) -> np.ndarray:
        return table[column].to_numpy(dtype=float).reshape(len(keys), samples)

    return RecordedBestOfN(
        keys,
        table["reply"].to_numpy().reshape(len(keys), samples).tolist(),
        SampleScores(grid("gold"), {int(column.split()[1]): grid(column) for column in proxy_columns}),
    )


def rescoring_gap(
    recorded: RecordedBestOfN,
    prompts: Sequence[Messages],
    backbone: RewardModel,
    gold: torch.Tensor,
    proxies: Mapping[int, torch.Tensor],
) -> float | None:
    """Whether a recording is what these models would have scored: the first recorded prompt found among
    ``prompts`` has its recorded replies read by ``backbone`` and scored by ``gold`` and ``proxies``, and the largest
    |difference| from the recorded scores is returned (about 1e-6, the file's rounding, for the same models). None
    when no recorded prompt is among ``prompts`` or the proxies' sizes differ from the recording's."""
    if sorted(proxies) != sorted(recorded.scores.proxies):
        return None
    by_key = {text_key(prompt[-1]["content"]): prompt for prompt in prompts}
    row = next((i for i, key in enumerate(recorded.prompt_keys) if key in by_key), None)
    if row is None:
        return None
    features = reply_features(backbone, [by_key[recorded.prompt_keys[row]]], recorded.replies[row : row + 1])
    live = SampleScores.from_features(features, gold, proxies)
    gaps = [np.abs(live.gold - recorded.scores.gold[row]).max()]
    gaps += [np.abs(live.proxies[pairs] - recorded.scores.proxies[pairs][row]).max() for pairs in proxies]
    return float(max(gaps))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m playbook.overoptimization --record-best-of-n PATH`: sample and score the best-of-n run that
    notebook 08 reads back (the profile's SFT model, reward-model features and heads, as notebook 08 builds them)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m playbook.overoptimization", description=main.__doc__)
    parser.add_argument("--record-best-of-n", type=Path, required=True, metavar="PATH", help="CSV file to write")
    parser.add_argument("--prompts", type=int, default=96, help="held-out prompts, the first N (default 96)")
    parser.add_argument("--samples", type=int, default=64, help="sampled replies per prompt (default 64)")
    parser.add_argument("--profile", default="cpu", help="whose models and heads (default cpu)")
    arguments = parser.parse_args(argv)
    for name in ("prompts", "samples"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name} must be at least 1")
    recorded = record_best_of_n(
        arguments.record_best_of_n, prompts=arguments.prompts, samples=arguments.samples, profile=arguments.profile
    )
    print(f"wrote {arguments.record_best_of_n}: {len(recorded.prompt_keys)} prompts × {arguments.samples} replies")


if __name__ == "__main__":
    main()
