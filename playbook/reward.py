"""Reward models: learn a scalar score that predicts which of two replies a person preferred.

A reward model is the language model's backbone with a one-output head: it reads the whole conversation and
returns r(prompt, reply). Training uses the Bradley–Terry loss, −log σ(r(chosen) − r(rejected)), so only the
*difference* of two rewards means anything.

Three ways to train it (``method=``), all producing the same kind of model (a transformers
``...ForSequenceClassification`` folder that :meth:`RewardModel.load` and PPO read):

- ``"head"``: keep the backbone frozen and train only the linear head. The backbone's features of every
  conversation are computed once (in resumable chunks) and the head is fitted on them with an L2 penalty
  chosen on a validation split, so every pair is read by the model once. ``layers`` can keep just the lower
  part of the backbone: cheaper, and on SmolLM2-135M middle layers separate hh-rlhf pairs at least as well as
  the top one (see ``benchmarks/reward_cpu.py``). This is what a CPU can afford.
- ``"lora"``: TRL's ``RewardTrainer`` with LoRA adapters (peft) on the attention projections plus the head.
- ``"full"``: TRL's ``RewardTrainer`` updating every weight.

Conversations are encoded with the chat template and truncated from the **front**, because the two replies
differ at the end. The reward is read at the ``<|im_end|>`` token that closes the reply; the model gets its own
padding token so that this token is never mistaken for padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from playbook.config import Profile, TrainerConfig, runs_dir
from playbook.io import Messages
from playbook.models import load_model, saved_tensor_names, sweep_abandoned_copies, token_label, write_model_atomically
from playbook.stats import proportion_interval
from playbook.tensors import pad_sequences
from playbook.training import (
    MAX_PASSES,
    HistoryCallback,
    TrainResult,
    batch_arguments,
    capped_steps,
    claim_checkpoint_dir,
    process_state,
    quiet_trl_renames,
    trl_cpu_safe_args,
)

Method = Literal["head", "lora", "full"]
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
SETTINGS_FILE = "reward_settings.json"
logger = logging.getLogger(__name__)


def default_reward_dir(profile: Profile | str | None = None) -> Path:
    """Where notebook 05 saves its reward model and notebooks 06-07 look for it: ``<runs>/<profile>/reward_model``."""
    return runs_dir(profile) / "reward_model"


@dataclass(frozen=True)
class RewardConfig(TrainerConfig):
    """Reward-model training settings; the defaults are the course's measured cpu run (notebook 05), and a profile
    sets every field but the seed (``from_profile``)."""

    method: Method = "head"  # "head" (frozen backbone, fitted head), "lora" or "full" (TRL's RewardTrainer)
    max_length: int = 128  # tokens per conversation, kept from the end
    batch_size: int = 8  # pairs per step (and per feature batch for "head")
    steps: int = 200  # optimisation steps
    layers: int = 18  # decoder layers of the backbone kept (the head reads the top one)
    lora_rank: int = 8  # LoRA rank for method "lora" (alpha = 2 x rank)
    # pairs per pass ("lora", "full"), accumulated to batch_size (profile: micro_batch_size); not printed in the
    # config's repr: it changes the memory a step needs, not the step
    micro_batch_size: int | None = field(default=None, repr=False)
    seed: int = 0

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        return {
            "method": profile.rm_method,
            "max_length": profile.rm_max_length,
            "batch_size": profile.rm_batch_size,
            "steps": profile.rm_steps,
            "layers": profile.rm_layers,
            "lora_rank": profile.rm_lora_rank,
            "micro_batch_size": profile.micro_batch_size,
        }

    def __post_init__(self) -> None:
        self.require(self.method in ("head", "lora", "full"), "method", "use 'head', 'lora' or 'full'")
        self.require_positive("max_length", "batch_size", "steps", "layers", "lora_rank")
        self.require_micro_batch()


# ------------------------------------------------------------------------------------------ encoding


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Messages, max_length: int) -> list[int]:
    """Token ids of a conversation (chat template), ending at the reply's ``<|im_end|>``, keeping the last tokens."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(ids, dict):
        ids = ids["input_ids"]
    ids = list(ids)
    while ids and ids[-1] != tokenizer.eos_token_id and tokenizer.decode(ids[-1:]).strip() == "":
        ids.pop()  # the template's newline after the closing token
    return ids[-max_length:]


