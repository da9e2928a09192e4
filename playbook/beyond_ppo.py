"""What practitioners use instead of PPO: DPO and RLOO, run with TRL on the course's data and reward model.

- **DPO** (Rafailov et al. 2023) learns straight from preference pairs: no reward model, no sampling. Its loss
  raises the policy's log-ratio to the frozen reference on the chosen reply over the rejected one.
- **RLOO** (Ahmadian et al. 2024, after Kool et al. 2019) samples k replies per prompt, scores them with the reward
  model and uses the mean score of the *other* k−1 replies as the baseline: no value model, no GAE.

Both use TRL 1.x trainers with settings that run on a CPU (float32, no gradient checkpointing, no checkpoints
written mid-run) and, like our PPO, train only the top layers of the policy so a step fits a laptop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import trl
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from playbook.config import Profile, TrainerConfig
from playbook.frozen_layers import train_top_layers
from playbook.io import Messages
from playbook.models import generate_replies, write_model_atomically
from playbook.ppo import score_spread
from playbook.reward import RewardModel
from playbook.sft import reply_kl
from playbook.stats import paired_difference
from playbook.training import (
    MAX_PASSES,
    HistoryCallback,
    TrainResult,
    batch_arguments,
    capped_steps,
    quiet_trl_renames,
    scratch_dir,
    timed,
    trl_cpu_safe_args,
)


@dataclass(frozen=True)
class DPOConfig(TrainerConfig):
    """DPO settings; the defaults are the course's measured cpu run (notebook 07), a profile sets the sizes. Turned
    into TRL's ``trl.DPOConfig`` by :func:`train_dpo`."""

    steps: int = 20  # optimisation steps (profile: rl_steps)
    max_passes: int = MAX_PASSES  # passes over the pairs at most (the gpu profile's steps assume all of hh-rlhf)
    batch_size: int = 8  # preference pairs per step (profile: ppo_batch_size)
    max_length: int = 128  # tokens of prompt + reply; TRL cuts what exceeds it (profile: rm_max_length)
    learning_rate: float = 2e-5  # (profile: rl_learning_rate; Rafailov et al. 2023: 1e-6 with every layer)
    beta: float = 0.1  # strength of the implicit KL leash (Rafailov et al. 2023: 0.1)
    prompt_messages: int = 3  # prompt messages kept, from the end (hh-rlhf's earlier turns rarely matter)
    trainable_layers: int | None = 6  # top decoder layers that train (profile: policy_trainable_layers)
    seed: int = 0
    # pairs per pass, accumulated to batch_size (profile: micro_batch_size); not printed in the config's repr:
    # it changes the memory a step needs, not the step
    micro_batch_size: int | None = field(default=None, repr=False)

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        return {
            "steps": profile.rl_steps,
            "batch_size": profile.ppo_batch_size,
            "max_length": profile.rm_max_length,
            "learning_rate": profile.rl_learning_rate,
            "trainable_layers": profile.policy_trainable_layers,
            "micro_batch_size": profile.micro_batch_size,
        }

    def __post_init__(self) -> None:
        self.require_positive(
            "steps", "max_passes", "batch_size", "max_length", "learning_rate", "beta", "prompt_messages"
        )
        self.require_layer_count("trainable_layers")
        self.require_micro_batch()


