"""Supervised fine-tuning (SFT): teach the policy to write the replies people wrote or preferred, token by token.

SFT is the first stage of the RLHF recipe (InstructGPT, Ouyang et al. 2022) and the one DPO's authors ran on
Anthropic HH before DPO itself (Rafailov et al. 2023: fine-tune on prompt + chosen reply). The loss is the
negative log-likelihood of the **assistant's reply only**: the prompt is context, not something to imitate.

It runs TRL's ``SFTTrainer`` on conversations in TRL's conversational prompt-completion format, with TRL's
completion-only loss (``completion_only_loss=True``): TRL tokenizes the prompt with the generation prompt and the
whole conversation, and only the tokens after their common prefix (the reply, its ``<|im_end|>`` and the newline
the template writes after it) carry loss. TRL's assistant-only loss would need ``{% generation %}`` markers in the
chat template; SmolLM2's template has none and TRL has no training template for it, so completion-only it is.

:func:`loss_mask` shows which tokens train, and :func:`reply_nll` scores held-out replies, both from the very
dataset preparation the trainer uses (:func:`tokenize_for_sft`), so what they show is what the trainer sees.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import torch
import trl
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.annotation import AnnotationStore
from playbook.config import Profile, TrainerConfig, get_profile, runs_dir
from playbook.data import hh_rlhf_split
from playbook.feedback import to_training_sets
from playbook.frozen_layers import (
    next_token_logits_from_layer,
    run_decoder_layers,
    shared_trunk_depth,
    train_top_layers,
)
from playbook.io import Messages
from playbook.models import load_model, next_token_logits_at, write_model_atomically
from playbook.tensors import logprobs_from_logits, pad_sequences
from playbook.training import (
    MAX_PASSES,
    HistoryCallback,
    TrainResult,
    batch_arguments,
    capped_steps,
    claim_checkpoint_dir,
    process_state,
    quiet_trl_renames,
    scratch_dir,
    timed,
    trl_cpu_safe_args,
)

IGNORED_LABEL = -100  # the label PyTorch's cross-entropy (and so TRL) skips
LEARNER_LABELS = "my_labels.jsonl"  # where notebook 02's annotation widget saves the learner's own feedback


def default_sft_dir(profile: Profile | str | None = None) -> Path:
    """Where notebook 04 saves its SFT model (notebooks 06, 07 and 11 start from it): ``<runs>/<profile>/sft_model``."""
    return runs_dir(profile) / "sft_model"


@dataclass(frozen=True)
class SFTConfig(TrainerConfig):
    """SFT settings; the defaults are the course's measured cpu run (``benchmarks/sft_cpu.py``), a profile sets the
    sizes. Turned into TRL's ``trl.SFTConfig`` by :func:`train_sft`."""

    steps: int = 20  # optimisation steps (profile: sft_steps); about 5 minutes on 2 cores (benchmarks/sft_cpu.py)
    max_passes: int = MAX_PASSES  # passes over the data at most (the gpu profile's steps assume all of hh-rlhf)
    batch_size: int = 8  # conversations per step (profile: ppo_batch_size)
    max_length: int = 128  # tokens of prompt + reply, kept from the start; TRL drops a prompt that fills them all
    learning_rate: float = 2e-5  # (profile: sft_learning_rate)
    prompt_messages: int = 1  # prompt messages kept, from the end: hh-rlhf's last user turn (earlier turns would
    # fill max_length: with 3 kept, 328 of the cpu split's 1,494 prompts do and TRL drops them; with 1, one does)
    trainable_layers: int | None = 6  # top decoder layers that train (profile: policy_trainable_layers)
    seed: int = 0
    # conversations per pass, accumulated to batch_size (profile: micro_batch_size); not printed in the config's repr:
    # it changes the memory a step needs, not the step
    micro_batch_size: int | None = field(default=None, repr=False)

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        return {
            "steps": profile.sft_steps,
            "batch_size": profile.ppo_batch_size,
            "max_length": profile.rm_max_length,
            "learning_rate": profile.sft_learning_rate,
            "trainable_layers": profile.policy_trainable_layers,
            "micro_batch_size": profile.micro_batch_size,
        }

    def __post_init__(self) -> None:
        self.require_positive("steps", "max_passes", "batch_size", "max_length", "learning_rate", "prompt_messages")
        self.require_layer_count("trainable_layers")
        self.require_micro_batch()