def check_preference_dataset(dataset: Dataset, name: str = "dataset") -> None:
    """Raise ``ValueError`` naming the column or row when ``dataset`` is not usable preference data."""
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{name}: missing column(s) {missing}; expected TRL's conversational preference format "
            "(prompt / chosen / rejected message lists), as load_hh_rlhf returns."
        )
    if len(dataset) == 0:
        raise ValueError(f"{name}: no pairs.")
    for index, row in enumerate(dataset):
        for column in ("chosen", "rejected"):
            messages = row[column]
            if not messages or not str(messages[-1].get("content", "")).strip():
                raise ValueError(f"{name}[{index}]: empty {column} response.")


def tokenize_pairs(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """``chosen_ids`` / ``rejected_ids`` for each pair (the pre-tokenized format ``RewardTrainer`` accepts)."""
    check_preference_dataset(dataset)
    return Dataset.from_dict(
        {
            "chosen_ids": [encode_conversation(tokenizer, r["prompt"] + r["chosen"], max_length) for r in dataset],
            "rejected_ids": [encode_conversation(tokenizer, r["prompt"] + r["rejected"], max_length) for r in dataset],
        }
    )


def give_distinct_pad_token(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> None:
    """Make the padding token differ from end-of-sequence (SmolLM2 uses ``<|im_end|>`` for both).

    A sequence-classification model reads the last non-padding token; if padding and ``<|im_end|>`` are the
    same id, the token that closes the reply would count as padding. Uses the unknown token when there is one.
    """
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        if tokenizer.unk_token is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            if model is not None:
                model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id


# --------------------------------------------------------------------------------------- the model


class RewardModel:
    """A trained reward model with the tokenizer and truncation it was trained with."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.model, self.tokenizer, self.max_length = model.eval(), tokenizer, max_length

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, device: str | None = None) -> RewardModel:
        """Load a saved reward model (default: the one notebook 05 saved, :func:`default_reward_dir`).

        Raises naming the folder or file when there is no model, its settings are damaged, or its weights hold no
        trained reward head (``score.weight``), e.g. a language model's folder.
        """
        folder = Path(path) if path is not None else default_reward_dir()
        sweep_abandoned_copies(folder)
        settings = folder / SETTINGS_FILE
        retrain = "run notebooks/05_reward_model.ipynb, or call train_reward_model(...), which saves one there."
        if not settings.is_file():
            raise FileNotFoundError(f"No reward model in {folder}: {retrain}")
        try:
            max_length = json.loads(settings.read_text(encoding="utf-8"))["max_length"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{settings}: damaged ({type(error).__name__}: {error}); it must be a JSON object with "
                f"'max_length'. Fix it or save the reward model again: {retrain}"
            ) from error
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ValueError(f"{settings}: 'max_length' must be a positive whole number, got {max_length!r}.")
        try:
            has_head = "score.weight" in saved_tensor_names(folder)
        except ValueError as error:
            raise ValueError(f"{error} The reward model in {folder} is damaged: {retrain}") from error
        if not has_head:
            raise ValueError(
                f"{folder} holds no trained reward head (its weights have no score.weight): it looks like a "
                f"language model, not a reward model. Point to a reward model's folder, or {retrain}"
            )
        model, tokenizer = load_model(folder, task="reward", device=device)
        return cls(model, tokenizer, max_length)

    def save(self, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
        """Save atomically, settings included: a stop at any point leaves the previous copy intact and loadable."""
        folder = Path(path)
        settings = json.dumps({"max_length": self.max_length, **(extra or {})})
        write_model_atomically(
            self.model,
            self.tokenizer,
            folder,
            source="playbook.reward",
            replace=True,
            extra_files={SETTINGS_FILE: settings},
        )
        return folder

    @torch.no_grad()
    def score_batch(
        self, prompts: Sequence[Messages], responses: Sequence[str], *, batch_size: int = 16
    ) -> list[float]:
        """Rewards of each (prompt messages, reply text)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses.")
        conversations = [
            list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, responses, strict=True)
        ]
        return self.score_conversations(conversations, batch_size=batch_size)

    def score(self, prompt: Messages, response: str) -> float:
        """The reward of one reply to one prompt."""
        return self.score_batch([prompt], [response])[0]

    @torch.no_grad()
    def score_conversations(self, conversations: Sequence[Messages], *, batch_size: int = 16) -> list[float]:
        """Rewards of whole conversations ending with the assistant reply being judged."""
        encoded = [encode_conversation(self.tokenizer, c, self.max_length) for c in conversations]
        return score_token_ids(self.model, encoded, self.tokenizer.pad_token_id, batch_size=batch_size)


@torch.no_grad()
def score_token_ids(
    model: PreTrainedModel, encoded: Sequence[Sequence[int]], pad_id: int, *, batch_size: int = 16
) -> list[float]:
    """Rewards of already-encoded conversations, batched by length so little time goes on padding."""
    order = np.argsort([len(e) for e in encoded], kind="stable")
    rewards = np.zeros(len(encoded))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = pad_sequences([encoded[i] for i in rows], pad_id)
        rewards[rows] = (
            model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
            .logits[:, 0]
            .float()
            .cpu()
            .numpy()
        )
    return rewards.tolist()


def reward_margins(reward_model: RewardModel, dataset: Dataset, *, batch_size: int = 16) -> np.ndarray:
    """r(chosen) − r(rejected) for every pair of a preference dataset."""
    check_preference_dataset(dataset)
    chosen = reward_model.score_conversations([r["prompt"] + r["chosen"] for r in dataset], batch_size=batch_size)
    rejected = reward_model.score_conversations([r["prompt"] + r["rejected"] for r in dataset], batch_size=batch_size)
    return np.asarray(chosen) - np.asarray(rejected)


def pairwise_accuracy(reward_model: RewardModel, dataset: Dataset, *, batch_size: int = 16) -> float:
    """Share of pairs where the reward model scores the chosen reply higher (a tie counts as half)."""
    margins = reward_margins(reward_model, dataset, batch_size=batch_size)
    return float(((margins > 0) + 0.5 * (margins == 0)).mean())


# ------------------------------------------------------------------------------------------ training


def train_reward_model(
    pairs: Dataset,
    config: RewardConfig | None = None,
    *,
    eval_pairs: Dataset | None = None,
    base: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train a reward model on preference pairs and save it to ``output_dir`` (default :func:`default_reward_dir`).

    ``base`` is the backbone (default: the embedded model); ``config`` defaults to the current profile's
    (:meth:`RewardConfig.from_profile`). With ``resume`` an interrupted run continues from its last checkpoint
    (``<output_dir>-checkpoints``); the finished model replaces the previous one only once it is complete. The
    result's ``details`` hold r(chosen) − r(rejected) on ``eval_pairs`` before (fresh head) and after training, and
    ``features_were_cached`` (the "head" method found an earlier run's feature chunks, so ``seconds`` is the fit's).
    Under ``accelerate launch`` the processes share the work (the "head" method's feature batches, TRL's data
    parallelism) and the main process saves.
    """
    config = config or RewardConfig.from_profile()
    check_preference_dataset(pairs, "pairs")
    if eval_pairs is not None:
        check_preference_dataset(eval_pairs, "eval_pairs")
    output_dir = Path(output_dir) if output_dir is not None else default_reward_dir()
    state = process_state()
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(base, task="reward", device="cpu" if config.method == "head" else None)
    give_distinct_pad_token(tokenizer, model)
    if config.layers < model.config.num_hidden_layers:
        keep_lower_layers(model, config.layers)
    train = tokenize_pairs(pairs, tokenizer, config.max_length)
    evaluation = tokenize_pairs(eval_pairs, tokenizer, config.max_length) if eval_pairs is not None else None
    checkpoints = output_dir.with_name(f"{output_dir.name}-checkpoints")
    if state.is_main_process:
        claim_checkpoint_dir(checkpoints, _fingerprint(config, base, train), resume)
    state.wait_for_everyone()
    # An earlier run's feature chunks make this one's time the fit's alone; the notebooks say so when they print it.
    features_were_cached = config.method == "head" and any(checkpoints.glob("train-chosen-*.pt"))
    start = time.perf_counter()
    if config.method == "head":
        history, margins = _fit_head(model, tokenizer, train, evaluation, config, checkpoints)
    else:
        before = _eval_margins(model, evaluation, tokenizer.pad_token_id, config.batch_size)
        model, history = _train_with_trl(model, tokenizer, train, evaluation, config, checkpoints)
        margins = (before, _eval_margins(model, evaluation, tokenizer.pad_token_id, config.batch_size))
    seconds = time.perf_counter() - start
    reward_model = RewardModel(model.eval(), tokenizer, config.max_length)
    if state.is_main_process:
        reward_model.save(output_dir, extra={"method": config.method, "layers": model.config.num_hidden_layers})
        history.to_csv(output_dir / "history.csv", index=False)
    state.wait_for_everyone()
    details = {
        "eval_margins_before": margins[0],
        "eval_margins_after": margins[1],
        "processes": state.num_processes,
        "features_were_cached": features_were_cached,
    }
    return TrainResult(reward_model, history, seconds, output_dir, details)


def load_or_train_reward_model(
    pairs: Dataset, config: RewardConfig | None = None, *, folder: str | os.PathLike | None = None
) -> RewardModel:
    """The reward model saved in ``folder`` (default :func:`default_reward_dir`, where notebook 05 saves it), or, when
    there is none yet, one trained on ``pairs`` as notebook 05 trains it and saved there."""
    folder = Path(folder) if folder is not None else default_reward_dir()
    if (folder / "reward_settings.json").is_file():
        print(f"Loaded the reward model saved in {folder.parent.name}/{folder.name}.")
        return RewardModel.load(folder)
    print(f"No reward model in {folder.parent.name}/{folder.name} yet: training one as notebook 05 does.")
    return train_reward_model(pairs, config, output_dir=folder).model


def _eval_margins(model, evaluation: Dataset | None, pad_id: int, batch_size: int) -> np.ndarray | None:
    if evaluation is None:
        return None
    chosen = score_token_ids(model.eval(), evaluation["chosen_ids"], pad_id, batch_size=batch_size)
    rejected = score_token_ids(model, evaluation["rejected_ids"], pad_id, batch_size=batch_size)
    return np.asarray(chosen) - np.asarray(rejected)


def keep_lower_layers(model: PreTrainedModel, layers: int) -> None:
    """Drop every decoder layer above the first ``layers`` (the final norm and head then read that layer)."""
    backbone = model.base_model
    backbone.layers = backbone.layers[:layers]
    model.config.num_hidden_layers = layers
    if hasattr(model.config, "layer_types") and model.config.layer_types is not None:
        model.config.layer_types = model.config.layer_types[:layers]


def _fingerprint(config: RewardConfig, base, train: Dataset) -> str:
    digest = hashlib.sha256()
    digest.update(repr((asdict(config), str(base))).encode())
    for column in ("chosen_ids", "rejected_ids"):
        digest.update(repr(train[column]).encode())
    return digest.hexdigest()[:16]


# ---- method "head": features once, then a regularised Bradley–Terry fit


@torch.no_grad()
def backbone_features(
    model: PreTrainedModel,
    encoded: Sequence[Sequence[int]],
    pad_id: int,
    *,
    batch_size: int,
    cache_dir: Path | None = None,
    description: str = "features",
    progress: bool = True,
) -> torch.Tensor:
    """The vector the head reads (last real token after the final norm) for every encoded conversation.

    With ``cache_dir``, finished chunks are saved as they complete, so an interrupted extraction resumes; a saved
    chunk that cannot be read back (or has the wrong shape) is named in a warning and computed again. Under
    ``accelerate launch`` each process computes every n-th chunk into ``cache_dir`` and then reads the others'.
    """
    state = process_state()
    if state.num_processes > 1 and cache_dir is None:
        raise ValueError("backbone_features: several processes share their chunks through cache_dir; pass one.")
    order = np.argsort([len(e) for e in encoded], kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    features = torch.zeros(len(encoded), model.config.hidden_size)
    if cache_dir is not None:  # e.g. a reward model whose checkpoints folder was deleted: its chunks are made anew
        cache_dir.mkdir(parents=True, exist_ok=True)
    mine = [n for n in range(len(chunks)) if n % state.num_processes == state.process_index]
    for number in tqdm(mine, desc=description, unit="batch", disable=not (progress and state.is_main_process)):
        rows = chunks[number]
        saved = cache_dir / f"{description}-{number:05d}.pt" if cache_dir else None
        if saved is not None and saved.is_file():
            chunk = _saved_chunk(saved, (len(rows), model.config.hidden_size))
            if chunk is not None:
                features[rows] = chunk
                continue
        ids, mask = (tensor.to(model.device) for tensor in pad_sequences([encoded[i] for i in rows], pad_id))
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        chunk = hidden[torch.arange(len(rows), device=model.device), mask.sum(1) - 1].float().cpu()
        features[rows] = chunk
        if saved is not None:
            partial = saved.with_suffix(f".{os.getpid()}.tmp")  # per process: runs that share a cache never collide
            torch.save(chunk, partial)
            partial.rename(saved)
    if state.num_processes > 1:
        state.wait_for_everyone()
        for number in sorted(set(range(len(chunks))) - set(mine)):
            saved = cache_dir / f"{description}-{number:05d}.pt"
            chunk = _saved_chunk(saved, (len(chunks[number]), model.config.hidden_size))
            if chunk is None:
                raise RuntimeError(f"{saved}: another process's chunk cannot be used; run again to compute it anew.")
            features[chunks[number]] = chunk
    return features


def _saved_chunk(saved: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """A cached feature chunk, or ``None`` (with a warning naming the file) when it is damaged or of another shape."""
    try:
        chunk = torch.load(saved, weights_only=True)
        if isinstance(chunk, torch.Tensor) and tuple(chunk.shape) == shape:
            return chunk
        problem = f"holds {type(chunk).__name__} {tuple(getattr(chunk, 'shape', ()))}, expected a tensor {shape}"
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as error:
        problem = f"cannot be read ({type(error).__name__}: {error})"
    logger.warning("%s %s; computing this chunk again.", saved, problem)
    return None


def fit_bradley_terry_head(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    *,
    l2: float,
    steps: int = 300,
    eval_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, pd.DataFrame]:
    """A linear reward w·x minimising mean −log σ(w·(x_c − x_r)) + l2/2·‖w‖² on standardised features.

    Returns ``w`` for the raw features (the standardisation folded in) and a history with the penalised loss and
    the training (and evaluation) accuracy after every ``optimizer.step`` of up to 10 L-BFGS iterations (``step``
    counts in tens; ``iterations``, the L-BFGS iterations run so far, stops growing once the fit has converged).
    """
    torch.manual_seed(seed)
    both = torch.cat([chosen, rejected])
    scale = both.std(0) + 1e-6
    difference = (chosen - rejected) / scale
    weight = torch.zeros(difference.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], lr=1, max_iter=10, line_search_fn="strong_wolfe")
    rows = []

    def penalised_loss() -> torch.Tensor:
        return -torch.nn.functional.logsigmoid(difference @ weight).mean() + 0.5 * l2 * weight.pow(2).sum()

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = penalised_loss()
        loss.backward()
        return loss

    for step in range(0, steps + 1, 10):
        if step:
            optimizer.step(objective)
        with torch.no_grad():
            row = {
                "step": step,
                "iterations": int(optimizer.state[weight].get("n_iter", 0)),
                "loss": float(penalised_loss()),
                "accuracy": _accuracy(difference @ weight),
            }
            if eval_pairs is not None:
                row["eval_accuracy"] = _accuracy(((eval_pairs[0] - eval_pairs[1]) / scale) @ weight)
        rows.append(row)
    return (weight / scale).detach(), pd.DataFrame(rows)


def _accuracy(margins: torch.Tensor) -> float:
    return float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())


def _fit_head(model, tokenizer, train, evaluation, config: RewardConfig, checkpoints: Path):
    pad, size, seed = tokenizer.pad_token_id, config.batch_size * 2, config.seed
    feats = {
        side: backbone_features(
            model, train[f"{side}_ids"], pad, batch_size=size, cache_dir=checkpoints, description=f"train-{side}"
        )
        for side in ("chosen", "rejected")
    }
    held_out = None
    if evaluation is not None:
        held_out = tuple(
            backbone_features(
                model,
                evaluation[f"{side}_ids"],
                pad,
                batch_size=size,
                cache_dir=checkpoints,
                description=f"eval-{side}",
            )
            for side in ("chosen", "rejected")
        )
    l2 = choose_l2(feats["chosen"], feats["rejected"], seed=seed)
    weight, history = fit_bradley_terry_head(
        feats["chosen"], feats["rejected"], l2=l2, steps=config.steps, eval_pairs=held_out, seed=seed
    )
    margins = (None, None)
    if held_out is not None:
        difference = held_out[0] - held_out[1]
        margins = ((difference @ model.score.weight.data[0].float()).numpy(), (difference @ weight).numpy())
    model.score.weight.data = weight.reshape(1, -1).to(model.score.weight.dtype)
    history["l2"] = l2
    return history, margins


def choose_l2(chosen: torch.Tensor, rejected: torch.Tensor, *, seed: int = 0, grid: Sequence[float] = L2_GRID) -> float:
    """The L2 strength with the best accuracy on a held-out fifth of the training pairs."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(chosen), generator=generator)
    cut = max(1, len(order) // 5)
    valid, fit = order[:cut], order[cut:]
    scores = []
    for l2 in grid:
        _, history = fit_bradley_terry_head(
            chosen[fit], rejected[fit], l2=l2, steps=100, eval_pairs=(chosen[valid], rejected[valid]), seed=seed
        )
        scores.append(history["eval_accuracy"].iloc[-1])
    return float(grid[int(np.argmax(scores))])


# ---- methods "lora" and "full": TRL's RewardTrainer


def trl_steps(config: RewardConfig, pairs: int, max_epochs: int = MAX_PASSES) -> int:
    """Optimisation steps for ``"lora"`` / ``"full"``: ``config.steps``, capped at ``max_epochs`` passes over
    ``pairs`` training pairs (the ``gpu`` profile's 2,000 steps of 32 would be ~48 passes over 1,346 pairs)."""
    return capped_steps(config.steps, config.batch_size, pairs, "reward model", max_epochs)


def _train_with_trl(model, tokenizer, train, evaluation, config: RewardConfig, checkpoints: Path):
    import trl

    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        adapters = LoraConfig(
            task_type="SEQ_CLS",
            r=config.lora_rank,
            lora_alpha=2 * config.lora_rank,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            modules_to_save=["score"],
        )
        model = get_peft_model(model, adapters)
    steps = trl_steps(config, len(train))
    batches = batch_arguments(config.batch_size, config.micro_batch_size)
    with quiet_trl_renames():
        args = trl.RewardConfig(
            output_dir=str(checkpoints),
            max_steps=steps,
            **batches,
            per_device_eval_batch_size=batches["per_device_train_batch_size"],  # evaluated in the same micro-batches
            learning_rate=1e-4 if config.method == "lora" else 1e-5,
            lr_scheduler_type="constant",
            max_length=None,  # already truncated from the front; TRL would drop longer pairs instead
            **{
                **trl_cpu_safe_args(config.seed),
                "logging_steps": max(1, steps // 20),
                "save_strategy": "steps",  # checkpoints make an interrupted run resumable
            },
            save_steps=max(1, steps // 4),
            save_total_limit=2,
            eval_strategy="steps" if evaluation is not None else "no",
            eval_steps=max(1, steps // 4),
            data_seed=config.seed,
            dataloader_num_workers=0,
        )
    history = HistoryCallback()
    with quiet_trl_renames():
        trainer = trl.RewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            callbacks=[history],
        )
        has_checkpoint = any(checkpoints.glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    if config.method == "lora":
        model = model.merge_and_unload()
    return model, pd.DataFrame(history.rows)


# ------------------------------------------------------------------------------------ inspection


def cached_head_features(
    reward_model: RewardModel, pairs: Dataset, config: RewardConfig, checkpoints: str | os.PathLike, *, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The features φ(chosen) and φ(rejected) the ``"head"`` method fitted on, read back from the chunks
    :func:`train_reward_model` cached in ``checkpoints`` (``split`` is ``"train"`` or ``"eval"``, as it named them).

    Chunks that are missing are computed again with ``reward_model``'s backbone, which gives the same values.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r}: use 'train' (the training pairs) or 'eval' (eval_pairs).")
    encoded = tokenize_pairs(pairs, reward_model.tokenizer, config.max_length)
    chosen, rejected = (
        backbone_features(
            reward_model.model,
            encoded[f"{side}_ids"],
            reward_model.tokenizer.pad_token_id,
            batch_size=config.batch_size * 2,
            cache_dir=Path(checkpoints),
            description=f"{split}-{side}",
        )
        for side in ("chosen", "rejected")
    )
    return chosen, rejected


@torch.no_grad()
def reading_positions(reward_model: RewardModel, conversation: Messages, *, pad_to: int, last: int = 6) -> pd.DataFrame:
    """The last ``last`` tokens of ``conversation`` padded to ``pad_to`` tokens, as the reward model sees them in a
    batch: token, attention mask, where the reward is read, and the reward the head would give if read there.

    The model reads the rightmost token that is not ``pad_token_id`` (transformers' rule; the attention mask is not
    consulted), which with right padding and a pad token of its own is the last token the mask keeps: the
    ``<|im_end|>`` that closes the reply. Read at a padding position, or one token early (where a pad token equal to
    ``<|im_end|>`` would put it), it differs.
    """
    tokenizer, model = reward_model.tokenizer, reward_model.model
    ids = encode_conversation(tokenizer, conversation, reward_model.max_length)
    if pad_to < len(ids):
        raise ValueError(f"pad_to={pad_to} is shorter than the conversation's {len(ids)} tokens; pass at least that.")
    batch, mask = pad_sequences([ids], tokenizer.pad_token_id)
    width = max(pad_to, batch.shape[1])
    batch = torch.nn.functional.pad(batch, (0, width - batch.shape[1]), value=tokenizer.pad_token_id)
    mask = torch.nn.functional.pad(mask, (0, width - mask.shape[1]), value=0)
    hidden = model.base_model(input_ids=batch.to(model.device), attention_mask=mask.to(model.device))
    rewards = model.score(hidden.last_hidden_state)[0, :, 0].float().cpu().numpy()
    read_at = len(ids) - 1
    rows = []
    for position in range(max(0, len(ids) - last), width):
        token = int(batch[0, position])
        if position == read_at:
            note = "reward read here (<|im_end|>)"
        elif position == read_at - 1:
            note = "would be read here if pad = <|im_end|>"
        elif not mask[0, position]:
            note = "padding"
        else:
            note = ""
        rows.append(
            {
                "position": position,
                "token": token_label(tokenizer, token),
                "id": token,
                "attention mask": int(mask[0, position]),
                "reward if read here": float(rewards[position]),
                "": note,
            }
        )
    return pd.DataFrame(rows).set_index("position")


def seconds_per_pair(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: Dataset, config: RewardConfig, *, method: Method
) -> float:
    """Wall-clock seconds one training pair costs ``method`` on this machine, timed once on ``pairs`` (two or three
    do) with ``model``, a reward model (``load_model(..., task="reward")``): for ``"head"`` a forward pass of both
    conversations without gradients, paid once per pair; for ``"lora"`` (adapters added for the timing and removed
    again) and ``"full"`` a forward and backward pass of the Bradley–Terry loss, paid on every pass over the data.
    ``model`` is left as it was, in eval mode and without gradients."""
    if method not in ("head", "lora", "full"):
        raise ValueError(f"method={method!r}: use 'head', 'lora' or 'full'.")
    encoded = tokenize_pairs(pairs, tokenizer, config.max_length)
    ids, mask = pad_sequences(list(encoded["chosen_ids"]) + list(encoded["rejected_ids"]), tokenizer.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    trainable = {parameter: parameter.requires_grad for parameter in model.parameters()}
    model.requires_grad_(method == "full")
    timed = model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        adapters = LoraConfig(r=config.lora_rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        with warnings.catch_warnings():  # peft asks transformers a deprecated question; not the learner's concern
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            timed = get_peft_model(model, adapters)
    start = time.perf_counter()
    if method == "head":
        with torch.no_grad():
            model.base_model(input_ids=ids, attention_mask=mask)
    else:
        timed.train()
        rewards = timed(input_ids=ids, attention_mask=mask).logits[:, 0]
        chosen, rejected = rewards[: len(pairs)], rewards[len(pairs) :]
        (-torch.nn.functional.logsigmoid(chosen - rejected).mean()).backward()
    seconds = (time.perf_counter() - start) / len(pairs)
    if method == "lora":
        timed.unload()
    for parameter, flag in trainable.items():
        parameter.requires_grad_(flag)
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


def accuracy_by_length(margins, chosen_tokens, rejected_tokens, confidence: float = 0.95) -> pd.DataFrame:
    """Pairwise accuracy (margin > 0) separately where the chosen reply is shorter, longer, or as long as the
    rejected one, with Wilson intervals: a model that only learned "shorter wins" is right in the first group and
    wrong in the second."""
    margins, chosen_tokens, rejected_tokens = (np.asarray(a) for a in (margins, chosen_tokens, rejected_tokens))
    if not len(margins) == len(chosen_tokens) == len(rejected_tokens):
        raise ValueError(
            f"margins, chosen_tokens and rejected_tokens need one value per pair; got lengths {len(margins)}, "
            f"{len(chosen_tokens)} and {len(rejected_tokens)}."
        )
    groups = {
        "chosen is shorter": chosen_tokens < rejected_tokens,
        "chosen is longer": chosen_tokens > rejected_tokens,
        "same length": chosen_tokens == rejected_tokens,
    }
    rows = {}
    for name, members in groups.items():
        count, right = int(members.sum()), int((margins[members] > 0).sum())
        low, high = proportion_interval(right, count, confidence) if count else (float("nan"), float("nan"))
        rows[name] = {"pairs": count, "accuracy": right / count if count else float("nan"), "low": low, "high": high}
    return pd.DataFrame(rows).T.astype({"pairs": int})


# ------------------------------------------------------------------------------------------ plots


def plot_history(history: pd.DataFrame):
    """Training loss, and training and evaluation accuracy, against the optimisation step. A history of the
    "head" method's fit (it has an ``iterations`` column) plots the loss that fit minimised, Bradley–Terry plus the L2
    penalty, against the L-BFGS iterations run."""
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 3.5))
    head_fit = "iterations" in history
    x, x_label = ("iterations", "L-BFGS iterations") if head_fit else ("step", "step")
    rows = history.dropna(subset=["loss"]) if "loss" in history else history
    loss_axis.plot(rows[x], rows["loss"], marker=".")
    loss_name = "Bradley–Terry loss + ½λ‖w‖²" if head_fit else "Bradley–Terry loss"
    loss_axis.set(title=f"{loss_name} (training pairs)", xlabel=x_label, ylabel="loss")
    for column, label in (("accuracy", "training pairs"), ("eval_accuracy", "held-out pairs")):
        if column in history:
            points = history.dropna(subset=[column])
            accuracy_axis.plot(points[x], points[column], marker=".", label=label)
    accuracy_axis.axhline(0.5, color="k", linestyle="--", linewidth=1)
    accuracy_axis.set(title="Pairwise accuracy", xlabel=x_label, ylabel="accuracy", ylim=(0.4, 1.0))
    accuracy_axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_margins(before: np.ndarray, after: np.ndarray):
    """Histograms of r(chosen) − r(rejected) on held-out pairs, before and after training."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, margins, title in ((axes[0], before, "before training (fresh head)"), (axes[1], after, "after training")):
        axis.hist(margins, bins=30, color="tab:blue", alpha=0.8)
        axis.axvline(0, color="k", linewidth=1)
        share = ((margins > 0) + 0.5 * (margins == 0)).mean()
        axis.set(title=f"{title}: {share:.1%} of pairs > 0", xlabel="r(chosen) − r(rejected)", ylabel="pairs")
    figure.tight_layout()
    return figure