@dataclass(frozen=True)
class RLOOConfig(TrainerConfig):
    """RLOO settings; the defaults are the course's measured cpu run (notebook 07), a profile sets the sizes. Turned
    into TRL's ``trl.RLOOConfig`` by :func:`train_rloo`."""

    steps: int = 20  # optimisation steps (profile: rl_steps)
    prompts_per_step: int = 2  # prompts per step, each answered `generations` times (profile: ppo_batch_size / 4)
    generations: int = 4  # sampled replies per prompt; each is baselined by the mean of the others
    max_completion_length: int = 24  # tokens per sampled reply (profile: ppo_response_length)
    learning_rate: float = 2e-5  # (profile: rl_learning_rate)
    beta: float = 0.1  # KL penalty to the frozen start policy
    prompt_messages: int = 3  # prompt messages kept, from the end, as DPO keeps them (TRL's RLOO cuts none)
    trainable_layers: int | None = 6  # top decoder layers that train (profile: policy_trainable_layers)
    seed: int = 0

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        generations = max(2, min(4, profile.ppo_batch_size))
        return {
            "steps": profile.rl_steps,
            "prompts_per_step": max(1, profile.ppo_batch_size // generations),
            "generations": generations,
            "max_completion_length": profile.ppo_response_length,
            "learning_rate": profile.rl_learning_rate,
            "trainable_layers": profile.policy_trainable_layers,
        }

    def __post_init__(self) -> None:
        self.require_positive("steps", "prompts_per_step", "max_completion_length", "learning_rate", "prompt_messages")
        self.require(self.generations >= 2, "generations", "needs at least 2 (the baseline is the mean of the others)")
        self.require(self.beta >= 0, "beta", "must be 0 or more")
        self.require_layer_count("trainable_layers")


def _finish(
    trainer,
    history: HistoryCallback,
    policy,
    tokenizer,
    output_dir: str | os.PathLike | None,
    source: str,
    details: dict | None = None,
) -> TrainResult:
    """Train, then save the policy atomically to ``output_dir`` (when given) on the main process."""
    _, seconds = timed(trainer.train)
    policy.eval()
    saved = Path(output_dir) if output_dir is not None else None
    if saved is not None and trainer.accelerator.is_main_process:
        write_model_atomically(policy, tokenizer, saved, source=source, replace=True)
    return TrainResult(policy, pd.DataFrame(history.rows), seconds, saved, details or {})


def train_dpo(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    config: DPOConfig | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Direct preference optimisation with TRL's `DPOTrainer` on conversational pairs (`prompt` / `chosen` /
    `rejected` message lists, as `playbook.data.load_hh_rlhf` gives them), saved to `output_dir` when given; at most
    `config.max_passes` passes over `pairs`. ``details`` counts the pairs given and those TRL kept after cutting
    them to ``max_length``."""
    config = config or DPOConfig.from_profile()
    for column in ("prompt", "chosen", "rejected"):
        if column not in pairs.column_names:
            raise ValueError(f"DPO needs a {column!r} column; the dataset has {pairs.column_names}")
    pairs = pairs.map(lambda row: {"prompt": row["prompt"][-config.prompt_messages :]})
    train_top_layers(policy, config.trainable_layers)
    reference.requires_grad_(False)
    with quiet_trl_renames():
        args = trl.DPOConfig(
            output_dir=scratch_dir("playbook-dpo-"),  # TRL wants a folder; nothing is written mid-run
            max_steps=capped_steps(config.steps, config.batch_size, len(pairs), "DPO", config.max_passes),
            **batch_arguments(config.batch_size, config.micro_batch_size),
            learning_rate=config.learning_rate,
            beta=config.beta,
            max_length=config.max_length,
            **trl_cpu_safe_args(config.seed),
        )
        history = HistoryCallback()
        trainer = trl.DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=pairs,
            processing_class=tokenizer,
            callbacks=[history, *callbacks],
        )
    # TRL drops pairs that its cut to max_length leaves without a reply token ("Dropping fully truncated examples")
    kept = {"pairs": len(pairs), "pairs kept": len(trainer.train_dataset)}
    return _finish(trainer, history, policy, tokenizer, output_dir, "playbook.beyond_ppo.train_dpo", kept)


def reward_function(reward_model: RewardModel) -> Callable[..., list[float]]:
    """TRL's reward-function interface around our reward model: (prompts, completions) → one score each."""

    def reward_model_score(prompts: Sequence[Messages], completions: Sequence[Messages], **_) -> list[float]:
        replies = [completion[-1]["content"] for completion in completions]
        return reward_model.score_batch(list(prompts), replies)

    return reward_model_score


def train_rloo(
    policy: PreTrainedModel,
    reference: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    reward_model: RewardModel | Callable[..., list[float]],
    config: RLOOConfig | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """REINFORCE leave-one-out with TRL's `RLOOTrainer`: `generations` sampled replies per prompt, scored by our
    reward model (or any TRL reward function), each baselined by the mean of the others; a KL penalty of `beta` to
    the frozen start; each prompt cut to its last `prompt_messages` messages. TRL builds that reference itself from
    the policy's folder (`config._name_or_path`), so `reference` must be `None` or a model loaded from that same
    folder (checked), and the policy must come from disk, as `playbook.models.load_model` gives it."""
    config = config or RLOOConfig.from_profile()
    if reference is not None and reference.config._name_or_path != policy.config._name_or_path:
        raise ValueError(
            f"reference: TRL's RLOO uses the policy's own folder {policy.config._name_or_path!r} as the reference; "
            f"got a model from {reference.config._name_or_path!r}. Pass None or a copy loaded from the same folder."
        )
    train_top_layers(policy, config.trainable_layers)
    with quiet_trl_renames():
        args = trl.RLOOConfig(
            output_dir=scratch_dir("playbook-rloo-"),
            max_steps=config.steps,
            per_device_train_batch_size=config.prompts_per_step * config.generations,
            num_generations=config.generations,
            max_completion_length=config.max_completion_length,
            learning_rate=config.learning_rate,
            beta=config.beta,
            **trl_cpu_safe_args(config.seed),
        )
        history = HistoryCallback()
        trainer = trl.RLOOTrainer(
            model=policy,
            reward_funcs=reward_function(reward_model) if isinstance(reward_model, RewardModel) else reward_model,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [list(p)[-config.prompt_messages :] for p in prompts]}),
            processing_class=tokenizer,
            callbacks=[history, *callbacks],
        )
    return _finish(trainer, history, policy, tokenizer, output_dir, "playbook.beyond_ppo.train_rloo")