# ------------------------------------------------------------------------------------------------ data


def sft_conversations(pairs: Dataset, corrections: Dataset | None = None) -> Dataset:
    """SFT examples in TRL's conversational prompt-completion format: each hh-rlhf pair's prompt with its chosen
    reply (as DPO's authors did for Anthropic HH), then the ``corrections`` (the ``"sft"`` set of
    :func:`playbook.feedback.to_training_sets`, already in that format) appended."""
    rows = [{"prompt": list(row["prompt"]), "completion": list(row["chosen"])} for row in pairs]
    if corrections is not None:
        rows += [{"prompt": list(row["prompt"]), "completion": list(row["completion"])} for row in corrections]
    return Dataset.from_list(rows)


def learner_corrections(profile: Profile | str | None = None) -> Dataset | None:
    """The corrective-feedback SFT examples among the labels the learner saved in notebook 02 (``runs/<profile>/
    my_labels.jsonl``), or ``None`` when there are none."""
    path = runs_dir(profile) / LEARNER_LABELS
    if not path.is_file():
        return None
    corrections = to_training_sets(AnnotationStore(path).feedback())["sft"]
    return corrections if len(corrections) else None


def held_out_conversations(pairs: Dataset, prompt_messages: int) -> list[Messages]:
    """Each held-out pair's last ``prompt_messages`` prompt messages and its chosen reply: the same shape of
    conversation SFT trains on (:attr:`SFTConfig.prompt_messages`), for :func:`reply_nll`."""
    return [list(row["prompt"][-prompt_messages:]) + list(row["chosen"]) for row in pairs]


def as_prompt_completion(conversation: Messages) -> dict[str, Messages]:
    """A conversation ending with the assistant's reply, split into TRL's ``prompt`` and ``completion``."""
    if not conversation or conversation[-1]["role"] != "assistant":
        raise ValueError("a conversation for SFT must end with the assistant's reply.")
    return {"prompt": list(conversation[:-1]), "completion": [conversation[-1]]}


def _trl_args(max_length: int | None, seed: int, output_dir: str, **training) -> trl.SFTConfig:
    with quiet_trl_renames():
        return trl.SFTConfig(
            output_dir=output_dir,
            max_length=max_length,
            completion_only_loss=True,  # labels of the prompt tokens are IGNORED_LABEL
            **{**trl_cpu_safe_args(seed), **training},
        )


def tokenize_for_sft(tokenizer: PreTrainedTokenizerBase, examples: Dataset, args: trl.SFTConfig) -> Dataset:
    """``input_ids`` and ``labels`` (``IGNORED_LABEL`` where no loss) of prompt-completion examples, made by TRL's
    own ``SFTTrainer`` dataset preparation (tokenize, mask the prompt, truncate, drop examples left without a
    label). :func:`train_sft` trains on exactly this, and :func:`loss_mask` and :func:`reply_nll` read it."""
    # The preparation reads only these attributes of the trainer: the tokenizer, the (absent) training chat template
    # of assistant-only loss, and whether the loss is completion-only.
    trainer = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    with _progress_bars(len(examples) > 1_000):
        return trl.SFTTrainer._prepare_dataset(trainer, examples, tokenizer, args, False, None, "train")


@contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """Show the data preparation's progress bars only when it takes a while (they would fill a notebook)."""
    hidden_before = datasets.are_progress_bars_disabled()
    if shown:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hidden_before:
            datasets.disable_progress_bars()
        else:
            datasets.enable_progress_bars()


