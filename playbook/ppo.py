"""RLHF with PPO: optimise a policy against a reward model, on a KL leash to a frozen reference.

One PPO step, as in InstructGPT and the reproductions of Huang et al. (2024, *The N+ Implementation Details of
RLHF with PPO: A Case Study on TL;DR Summarization*):

1. **Roll out**: the policy samples a reply to each prompt of a batch; everything after the first end-of-reply
   token is padding (masked out of every loss and statistic).
2. **Score**: the reward model scores each reply; a reply that never ended gets ``missing_eos_penalty`` off.
3. **Compare with the reference**: log-probabilities of the reply under the policy and the frozen reference
   (logits divided by the sampling temperature, as when sampling). The per-token reward is
   −β·(log π − log π_ref), with the reward model's score added at the last real token.
4. **Advantages**: GAE(γ, λ) from those rewards and the value model's estimates (value 0 after the last real
   token), then whitened over real tokens only.
5. **Update**: several epochs over the batch in minibatches: the clipped policy loss, plus the clipped value loss.

Dropout is off throughout (the models stay in eval mode; gradients still flow). The value model is a copy of the
reward model's network with its head set to zero (``zero_value_head``): read mid-reply, the reward model's own head
predicted the returns worse than a constant (explained variance about −8: it added noise), while a zeroed head
starts every estimate at the mean score and learns from there (as the value head of Ziegler et al.'s original RLHF
code did). Devices come from ``accelerate``: the same code runs on a CPU, one GPU, or several (``accelerate launch
-m playbook.pipeline ppo``; each process takes its share of the prompts and the logged statistics are gathered from
all of them).

**Frozen layers run once** (:mod:`playbook.frozen_layers`). Only the top layers of the policy and the value model
train on a CPU, and the layers below them never change. So each rollout runs the policy's frozen layers once, keeps
the hidden states there, and every later pass (the rollout's log-probs and values, every PPO epoch) starts from
them. The reference and the value model share those frozen layers too wherever their weights are the policy's,
weight for weight. The numbers are exactly those of a full forward pass (tested); the update costs about half as
much.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.config import Profile, TrainerConfig, runs_dir
from playbook.frozen_layers import (
    SharedTrunk,
    UpperLayers,
    first_trainable_layer,
    shared_lower_layers,
    train_top_layers,
)
from playbook.io import Messages
from playbook.models import write_model_atomically
from playbook.tensors import (
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    pad_sequences,
    positions_from_mask,
)
from playbook.training import TrainResult

RewardFunction = Callable[[Sequence[Messages], Sequence[str]], Sequence[float]]
"""What PPO needs of a reward model: ``(prompts, replies) -> one score per reply`` (``RewardModel.score_batch``)."""


def default_policy_dir(profile: Profile | str | None = None) -> Path:
    """Where notebook 06 saves the PPO-trained policy (notebooks 07 and 11 read it): ``<runs>/<profile>/ppo_policy``."""
    return runs_dir(profile) / "ppo_policy"


@dataclass(frozen=True)
class PPOConfig(TrainerConfig):
    """PPO settings. The defaults are the course's measured cpu run (notebook 06, ``benchmarks/README.md``); a
    profile sets the sizes (``from_profile``). Published values for comparison: InstructGPT (Ouyang et al. 2022) and
    the TL;DR reproduction of Huang et al. (2024), whose settings were TRL's PPO defaults."""

    steps: int = 30  # rollout-and-update rounds (profile: ppo_steps)
    batch_size: int = 8  # prompts per rollout, one reply each (profile: ppo_batch_size; Huang et al.: 512)
    mini_batch_size: int = 4  # replies per gradient step (profile: ppo_mini_batch_size)
    ppo_epochs: int = 4  # passes over each rollout batch (profile: ppo_epochs; Huang et al.: 4)
    response_length: int = 24  # tokens sampled per reply at most (profile: ppo_response_length; Huang et al.: 53)
    max_prompt_length: int = 64  # prompt tokens kept, from the end (profile: prompt_length)
    temperature: float = 0.7  # sampling temperature; log-probs are computed at the same temperature (Huang: 0.7)
    learning_rate: float = 3e-5  # policy (profile: ppo_learning_rate; Huang et al.: 3e-6 with every layer training)
    value_learning_rate: float = 1e-4  # value model
    kl_coef: float = 0.1  # β in −β·(log π − log π_ref), against normalised scores (Huang: 0.05; InstructGPT: 0.02)
    gamma: float = 1.0  # discount (Huang et al.: 1)
    lam: float = 0.95  # GAE λ (Huang et al.: 0.95)
    clip_range: float = 0.2  # policy ratio clipping ε (Huang et al.: 0.2)
    clip_range_value: float = 0.2  # value clipping (Huang et al.: 0.2)
    value_coef: float = 0.1  # weight of the value loss (Huang et al.: 0.1)
    # subtracted from the score of a reply that did not end, in raw score units (Huang et al. set such a score to -1)
    missing_eos_penalty: float = 0.0
    max_grad_norm: float = 1.0
    normalize_scores: bool = True  # standardise scores by the mean and spread of the start policy's replies
    calibrate_value: bool = True  # shift the value model so its mean on those replies is their mean (normalised) score
    # start the value model's head at zero, so every estimate starts at the mean score; the network under it stays the
    # reward model's (Ziegler et al.'s code zero-initialised its value head). False: keep the reward model's head,
    # which reads replies mid-way, where it was never trained (its explained variance was about −8, worse than a
    # constant: benchmarks/README.md, "PPO's value model with its head at zero").
    zero_value_head: bool = True
    # replies sampled from the start policy (one batch, per process) before the first step to fix both maps (0: the
    # first rollout's replies). A spread from n scores is off by about 1/sqrt(2(n-1)): 27% at n = 8, 9% at n = 64;
    # β's effective size moves with it.
    scale_samples: int = 64  # (profile: ppo_scale_samples)
    policy_trainable_layers: int | None = 6  # train the top k decoder layers (None: all; never the embeddings)
    value_trainable_layers: int | None = 2  # same for the value model; its head always trains
    seed: int = 0

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        return {
            "steps": profile.ppo_steps,
            "batch_size": profile.ppo_batch_size,
            "mini_batch_size": profile.ppo_mini_batch_size,
            "ppo_epochs": profile.ppo_epochs,
            "response_length": profile.ppo_response_length,
            "max_prompt_length": profile.prompt_length,
            "learning_rate": profile.ppo_learning_rate,
            "scale_samples": profile.ppo_scale_samples,
            "policy_trainable_layers": profile.policy_trainable_layers,
            "value_trainable_layers": profile.value_trainable_layers,
        }

    def __post_init__(self) -> None:
        self.require(self.steps >= 0, "steps", "must be 0 or more")
        self.require_positive(
            "batch_size", "mini_batch_size", "ppo_epochs", "response_length", "max_prompt_length", "temperature"
        )
        self.require_positive("learning_rate", "value_learning_rate", "clip_range", "clip_range_value", "max_grad_norm")
        for name in ("kl_coef", "value_coef", "missing_eos_penalty", "scale_samples"):
            self.require(getattr(self, name) >= 0, name, "must be 0 or more")
        self.require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        self.require(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        self.require(
            self.batch_size % self.mini_batch_size == 0,
            "mini_batch_size",
            f"must divide batch_size {self.batch_size}",
        )
        self.require_layer_count("policy_trainable_layers", "value_trainable_layers")

    @property
    def optimizer_updates(self) -> int:
        """Adam steps of the policy over the whole run: each step's batch, ppo_epochs times, in mini-batches."""
        return self.steps * self.ppo_epochs * (self.batch_size // self.mini_batch_size)

    @classmethod
    def saved_with(cls, policy_dir: str | os.PathLike) -> PPOConfig:
        """The settings a saved policy was trained with (its ``ppo_config.json``, see ``PPOTrainer.save_policy``)."""
        settings = Path(policy_dir) / "ppo_config.json"
        if not settings.is_file():
            raise FileNotFoundError(f"{settings} is missing: is {policy_dir} a policy saved by PPOTrainer.save_policy?")
        return cls(**json.loads(settings.read_text()))


# ------------------------------------------------------------------------------------ pure functions


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates over ``[batch, T]`` tensors; ``mask`` is 1 on valid reply tokens.

    δ_t = r_t + γ·V_{t+1} − V_t with V = 0 after the last valid token; A_t = δ_t + γλ·A_{t+1}.
    Advantages are 0 on invalid tokens; returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        next_running = running * mask[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * next_running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate loss and the share of valid tokens where clipping was active."""
    ratio = torch.exp(new_logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the larger of the plain and the clipped squared error, and the share of tokens where clipping won."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped = (new_values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def kl_shaped_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards −β·(log π − log π_ref) on valid tokens, with each score added at its last valid token."""
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    has_token = mask.sum(1) > 0
    rows = torch.arange(len(scores), device=scores.device)[has_token]
    rewards[rows, last[has_token]] += scores[has_token].to(rewards.dtype)
    return rewards


def truncate_after_eos(
    responses: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace everything after each reply's first ``eos_id`` with ``pad_id``.

    Returns the replies, the mask of valid tokens (the end token itself counts: the policy must learn to stop),
    and whether each reply ended at all.
    """
    is_eos = responses == eos_id
    has_eos = is_eos.any(1)
    first = torch.where(
        has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, responses.shape[1], dtype=torch.long)
    )
    positions = torch.arange(responses.shape[1]).unsqueeze(0)
    mask = (positions <= first.unsqueeze(1)) & (positions < responses.shape[1])
    return torch.where(mask, responses, torch.full_like(responses, pad_id)), mask.long(), has_eos


def advantage_table(
    tokens: Sequence[Sequence[str]],
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    *,
    kl_coef: float,
    gamma: float,
    lam: float,
) -> pd.DataFrame:
    """One row per real reply token: every number PPO derives from a rollout before its update, computed by the
    trainer's own functions (:func:`kl_shaped_rewards`, :func:`compute_gae`, ``masked_whiten``).

    ``tokens[i]`` are reply ``i``'s tokens as text (its real ones, in order); ``scores`` are the scores PPO adds at
    the last token (normalised, as the trainer uses them). Columns: ``reply``, ``t``, ``token``, ``logprob`` and
    ``ref_logprob`` (log π and log π_ref), ``kl`` (their difference), ``score``, ``reward``, ``value``,
    ``advantage`` (GAE), ``whitened`` (the advantage the policy loss uses) and ``return`` (the value target)."""
    mask = mask.to(logprobs.dtype)
    rewards = kl_shaped_rewards(logprobs, ref_logprobs, mask, scores, kl_coef)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    whitened = masked_whiten(advantages, mask)
    rows = []
    for reply, reply_tokens in enumerate(tokens):
        real = int(mask[reply].sum().item())
        if len(reply_tokens) != real:
            raise ValueError(f"tokens[{reply}] has {len(reply_tokens)} tokens but its mask {real}: pass the real ones.")
        for t, token in enumerate(reply_tokens):
            rows.append(
                {
                    "reply": reply,
                    "t": t,
                    "token": token,
                    "logprob": logprobs[reply, t].item(),
                    "ref_logprob": ref_logprobs[reply, t].item(),
                    "kl": (logprobs[reply, t] - ref_logprobs[reply, t]).item(),
                    "score": float(scores[reply]),
                    "reward": rewards[reply, t].item() + 0.0,  # + 0.0: −β·0 is −0.0, which would print as −0
                    "value": values[reply, t].item(),
                    "advantage": advantages[reply, t].item(),
                    "whitened": whitened[reply, t].item(),
                    "return": returns[reply, t].item(),
                }
            )
    return pd.DataFrame(rows)


def clipping_table(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> pd.DataFrame:
    """Per real token, the pieces of PPO's clipped objective min(ρ·A, clip(ρ, 1−ε, 1+ε)·A), ρ = π_new/π_old (the
    probability ratio; ρ rather than r, which the course keeps for the per-token reward).

    ``clipped`` marks the tokens where the clipped term is the smaller (the ones :func:`policy_loss` counts in its
    clip fraction): there the objective is flat in ρ, so the token gets no gradient, and ``why`` says which side
    of the trust region it left. The mean of ``-objective`` is :func:`policy_loss`."""
    ratio = torch.exp(new_logprobs - old_logprobs)
    clipped_ratio = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    rows = []
    for reply, t in torch.nonzero(mask > 0).tolist():
        r, advantage = ratio[reply, t].item(), advantages[reply, t].item()
        plain, capped = r * advantage, clipped_ratio[reply, t].item() * advantage
        clipped = capped < plain
        why = ""
        if clipped:
            why = (
                "A > 0 and ρ > 1+ε: no credit for raising this token further"
                if advantage > 0
                else "A < 0 and ρ < 1−ε: no credit for lowering this token further"
            )
        rows.append(
            {
                "reply": reply,
                "t": t,
                "advantage": advantage,
                "ratio": r,
                "clipped_ratio": clipped_ratio[reply, t].item(),
                "ratio·A": plain,
                "clip(ratio)·A": capped,
                "objective": min(plain, capped),
                "clipped": clipped,
                "why": why,
            }
        )
    return pd.DataFrame(rows)


def word_count_reward(target_words: int) -> RewardFunction:
    """A programmatic reward with a known optimum: −|words − ``target_words``| per reply (0 at exactly that many
    words, whatever they say). It shows PPO at work without a reward model's errors in the way."""
    if target_words < 1:
        raise ValueError(f"target_words must be 1 or more, got {target_words}.")

    def reward(prompts: Sequence[Messages], replies: Sequence[str]) -> list[float]:
        return [-float(abs(len(reply.split()) - target_words)) for reply in replies]

    return reward


# ------------------------------------------------------------------------------------------ trainer


@dataclass(frozen=True)
class ScoreScale:
    """The affine maps fixed at the first rollout from the start policy's replies (``StartScale``): scores to
    ``(score - shift) / scale`` and the value model's outputs to ``(value - value_shift) / scale``."""

    shift: float
    scale: float
    value_shift: float

    def scores(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.shift) / self.scale

    def values(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.value_shift) / self.scale


@dataclass(frozen=True)
class StartScale:
    """The start policy's score statistics (gathered over processes) from ``scale_samples`` replies, and the random
    state sampling them left. A trainer given it (``PPOTrainer(..., start_scale=trainer.start_scale)``) fixes its
    :class:`ScoreScale` from these numbers under its own ``normalize_scores`` and ``calibrate_value`` instead of
    sampling the replies again: at that point of its first rollout it passes over their prompts and takes that random
    state, so its rollouts draw what the measuring trainer's did until their updates differ (both must share the
    seed, the prompts and ``scale_samples``)."""

    mean: float
    spread: float
    value_mean: float
    seed: int
    scale_samples: int
    prompts: int
    rng_state: torch.Tensor
    cuda_rng_states: list[torch.Tensor]


@dataclass
class SampledReplies:
    """Replies sampled for one batch of prompts, with their scores and the model inputs of prompt + reply."""

    query: torch.Tensor  # [batch, Lq], left-padded
    query_mask: torch.Tensor
    response: torch.Tensor  # [batch, T], padded after the first end token
    mask: torch.Tensor
    texts: list[str]
    scores: torch.Tensor  # [batch], raw units
    ids: torch.Tensor  # [batch, Lq + T]
    attention: torch.Tensor
    positions: torch.Tensor
    seconds: dict[str, float]


@dataclass
class Rollout:
    """One batch of sampled replies and everything PPO needs to learn from it (``[batch, T]`` unless noted)."""

    query: torch.Tensor  # [batch, Lq], left-padded
    query_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    policy_hidden: torch.Tensor  # [batch, Lq + T, hidden]: the input of the policy's first trainable layer
    value_hidden: torch.Tensor  # the same for the value model
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor  # [batch], raw reward-model scores (after the missing-EOS penalty)
    advantages: torch.Tensor
    returns: torch.Tensor
    texts: list[str]
    seconds: dict[str, float]  # time spent sampling, scoring and in the rollout's forward passes


def zero_head(value_model: PreTrainedModel) -> None:
    """Set the scoring head (``score``) of a sequence-classification model to zero, in place: its estimates all
    become 0 (the head's bias, if any, too), and training moves them from there."""
    head = getattr(value_model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"zero_value_head: the value model ({type(value_model).__name__}) has no linear `score` head to zero; "
            "pass a sequence-classification model (e.g. a copy of the reward model) or set zero_value_head=False."
        )
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()


def token_moments(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Over the real reply tokens: count, Σ R, Σ R², Σ (R − V), Σ (R − V)², in float64. Sums add up over processes
    (whose replies differ in length) where the tokens themselves could not be gathered into one tensor."""
    keep = mask.bool()
    returns, errors = returns[keep].double(), (returns - values)[keep].double()
    count = torch.tensor(float(keep.sum()), dtype=torch.float64, device=returns.device)
    return torch.stack([count, returns.sum(), (returns**2).sum(), errors.sum(), (errors**2).sum()])


def explained_variance(moments: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over a rollout's reply tokens, from :func:`token_moments` (summed over processes): 1
    when the value model predicts the returns R, 0 when its estimates are one constant, below 0 when they add noise
    (cleanrl logs it too)."""
    count, returns_sum, returns_squares, errors_sum, errors_squares = moments
    returns_var = returns_squares / count - (returns_sum / count) ** 2
    errors_var = errors_squares / count - (errors_sum / count) ** 2
    return float("nan") if returns_var <= 0 else (1 - errors_var / returns_var).item()


def checked_scores(scores: Sequence[float], replies: int) -> torch.Tensor:
    """The reward function's scores as a tensor, after checking there is one finite number per reply (a wrong count
    would otherwise be broadcast, and a NaN would turn every weight into NaN)."""
    values = torch.as_tensor(np.asarray(list(scores), dtype=np.float64), dtype=torch.float32).reshape(-1)
    if len(values) != replies:
        raise ValueError(f"reward function returned {len(values)} scores for {replies} replies: return one per reply.")
    bad = torch.nonzero(~torch.isfinite(values)).flatten().tolist()
    if bad:
        raise ValueError(f"reward function returned non-finite scores at replies {bad}: {values[bad].tolist()}.")
    return values


class PPOTrainer:
    """PPO for a chat policy: ``train()`` runs ``config.steps`` steps of :meth:`rollout` then :meth:`update`.

    ``reward_model`` is a :class:`playbook.reward.RewardModel` or any :data:`RewardFunction`. ``value_model`` is a
    one-output sequence-classification model whose head is applied at every token; by default a copy of the reward
    model (so its head starts out predicting rewards)."""

    def __init__(
        self,
        policy: PreTrainedModel,
        reference: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[Messages],
        reward_model: RewardFunction | object,
        config: PPOConfig | None = None,
        *,
        value_model: PreTrainedModel | None = None,
        accelerator: Accelerator | None = None,
        start_scale: StartScale | None = None,
    ) -> None:
        self.config = config or PPOConfig()
        if not prompts:
            raise ValueError("prompts: need at least one prompt.")
        if value_model is None:
            if not hasattr(reward_model, "model"):
                raise ValueError("value_model: a reward function has no model to copy; pass a value model.")
            value_model = copy.deepcopy(reward_model.model)
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.tokenizer = tokenizer
        self.prompts = list(prompts)[self.accelerator.process_index :: self.accelerator.num_processes]
        self.score_fn = reward_model.score_batch if hasattr(reward_model, "score_batch") else reward_model
        torch.manual_seed(self.config.seed)
        device = self.accelerator.device
        reference.requires_grad_(False)
        if self.config.zero_value_head:
            zero_head(value_model)
        train_top_layers(policy, self.config.policy_trainable_layers)
        train_top_layers(value_model, self.config.value_trainable_layers)
        for model in (policy, value_model):
            model.get_input_embeddings().requires_grad_(False)  # read once per rollout, before any trainable layer
        self.policy = policy.eval().to(device)
        self.reference, self.value_model = reference.eval().to(device), value_model.eval().to(device)
        # Where each model's own computation starts: the policy at its first trainable layer; the reference and the
        # value model as high as they share the policy's frozen layers (None: from their own embeddings).
        frozen_depth = first_trainable_layer(policy)
        starts = {
            "policy": frozen_depth,
            "reference": shared_lower_layers(reference, policy, frozen_depth),
            "value": shared_lower_layers(value_model, policy, min(frozen_depth, first_trainable_layer(value_model))),
        }
        self.trunk = SharedTrunk(policy, starts, {"reference": reference, "value": value_model})
        self.reference_upper = UpperLayers(reference, starts["reference"] or 0)
        trainable = [
            {"params": [p for p in policy.parameters() if p.requires_grad], "lr": self.config.learning_rate},
            {"params": [p for p in value_model.parameters() if p.requires_grad], "lr": self.config.value_learning_rate},
        ]
        self.policy_upper, self.value_upper, self.optimizer = self.accelerator.prepare(
            UpperLayers(policy, frozen_depth),
            UpperLayers(value_model, starts["value"] or 0),
            torch.optim.AdamW(trainable, eps=1e-5),
        )
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self._order = np.random.default_rng(self.config.seed).permutation(len(self.prompts))
        self._cursor = 0
        self.steps_done = 0  # over every call of train()
        self.history = pd.DataFrame()  # one row per step, over every call of train(); saved with the policy
        self.scale: ScoreScale | None = None  # fixed once, on the start policy's replies
        self.start_scale: StartScale | None = None  # what fixed it, when scale_samples > 0
        if start_scale is not None:
            self._check_start(start_scale)
            self.start_scale = start_scale

    # ---- model calls

    def _encode_prompts(self, prompts: Sequence[Messages]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts with the chat template, the last ``max_prompt_length`` tokens each, left-padded."""
        rows = [
            list(self.tokenizer.apply_chat_template(m, tokenize=True, add_generation_prompt=True, return_dict=False))[
                -self.config.max_prompt_length :
            ]
            for m in prompts
        ]
        query, mask = pad_sequences(rows, self.pad_id, side="left")
        return query.to(self.accelerator.device), mask.to(self.accelerator.device)

    @torch.no_grad()
    def _sample(self, query: torch.Tensor, query_mask: torch.Tensor, *, greedy: bool = False) -> torch.Tensor:
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": self.config.temperature, "top_k": 0, "top_p": 1.0}
        )
        output = self.policy.generate(
            input_ids=query,
            attention_mask=query_mask,
            max_new_tokens=self.config.response_length,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            **sampling,
        )
        response = output[:, query.shape[1] :]
        if response.shape[1] < self.config.response_length:  # every reply ended early
            response = F.pad(response, (0, self.config.response_length - response.shape[1]), value=self.pad_id)
        return response

    @staticmethod
    def _inputs(query, query_mask, response, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and position ids of the concatenated (left-padded) query and response."""
        attention = torch.cat([query_mask, mask], dim=1)
        return torch.cat([query, response], dim=1), attention, positions_from_mask(attention)

    def _logprobs(self, upper, hidden, attention, positions, response) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-reply-token log-probs and entropies at the sampling temperature; only the positions that predict
        reply tokens need the vocabulary."""
        logits = upper(hidden, attention, positions, response.shape[1] + 1)[:, :-1]
        temperature = self.config.temperature
        return logprobs_from_logits(logits, response, temperature), entropy_from_logits(logits, temperature)

    def _values(self, hidden, attention, positions, response) -> torch.Tensor:
        """The value model's estimate at each position that predicts a reply token."""
        values = self.value_upper(hidden, attention, positions, response.shape[1] + 1)[:, :-1].squeeze(-1).float()
        return values if self.scale is None else self.scale.values(values)

    def _fix_scale(self, scores: torch.Tensor, value_sum: torch.Tensor, tokens: torch.Tensor) -> ScoreScale:
        """Score normalisation and value calibration from the start policy's replies (their raw scores, and the sum of
        the value model's raw estimates over their ``tokens`` reply tokens). A value model that keeps the reward
        model's head (``zero_value_head=False``) reads it mid-reply, where the reward model was never trained (it
        scores whole conversations): its estimates can sit far from the scores. Uncorrected, every reply's last-token
        error is then the same large number, and GAE turns it into advantages that tilt credit towards early or late
        tokens (by the error's sign) whatever the reply said (the value-initialisation bias of Yuan et al. 2025,
        "What's Behind PPO's Collapse in Long-CoT?")."""
        return self._scale_from(*self._start_statistics(scores, value_sum, tokens))

    def _start_statistics(
        self, scores: torch.Tensor, value_sum: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[float, float, float]:
        """The start replies' mean raw score, its spread and the value model's mean raw estimate per reply token,
        gathered over every process."""
        all_scores = self.accelerator.gather(scores)
        value_sum = self.accelerator.gather(value_sum.reshape(1)).sum()
        value_mean = (value_sum / self.accelerator.gather(tokens.reshape(1)).sum().clamp(min=1)).item()
        return all_scores.mean().item(), all_scores.std().item() if len(all_scores) > 1 else 0.0, value_mean

    def _scale_from(self, mean: float, spread: float, value_mean: float) -> ScoreScale:
        """The scale from the start replies' mean score, their spread and the value model's mean raw estimate."""
        shift, scale = (mean, spread if spread > 1e-6 else 1.0) if self.config.normalize_scores else (0.0, 1.0)
        value_shift = value_mean - mean + shift if self.config.calibrate_value else 0.0
        return ScoreScale(shift, scale, value_shift)

    def _check_start(self, start: StartScale) -> None:
        mine = {"seed": self.config.seed, "scale_samples": self.config.scale_samples, "prompts": len(self.prompts)}
        theirs = {name: getattr(start, name) for name in mine}
        if mine != theirs:
            raise ValueError(
                f"start_scale was measured with {theirs} but this trainer has {mine}: the same start needs the same "
                "seed, prompts and scale_samples (or leave start_scale out to sample the scale again)"
            )

    def _take_start_scale(self, start: StartScale) -> ScoreScale:
        """Another trainer's start statistics in place of sampling them (see :class:`StartScale`)."""
        self._next_prompts(self.config.scale_samples)  # the prompts its start replies answered
        torch.set_rng_state(start.rng_state)
        if start.cuda_rng_states:
            torch.cuda.set_rng_state_all(start.cuda_rng_states)
        return self._scale_from(start.mean, start.spread, start.value_mean)

    @torch.no_grad()
    def _scale_from_start_policy(self) -> ScoreScale:
        """Sample ``scale_samples`` replies from the untrained policy, in one batch, on the next training prompts, and
        fix the scale from their scores and the value model's estimates; nothing trains. It is counted in the first
        step's ``seconds`` (not in its ``seconds_generate``): on a 2-core CPU, 64 replies cost about four rollouts of
        8, so runs that share a start pass ``start_scale`` instead of sampling it again."""
        sample = self._sample_and_score(self._next_prompts(self.config.scale_samples))
        hidden = self.trunk(sample.ids, sample.attention, sample.positions)
        values = self._values(hidden["value"], sample.attention, sample.positions, sample.response)
        mean, spread, value_mean = self._start_statistics(
            sample.scores, (values * sample.mask).sum(), sample.mask.sum()
        )
        self.start_scale = StartScale(
            mean=mean,
            spread=spread,
            value_mean=value_mean,
            seed=self.config.seed,
            scale_samples=self.config.scale_samples,
            prompts=len(self.prompts),
            rng_state=torch.get_rng_state(),
            cuda_rng_states=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )
        return self._scale_from(mean, spread, value_mean)

    def _next_prompts(self, count: int | None = None) -> list[Messages]:
        """The next ``count`` (default ``batch_size``) training prompts, in the seed's order, cycling."""
        batch = []
        for _ in range(count or self.config.batch_size):
            if self._cursor == len(self._order):
                self._cursor = 0
            batch.append(self.prompts[self._order[self._cursor]])
            self._cursor += 1
        return batch

    # ---- one PPO step

    def _sample_and_score(self, prompts: Sequence[Messages]) -> SampledReplies:
        """Sample one reply per prompt, cut it after its first end token, and score it (raw units, minus
        ``missing_eos_penalty`` for a reply that never ended)."""
        started = time.perf_counter()
        query, query_mask = self._encode_prompts(prompts)
        response, mask, has_eos = truncate_after_eos(self._sample(query, query_mask).cpu(), self.eos_id, self.pad_id)
        response, mask = response.to(query.device), mask.to(query.device)
        texts = [t.strip() for t in self.tokenizer.batch_decode(response, skip_special_tokens=True)]
        sampled = time.perf_counter()
        scores = checked_scores(self.score_fn(prompts, texts), len(texts))
        scores = (scores - self.config.missing_eos_penalty * (~has_eos).float()).to(query.device)
        ids, attention, positions = self._inputs(query, query_mask, response, mask)
        seconds = {"seconds_generate": sampled - started, "seconds_score": time.perf_counter() - sampled}
        return SampledReplies(query, query_mask, response, mask, texts, scores, ids, attention, positions, seconds)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Messages]) -> Rollout:
        """Sample replies to ``prompts`` and compute scores, log-probs, values, rewards and advantages."""
        if self.scale is None and self.config.scale_samples > 0:
            shared = self.start_scale
            self.scale = self._scale_from_start_policy() if shared is None else self._take_start_scale(shared)
        sample = self._sample_and_score(prompts)
        scored = time.perf_counter()
        response, mask, scores = sample.response, sample.mask, sample.scores
        attention, positions = sample.attention, sample.positions
        hidden = self.trunk(sample.ids, attention, positions)
        logprobs, _ = self._logprobs(self.policy_upper, hidden["policy"], attention, positions, response)
        ref_logprobs, _ = self._logprobs(self.reference_upper, hidden["reference"], attention, positions, response)
        values = self._values(hidden["value"], attention, positions, response)
        if self.scale is None:  # scale_samples = 0: this rollout's replies fix it
            self.scale = self._fix_scale(scores, (values * mask).sum(), mask.sum())
            values = self.scale.values(values)
        rewards = kl_shaped_rewards(logprobs, ref_logprobs, mask, self.scale.scores(scores), self.config.kl_coef)
        advantages, returns = compute_gae(rewards, values, mask, self.config.gamma, self.config.lam)
        return Rollout(
            query=sample.query,
            query_mask=sample.query_mask,
            response=response,
            mask=mask,
            policy_hidden=hidden["policy"],
            value_hidden=hidden["value"],
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            scores=scores,
            advantages=masked_whiten(advantages, mask),
            returns=returns,
            texts=sample.texts,
            seconds=sample.seconds | {"seconds_forward": time.perf_counter() - scored},
        )

    def update(self, batch: Rollout) -> dict[str, float]:
        """Several PPO epochs over one rollout; returns the mean losses and clip fractions."""
        config, logs = self.config, []
        generator = torch.Generator().manual_seed(config.seed + self._cursor)
        for _ in range(config.ppo_epochs):
            for rows in torch.randperm(config.batch_size, generator=generator).split(config.mini_batch_size):
                rows = rows.to(batch.query.device)
                _, attention, positions = self._inputs(
                    batch.query[rows], batch.query_mask[rows], batch.response[rows], batch.mask[rows]
                )
                new_logprobs, entropy = self._logprobs(
                    self.policy_upper, batch.policy_hidden[rows], attention, positions, batch.response[rows]
                )
                new_values = self._values(batch.value_hidden[rows], attention, positions, batch.response[rows])
                pg_loss, pg_clip = policy_loss(
                    new_logprobs, batch.logprobs[rows], batch.advantages[rows], batch.mask[rows], config.clip_range
                )
                vf_loss, vf_clip = value_loss(
                    new_values, batch.values[rows], batch.returns[rows], batch.mask[rows], config.clip_range_value
                )
                loss = pg_loss + config.value_coef * vf_loss
                self.optimizer.zero_grad()
                self.accelerator.backward(loss)
                self.accelerator.clip_grad_norm_(
                    [p for group in self.optimizer.param_groups for p in group["params"]], config.max_grad_norm
                )
                self.optimizer.step()
                with torch.no_grad():
                    approx_kl = masked_mean(0.5 * (new_logprobs - batch.logprobs[rows]) ** 2, batch.mask[rows])
                logs.append(
                    {
                        "policy_loss": pg_loss.item(),
                        "value_loss": vf_loss.item(),
                        "policy_clipfrac": pg_clip.item(),
                        "value_clipfrac": vf_clip.item(),
                        "entropy": masked_mean(entropy, batch.mask[rows]).item(),
                        "approx_kl": approx_kl.item(),
                    }
                )
        return pd.DataFrame(logs).mean().to_dict()

    @torch.no_grad()
    def current_logprobs_and_values(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's log-probs and the value model's estimates of ``batch``'s reply tokens as they are now (after
        an :meth:`update`, to see how far it moved them), computed as :meth:`update` does."""
        _, attention, positions = self._inputs(batch.query, batch.query_mask, batch.response, batch.mask)
        logprobs, _ = self._logprobs(self.policy_upper, batch.policy_hidden, attention, positions, batch.response)
        return logprobs, self._values(batch.value_hidden, attention, positions, batch.response)

    def step(self) -> dict[str, float]:
        """One rollout and update; returns the step's statistics, gathered over every process, with the seconds spent
        sampling (`seconds_generate`), in the reward model (`seconds_score`), in the policy/reference/value forward
        passes of the rollout (`seconds_forward`) and in the PPO epochs (`seconds_update`)."""
        start = time.perf_counter()
        batch = self.rollout(self._next_prompts())
        log_ratio = (batch.logprobs - batch.ref_logprobs) * batch.mask
        kl = log_ratio.sum(1)
        # k3 = (r − 1) − log r with r = π_ref/π: ≥ 0 per token, unbiased for KL(π‖π_ref); expm1 keeps it exact near 0
        k3 = ((torch.expm1(-log_ratio) + log_ratio) * batch.mask).sum(1)
        gathered_scores = self.accelerator.gather(batch.scores)
        stats = {
            "score": gathered_scores.mean().item(),
            "kl": self.accelerator.gather(kl).mean().item(),
            "kl_k3": self.accelerator.gather(k3).mean().item(),
            "response_length": self.accelerator.gather(batch.mask.sum(1).float()).mean().item(),
            # share of replies that ended with the end token (the others were cut off at response_length)
            "ended": self.accelerator.gather((batch.response == self.eos_id).any(1).float()).mean().item(),
            "replies": len(gathered_scores),
            "explained_variance": explained_variance(
                self.accelerator.gather(token_moments(batch.values, batch.returns, batch.mask)).reshape(-1, 5).sum(0)
            ),
        }
        # the objective PPO maximises, in the reward model's units: β weighs KL against normalised scores
        stats["rlhf_reward"] = stats["score"] - self.config.kl_coef * self.scale.scale * stats["kl"]
        updating = time.perf_counter()
        stats |= self.update(batch)
        stats |= batch.seconds | {"seconds_update": time.perf_counter() - updating}
        stats["seconds"] = time.perf_counter() - start
        return stats

    def train(self, steps: int | None = None, *, output_dir: str | os.PathLike | None = None) -> TrainResult:
        """Run ``steps`` (default ``config.steps``) PPO steps with a progress bar, then save the policy to
        ``output_dir`` if given. The history has one row per step, numbered on from earlier calls."""
        rows, count = [], self.config.steps if steps is None else steps
        bar = tqdm(range(count), desc="PPO", unit="step", disable=not self.accelerator.is_main_process)
        for _ in bar:
            self.steps_done += 1
            rows.append({"step": self.steps_done, **self.step()})
            bar.set_postfix(score=f"{rows[-1]['score']:.2f}", kl=f"{rows[-1]['kl']:.2f}")
        history = pd.DataFrame(rows)
        self.history = pd.concat([self.history, history], ignore_index=True) if len(self.history) else history
        seconds = float(history["seconds"].sum()) if rows else 0.0
        saved = self.save_policy(output_dir) if output_dir is not None else None
        return TrainResult(self.policy, history, seconds, saved, {"score_scale": self.scale})

    @torch.no_grad()
    def respond(self, prompts: Sequence[Messages], *, greedy: bool = True, batch_size: int = 32) -> list[str]:
        """The policy's current replies (greedy by default), truncated at the end token, ``batch_size`` at a time."""
        replies = []
        for start in range(0, len(prompts), batch_size):
            query, query_mask = self._encode_prompts(prompts[start : start + batch_size])
            response, _, _ = truncate_after_eos(
                self._sample(query, query_mask, greedy=greedy).cpu(), self.eos_id, self.pad_id
            )
            replies += [t.strip() for t in self.tokenizer.batch_decode(response, skip_special_tokens=True)]
        return replies

    def save_policy(self, path: str | os.PathLike | None = None) -> Path:
        """Save the trained policy with its PPO settings and its history so far (``ppo_config.json``,
        ``history.csv``), atomically (default :func:`default_policy_dir`)."""
        folder = Path(path) if path is not None else default_policy_dir()
        if self.accelerator.is_main_process:
            settings = pd.Series(asdict(self.config)).to_json()
            write_model_atomically(
                self.policy,
                self.tokenizer,
                folder,
                source="playbook.ppo",
                replace=True,
                extra_files={"ppo_config.json": settings, "history.csv": self.history.to_csv(index=False)},
            )
        self.accelerator.wait_for_everyone()
        return folder


def train_ppo(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    reward_model: RewardFunction | object,
    config: PPOConfig | None = None,
    *,
    value_model: PreTrainedModel | None = None,
    output_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """PPO in one call, with the same inputs and result as every other trainer of the course."""
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, reward_model, config, value_model=value_model)
    return trainer.train(output_dir=output_dir)


def score_spread(scores: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of a list of scores (the unit in which PPO's gain is reported)."""
    values = np.asarray(scores, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def compare_runs(
    reference: pd.DataFrame,
    others: dict[str, pd.DataFrame],
    columns: Sequence[str],
    *,
    reference_name: str = "reference",
) -> tuple[pd.DataFrame, list[str]]:
    """Each run's logged ``columns`` averaged over its steps, next to a reference run's over the same number of first
    steps (the row ``reference_name``), and one line per other run naming the columns whose mean left the range of
    the reference run's per-step values over those steps. One seed and a few steps: a column inside that range is
    not evidence that a change is harmless, only that these steps do not show it."""
    steps = min(len(history) for history in others.values())
    first = reference.head(steps)
    means = {reference_name: first[list(columns)].mean()}
    means |= {name: history.head(steps)[list(columns)].mean() for name, history in others.items()}
    lines = []
    for name in others:
        left = []
        for column in columns:
            low, high, mean = first[column].min(), first[column].max(), means[name][column]
            if mean > high or mean < low:
                side = "above" if mean > high else "below"
                left.append(f"{column} {mean:.3g} ({side} {low:.3g} to {high:.3g})")
        lines.append(f"{name}: " + ("; ".join(left) if left else "none"))
    return pd.DataFrame(means).T, lines


def plot_history(history: pd.DataFrame, *, title: str = "PPO", score_label: str = "reward-model score (mean)"):
    """Reward-model score, KL to the reference (the k1 estimate, which can dip below 0 on a batch), and their
    combination per step: score − β·σ·KL, with σ the spread of the start policy's scores that β is measured against
    (``PPOConfig.scale_samples`` replies; 1 without score normalisation). ``score_label`` names the score when the
    reward is not a reward model."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    panels = (
        ("score", score_label),
        ("kl", "KL(π ‖ π_ref) per reply, k1 estimate (nats)"),
        ("rlhf_reward", "score − β·σ·KL (what PPO maximises)"),
    )
    for axis, (column, label) in zip(axes, panels, strict=True):
        axis.plot(history["step"], history[column], marker=".", alpha=0.5)
        axis.plot(history["step"], history[column].rolling(5, min_periods=1).mean(), linewidth=2)
        axis.set(title=label, xlabel="step")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