def evaluate_policies(
    policies: dict[str, PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    reward_model: RewardModel,
    *,
    max_new_tokens: int,
    baseline: str,
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Greedy replies of every policy to the same held-out prompts, scored by the reward model.

    Returns a table and the replies themselves. Per policy: mean score; gain in standard deviations of the
    `baseline` policy's scores, with the 95% bootstrap interval of the paired per-prompt difference (same units)
    and its Wilcoxon p-value; the KL from the baseline along the policy's own greedy replies (`reply_kl`, nats per
    reply); mean reply length in words.
    """
    if baseline not in policies:
        raise ValueError(f"baseline {baseline!r} is not one of {list(policies)}")
    replies = {
        name: generate_replies(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)
        for name, model in policies.items()
    }
    scores = {name: reward_model.score_batch(list(prompts), texts) for name, texts in replies.items()}
    base_mean, base_spread = score_spread(scores[baseline])
    rows = {}
    for name, values in scores.items():
        mean, _ = score_spread(values)
        rows[name] = {
            "mean RM score": mean,
            "gain (sd of baseline)": (mean - base_mean) / base_spread,
            "gain 95% low": np.nan,
            "gain 95% high": np.nan,
            "Wilcoxon p": np.nan,
            "KL to baseline (nats/reply)": 0.0,
            "mean reply words": sum(len(r.split()) for r in replies[name]) / len(replies[name]),
        }
        if name != baseline:
            change = paired_difference(values, scores[baseline])
            conversations = [
                [*p, {"role": "assistant", "content": r}] for p, r in zip(prompts, replies[name], strict=True)
            ]
            kl = reply_kl(policies[name], policies[baseline], tokenizer, conversations)
            rows[name] |= {
                "gain 95% low": change.low / base_spread,
                "gain 95% high": change.high / base_spread,
                "Wilcoxon p": change.wilcoxon_p_value,
                "KL to baseline (nats/reply)": float(kl.mean()),
            }
    return pd.DataFrame(rows).T, replies
