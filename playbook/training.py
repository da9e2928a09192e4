"""What every trainer shares: the one result type they return, and the settings and logging glue of the TRL
trainers (DPO, RLOO, the reward model's LoRA and full fine-tuning)."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import PartialState
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

MAX_PASSES = 3
"""Passes over a training set at most (reward model, SFT, DPO): more only memorises a small set. The gpu profile's
step counts assume the whole of hh-rlhf; on the course's split they would repeat it 10 to 48 times."""


def capped_steps(steps: int, batch_size: int, examples: int, what: str, max_passes: int = MAX_PASSES) -> int:
    """``steps`` optimisation steps of ``batch_size`` examples, capped at ``max_passes`` passes over ``examples``
    (logged as a warning naming ``what`` when the cap applies)."""
    cap = max_passes * math.ceil(examples / batch_size)
    if steps > cap:
        logger.warning(
            "%s: %d steps of %d would be %.0f passes over %d examples; training %d steps (%d passes).",
            what,
            steps,
            batch_size,
            steps * batch_size / examples,
            examples,
            cap,
            max_passes,
        )
    return min(steps, cap)


def batch_arguments(batch_size: int, micro_batch_size: int | None) -> dict[str, int]:
    """TRL's batch arguments for steps of ``batch_size`` examples taken ``micro_batch_size`` at a time (gradient
    accumulation: the same mean gradient, less memory); ``None`` takes the whole batch in one pass."""
    micro = batch_size if micro_batch_size is None else micro_batch_size
    if micro <= 0 or batch_size % micro:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be positive and divide batch_size={batch_size}.")
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": batch_size // micro}


@dataclass
class TrainResult:
    """What every training entry point returns.

    ``model``: the trained model (a policy, or a :class:`playbook.reward.RewardModel`); ``history``: one row per
    logged step; ``seconds``: wall time of training; ``output_dir``: the folder it was saved to (``None`` when not
    saved); ``details``: measurements particular to the method (for example the reward model's held-out margins).
    """

    model: Any
    history: pd.DataFrame
    seconds: float
    output_dir: Path | None
    details: dict[str, Any] = field(default_factory=dict)


def trl_cpu_safe_args(seed: int) -> dict[str, Any]:
    """Arguments every TRL config of the course gets: float32 (exact on a CPU), no gradient checkpointing (it only
    trades time for memory), no checkpoints mid-run, no experiment trackers, a log line every step."""
    return {
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": False,
        "seed": seed,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning only helps copies to a GPU
        # Under `accelerate launch` on a machine without CUDA, transformers sets up several CPU processes (gloo)
        # only when told to use the CPU; otherwise every process would train alone on all the data.
        "use_cpu": not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
    }


@contextmanager
def quiet_trl_renames() -> Iterator[None]:
    """TRL 1.x configs still set `gradient_checkpointing`, which transformers 5 renamed; its FutureWarnings say
    nothing a learner can act on (and print library paths into notebooks), so they are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
        yield


class HistoryCallback(TrainerCallback):
    """Collects every log line a TRL trainer emits into rows of a table (the run's summary line left out), each with
    ``seconds``: the wall time since the previous log line, or since training began for the first. The course's
    trainers log every step, so that is the step's time; the first step's also holds what the trainer does once
    when its loop starts."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._last_log = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_log = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        if logs and "train_runtime" not in logs:
            self.rows.append({"step": state.global_step, **logs, "seconds": now - self._last_log})
        self._last_log = now


def timed(train: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``train()`` with TRL's rename warnings silenced; its result and the wall time in seconds."""
    started = time.perf_counter()
    with quiet_trl_renames():
        result = train()
    return result, time.perf_counter() - started


def scratch_dir(prefix: str) -> str:
    """A temporary folder for a TRL trainer's ``output_dir`` (TRL requires one; the course saves its models itself),
    removed when the Python process exits, so runs do not pile up empty folders in the system's temp directory."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def process_state() -> PartialState:
    """Which process this is and how many there are (one without ``accelerate launch``/``torchrun``). On a machine
    without CUDA the processes talk over gloo on the CPU."""
    return PartialState(cpu=not torch.cuda.is_available())


def claim_checkpoint_dir(folder: Path, fingerprint: str, resume: bool) -> None:
    """Make ``folder`` (``<output_dir>-checkpoints``) this run's, checked by its fingerprint; an unrelated or
    unwanted one is renamed (``...-set-aside-<time>``), never deleted."""
    stamp = folder / "run.json"
    if folder.exists() and (not resume or not stamp.is_file() or json.loads(stamp.read_text()) != fingerprint):
        folder.rename(folder.with_name(f"{folder.name}-set-aside-{time.strftime('%Y%m%d-%H%M%S')}"))
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(fingerprint))