def loss_mask(
    tokenizer: PreTrainedTokenizerBase, conversation: Messages, max_length: int | None
) -> tuple[list[int], list[int]]:
    """The token ids SFT trains on for ``conversation`` (ending with the assistant's reply) and a 0/1 mask, 1 where
    the token carries loss: the trainer's own labels, cut to ``max_length`` tokens (``None``: no cut)."""
    args = _trl_args(max_length, 0, tempfile.gettempdir())
    prepared = tokenize_for_sft(tokenizer, Dataset.from_list([as_prompt_completion(conversation)]), args)
    if len(prepared) == 0:
        raise ValueError(f"max_length={max_length}: the prompt fills it, so no reply token would train.")
    row = prepared[0]
    return list(row["input_ids"]), [int(label != IGNORED_LABEL) for label in row["labels"]]


@torch.no_grad()
def token_nll_table(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], mask: Sequence[int]
) -> pd.DataFrame:
    """One row per token of one conversation (from :func:`loss_mask`): the token, whether it trains, and
    −log p(token | everything before it) under ``model``. The mean of that column over the trained rows is the
    conversation's SFT loss (and :func:`reply_nll`'s value for it)."""
    was_training = model.training
    model.eval()
    tokens = torch.tensor([list(ids)], device=model.device)
    logprobs = logprobs_from_logits(model(input_ids=tokens).logits[:, :-1], tokens[:, 1:])[0].cpu()
    model.train(was_training)
    return pd.DataFrame(
        {
            "token": [tokenizer.decode([token]) for token in ids],
            "trains": [bool(m) for m in mask],
            "nll": [float("nan"), *(-logprobs).tolist()],  # the first token has nothing before it
        }
    )


def _sum_per_row(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Per row of ``where`` (``[batch, length]``), the sum of ``values``, one per marked position in reading order."""
    row_of_value = torch.arange(len(where))[:, None].expand_as(where)[where]
    return torch.zeros(len(where), dtype=values.dtype).index_add_(0, row_of_value, values)


def _reply_batches(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Messages], batch_size: int, max_length: int | None
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Conversations tokenized as SFT trains on them, in batches of similar length: (row numbers, ids, attention
    mask, mask of the tokens SFT trains on, aligned with the logits that predict them)."""
    args = _trl_args(max_length, 0, tempfile.gettempdir())
    prepared = tokenize_for_sft(tokenizer, Dataset.from_list([as_prompt_completion(c) for c in conversations]), args)
    if len(prepared) != len(conversations):
        raise ValueError(f"max_length={max_length}: some prompts fill it, leaving no reply token to score.")
    encoded, labels = prepared["input_ids"], prepared["labels"]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, attention = pad_sequences([encoded[i] for i in rows], tokenizer.pad_token_id)
        scored, _ = pad_sequences([[int(x != IGNORED_LABEL) for x in labels[i]] for i in rows], 0)
        yield rows, ids, attention, scored[:, 1:].float()  # token t is predicted from the logits at t - 1


@torch.no_grad()
def reply_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> np.ndarray:
    """Per conversation, the mean negative log-likelihood (nats per token) of the tokens SFT trains on (the
    assistant's last reply, its ``<|im_end|>`` and the template's newline after it: :func:`loss_mask`) given
    everything before them; ``max_length`` cuts as the trainer does (``None``: whole conversations)."""
    nll = np.zeros(len(conversations))
    was_training = model.training
    model.eval()
    for rows, ids, attention, mask in _reply_batches(tokenizer, conversations, batch_size, max_length):
        scored = mask.bool()
        logits = next_token_logits_at(model, ids, attention, scored)
        logprobs = logprobs_from_logits(logits, ids[:, 1:][scored].to(model.device)).double().cpu()
        nll[rows] = (-_sum_per_row(logprobs, scored) / mask.sum(1).double()).numpy()
    model.train(was_training)
    return nll


@torch.no_grad()
def reply_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Messages],
    *,
    batch_size: int = 8,
) -> np.ndarray:
    """Per conversation, Σ over the reply's tokens of KL(π(·|prefix) ‖ π_ref(·|prefix)), in nats per reply: how far
    the policy's next-token distributions have moved from the reference's along that reply, every token of the
    vocabulary counted (exact at each position, not a sampled estimate).

    The course's policies train only their top layers, so the two models share the layers below weight for weight:
    those run once per batch, and each model runs only its own layers above them (``playbook.frozen_layers``)."""
    kl = np.zeros(len(conversations))
    shared = shared_trunk_depth(policy, reference)
    for rows, ids, attention, mask in _reply_batches(tokenizer, conversations, batch_size, None):
        scored = mask.bool()  # only the reply's positions: prompts are long, the vocabulary wide
        if shared is None:
            policy_logits = next_token_logits_at(policy, ids, attention, scored)
            reference_logits = next_token_logits_at(reference, ids, attention, scored)
        else:
            ids, attention, where = ids.to(policy.device), attention.to(policy.device), scored.to(policy.device)
            # right-padded rows: positions 0, 1, 2, ... as the models' own forward pass numbers them
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            backbone = policy.base_model
            trunk = run_decoder_layers(backbone, backbone.embed_tokens(ids), attention, positions, 0, shared)
            policy_logits = next_token_logits_from_layer(policy, trunk, attention, positions, shared, where)
            reference_logits = next_token_logits_from_layer(reference, trunk, attention, positions, shared, where)
        policy_logprobs = policy_logits.float().log_softmax(-1)
        reference_logprobs = reference_logits.float().log_softmax(-1)
        per_token = (policy_logprobs.exp() * (policy_logprobs - reference_logprobs)).sum(-1).cpu()
        kl[rows] = _sum_per_row(per_token, scored).numpy()
    return kl


