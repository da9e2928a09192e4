"""What practitioners use instead of PPO: DPO and RLOO, run with TRL on the course's data and reward model.

- **DPO** (Rafailov et al. 2023) learns straight from preference pairs: no reward model, no sampling. Its loss
  raises the policy's log-ratio to the frozen reference on the chosen reply over the rejected one.
- **RLOO** (Ahmadian et al. 2024, after Kool et al. 2019) samples k replies per prompt, scores them with the reward
  model and uses the mean score of the *other* k−1 replies as the baseline: no value model, no GAE.

Both use TRL 1.x trainers with settings that run on a CPU (float32, no gradient checkpointing, no checkpoints
written mid-run) and, like our PPO, train only the top layers of the policy so a step fits a laptop.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer, RLOOConfig, RLOOTrainer

from playbook.io import Messages
from playbook.models import generate_replies
from playbook.ppo import score_spread, train_top_layers
from playbook.reward import RewardModel

CPU_SAFE = {
    "bf16": False,  # TRL configs default to bf16 where the hardware has it; float32 keeps CPU runs exact
    "fp16": False,
    "gradient_checkpointing": False,  # recomputing activations only costs time when memory is not the limit
    "report_to": [],
    "save_strategy": "no",
    "logging_steps": 1,
    "disable_tqdm": False,
    "seed": 0,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning only helps copies to a GPU
}


@contextmanager
def _quiet_renames():
    """TRL 1.16 configs still set `gradient_checkpointing`, which transformers 5 renamed; its FutureWarnings say
    nothing a learner can act on (and print library paths into notebooks), so they are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
        yield


@dataclass
class MethodRun:
    """A trained policy, its per-step log (the trainer's own metrics) and the wall time of training."""

    name: str
    policy: PreTrainedModel
    history: pd.DataFrame
    seconds: float


class _History(TrainerCallback):
    """Collects every log line a TRL trainer emits into rows of a table."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_runtime" not in logs:
            self.rows.append({"step": state.global_step, **logs})


def _run(name: str, trainer, history: _History, policy: PreTrainedModel) -> MethodRun:
    started = time.perf_counter()
    with _quiet_renames():
        trainer.train()
    seconds = time.perf_counter() - started
    policy.eval()
    return MethodRun(name, policy, pd.DataFrame(history.rows), seconds)


def train_dpo(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    *,
    output_dir: str | Path,
    steps: int,
    batch_size: int = 8,
    max_length: int = 128,
    learning_rate: float = 2e-5,
    beta: float = 0.1,
    trainable_layers: int | None = 6,
    prompt_messages: int = 3,
    callbacks: Sequence[TrainerCallback] = (),
) -> MethodRun:
    """Direct preference optimisation with TRL's `DPOTrainer` on conversational pairs (`prompt` / `chosen` /
    `rejected` message lists, as `playbook.data.load_hh_rlhf` gives them). Prompts keep their last
    `prompt_messages` messages (hh-rlhf's earlier turns are rarely needed to judge the last reply), and TRL cuts
    what still exceeds `max_length` tokens from the end."""
    for column in ("prompt", "chosen", "rejected"):
        if column not in pairs.column_names:
            raise ValueError(f"DPO needs a {column!r} column; the dataset has {pairs.column_names}")
    pairs = pairs.map(lambda row: {"prompt": row["prompt"][-prompt_messages:]})
    train_top_layers(policy, trainable_layers)
    reference.requires_grad_(False)
    with _quiet_renames():
        config = DPOConfig(
            output_dir=str(output_dir),
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            beta=beta,
            max_length=max_length,
            **CPU_SAFE,
        )
    history = _History()
    with _quiet_renames():
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=config,
            train_dataset=pairs,
            processing_class=tokenizer,
            callbacks=[history, *callbacks],
        )
    return _run("DPO", trainer, history, policy)


def reward_function(reward_model: RewardModel) -> Callable[..., list[float]]:
    """TRL's reward-function interface around our reward model: (prompts, completions) → one score each."""

    def reward_model_score(prompts: Sequence[Messages], completions: Sequence[Messages], **_) -> list[float]:
        replies = [completion[-1]["content"] for completion in completions]
        return reward_model.score_batch(list(prompts), replies)

    return reward_model_score


def train_rloo(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    reward_model: RewardModel | Callable[..., list[float]],
    *,
    output_dir: str | Path,
    steps: int,
    prompts_per_step: int = 2,
    generations: int = 4,
    max_completion_length: int = 24,
    learning_rate: float = 2e-5,
    beta: float = 0.1,
    trainable_layers: int | None = 6,
    callbacks: Sequence[TrainerCallback] = (),
) -> MethodRun:
    """REINFORCE leave-one-out with TRL's `RLOOTrainer`: `generations` sampled replies per prompt, scored by our
    reward model (or any TRL reward function), each baselined by the mean of the others; a KL penalty of `beta` to
    the frozen start. TRL loads that reference from the policy's folder (`config._name_or_path`), so pass a policy
    loaded from disk, as `playbook.models.load_model` does."""
    if generations < 2:
        raise ValueError("RLOO needs at least 2 generations per prompt (the baseline is the mean of the others)")
    train_top_layers(policy, trainable_layers)
    with _quiet_renames():
        config = RLOOConfig(
            output_dir=str(output_dir),
            max_steps=steps,
            per_device_train_batch_size=prompts_per_step * generations,
            num_generations=generations,
            max_completion_length=max_completion_length,
            learning_rate=learning_rate,
            beta=beta,
            **CPU_SAFE,
        )
    history = _History()
    with _quiet_renames():
        trainer = RLOOTrainer(
            model=policy,
            reward_funcs=reward_function(reward_model) if isinstance(reward_model, RewardModel) else reward_model,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
            processing_class=tokenizer,
            callbacks=[history, *callbacks],
        )
    return _run("RLOO", trainer, history, policy)


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

    Returns a table (mean score, gain in standard deviations of the `baseline` policy's scores, mean reply length
    in words) and the replies themselves.
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
            "mean reply words": sum(len(r.split()) for r in replies[name]) / len(replies[name]),
        }
    return pd.DataFrame(rows).T, replies