# -------------------------------------------------------------------------------------------- training


def train_sft(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset,
    config: SFTConfig | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> TrainResult:
    """Supervised fine-tuning with TRL's ``SFTTrainer`` on prompt-completion conversations
    (:func:`sft_conversations`), the loss on the completion only, the prompt cut to its last
    ``config.prompt_messages`` messages, training the top ``config.trainable_layers`` layers.

    With ``output_dir`` the policy is saved there atomically once training ends, and TRL checkpoints go to
    ``<output_dir>-checkpoints`` so that, with ``resume``, an interrupted run of the same settings, model and data
    continues from its last checkpoint (another run's checkpoints are set aside, never deleted). The result's
    ``details`` say how many examples trained (TRL drops those whose prompt fills ``max_length``) and at which step
    a resumed run picked up (0 for a fresh one). At most ``config.max_passes`` passes over ``data``.
    """
    config = config or SFTConfig.from_profile()
    for column in ("prompt", "completion"):
        if column not in data.column_names:
            raise ValueError(f"SFT needs a {column!r} column (see sft_conversations); the data has {data.column_names}")
    data = data.map(lambda row: {"prompt": row["prompt"][-config.prompt_messages :]})
    saved = Path(output_dir) if output_dir is not None else None
    checkpoints = saved.with_name(f"{saved.name}-checkpoints") if saved is not None else None
    steps = capped_steps(config.steps, config.batch_size, len(data), "SFT", config.max_passes)
    checkpointing = {"save_strategy": "steps", "save_steps": max(1, steps // 4), "save_total_limit": 1}
    args = _trl_args(
        config.max_length,
        config.seed,
        str(checkpoints) if checkpoints else scratch_dir("playbook-sft-"),
        max_steps=steps,
        **batch_arguments(config.batch_size, config.micro_batch_size),
        learning_rate=config.learning_rate,
        **(checkpointing if checkpoints else {}),
    )
    prepared = tokenize_for_sft(tokenizer, data, args)
    if len(prepared) == 0:
        raise ValueError(f"SFTConfig.max_length={config.max_length}: every prompt fills it, so no reply token trains.")
    state = process_state()
    if checkpoints is not None and state.is_main_process:
        claim_checkpoint_dir(checkpoints, _fingerprint(config, policy, prepared), resume)
    state.wait_for_everyone()
    train_top_layers(policy, config.trainable_layers)
    policy.train()
    history = HistoryCallback()
    with quiet_trl_renames():
        trainer = trl.SFTTrainer(
            model=policy, args=args, train_dataset=prepared, processing_class=tokenizer, callbacks=[history]
        )
    finished = [int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*")] if checkpoints else []
    resume_from = resume and bool(finished)
    _, seconds = timed(lambda: trainer.train(resume_from_checkpoint=True if resume_from else None))
    policy.eval()
    if saved is not None and trainer.accelerator.is_main_process:
        write_model_atomically(policy, tokenizer, saved, source="playbook.sft.train_sft", replace=True)
    state.wait_for_everyone()  # the other processes may load the saved model next
    details = {
        "examples": len(prepared),
        "examples_dropped": len(data) - len(prepared),
        "resumed_at_step": max(finished) if resume_from else 0,  # steps an earlier, interrupted run had done
    }
    return TrainResult(policy, pd.DataFrame(history.rows), seconds, saved, details)


def load_or_train_sft_model(profile: Profile | str | None = None, *, folder: str | os.PathLike | None = None) -> Path:
    """The folder of the SFT model saved by notebook 04 (default :func:`default_sft_dir`), training one there as
    notebook 04 does when there is none yet: the embedded model fine-tuned on the split's training prompts with
    their chosen replies (and the learner's corrections, if any)."""
    profile = get_profile(profile) if not isinstance(profile, Profile) else profile
    folder = Path(folder) if folder is not None else default_sft_dir(profile)
    if (folder / "config.json").is_file():
        print(f"Starting from the SFT model saved in {folder.parent.name}/{folder.name}.")
        return folder
    print(f"No SFT model in {folder.parent.name}/{folder.name} yet: training one as notebook 04 does.")
    policy, tokenizer = load_model()
    data = sft_conversations(hh_rlhf_split(profile)["train"], learner_corrections(profile))
    train_sft(policy, tokenizer, data, SFTConfig.from_profile(profile), output_dir=folder)
    return folder


def plot_history(history: pd.DataFrame):
    """SFT's training loss (mean NLL of the reply tokens in each batch) against the optimisation step."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(6, 3.2))
    rows = history.dropna(subset=["loss"])
    axis.plot(rows["step"], rows["loss"], marker=".")
    axis.set(title="SFT loss (training batches, reply tokens only)", xlabel="step", ylabel="nats per token")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    figure.tight_layout()
    return figure


def plot_loss_mask(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], mask: Sequence[int], *, per_line: int = 12):
    """One tokenized conversation drawn token by token: grey tokens are context, orange ones carry SFT's loss."""
    import matplotlib.pyplot as plt

    tokens = [tokenizer.decode([token]).replace("\n", "\\n") for token in ids]
    lines = (len(tokens) + per_line - 1) // per_line
    figure, axis = plt.subplots(figsize=(12, 0.42 * lines + 0.6))
    for index, (token, trains) in enumerate(zip(tokens, mask, strict=True)):
        row, column = divmod(index, per_line)
        axis.text(
            column / per_line,
            1 - (row + 0.5) / lines,
            token if token.strip() else repr(token)[1:-1] or "␣",
            fontsize=8,
            family="monospace",
            va="center",
            bbox={"facecolor": "tab:orange" if trains else "0.88", "edgecolor": "none", "pad": 2},
        )
    axis.set_axis_off()
    axis.set_title(f"{sum(mask)} of {len(ids)} tokens carry the loss (orange); the rest is context (grey)")
    figure.tight_layout()
    return figure


def _fingerprint(config: SFTConfig, policy: PreTrainedModel, prepared: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(repr((asdict(config), policy.config._name_or_path)).encode())
    digest.update(repr((prepared["input_ids"], prepared["labels"])).encode())
    return digest.hexdigest()[:16]
