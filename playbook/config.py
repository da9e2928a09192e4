"""Run profiles: one switch, ``PLAYBOOK_PROFILE``, read by every notebook and by the tests.

``smoke`` runs the very same code paths as ``cpu`` and ``gpu`` with the smallest data and step counts (for
tests and CI), ``cpu`` is what a laptop finishes in minutes while still showing a real effect, and ``gpu``
scales up. Code never branches on the profile name: it reads the numbers of a :class:`Profile`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from playbook.io import REPOSITORY_ROOT

PROFILE_ENV = "PLAYBOOK_PROFILE"


@dataclass(frozen=True)
class Profile:
    """The knobs that size the course's experiments. Every field is a count or a length."""

    name: str
    # Generation used by the probe notebooks (01, 07): tokens per answer, and how many probes.
    max_new_tokens: int
    probe_limit: int
    # Preference data (03, 04): how many hh-rlhf pairs to train and evaluate a reward model on.
    hh_train_pairs: int
    hh_eval_pairs: int
    # Reward-model training (04): how (see playbook.reward), tokens per conversation, pairs per step,
    # optimisation steps, backbone layers kept, LoRA rank.
    rm_method: str
    rm_max_length: int
    rm_batch_size: int
    rm_steps: int
    rm_layers: int
    rm_lora_rank: int
    # PPO (05, 06): prompts per rollout batch, PPO steps, tokens per sampled response.
    ppo_batch_size: int
    ppo_steps: int
    ppo_response_length: int
    # DPO and RLOO (06): optimisation steps of ppo_batch_size pairs or replies (about PPO's wall time, as PPO's
    # steps run the frozen layers only once).
    rl_steps: int
    # Hallucination and calibration (07-09): questions evaluated per data set.
    eval_questions: int
    # DoLa (08): TruthfulQA questions scored for MC1/MC2/MC3 (each needs one forward pass per answer option).
    mc_questions: int


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        max_new_tokens=16,
        probe_limit=3,
        hh_train_pairs=16,
        hh_eval_pairs=16,
        rm_method="head",
        rm_max_length=64,
        rm_batch_size=4,
        rm_steps=20,
        rm_layers=18,
        rm_lora_rank=4,
        ppo_batch_size=2,
        ppo_steps=2,
        rl_steps=2,
        ppo_response_length=8,
        eval_questions=8,
        mc_questions=3,
    ),
    "cpu": Profile(
        name="cpu",
        max_new_tokens=64,
        probe_limit=1_000,
        hh_train_pairs=1_494,
        hh_eval_pairs=300,
        rm_method="head",
        rm_max_length=128,
        rm_batch_size=8,
        rm_steps=200,
        rm_layers=18,
        rm_lora_rank=8,
        ppo_batch_size=8,
        ppo_steps=30,
        rl_steps=20,
        ppo_response_length=24,
        eval_questions=150,
        mc_questions=100,
    ),
    "gpu": Profile(
        name="gpu",
        max_new_tokens=128,
        probe_limit=1_000,
        hh_train_pairs=20_000,
        hh_eval_pairs=2_000,
        rm_method="lora",
        rm_max_length=512,
        rm_batch_size=32,
        rm_steps=2_000,
        rm_layers=30,
        rm_lora_rank=16,
        ppo_batch_size=64,
        ppo_steps=200,
        rl_steps=200,
        ppo_response_length=64,
        eval_questions=817,
        mc_questions=817,
    ),
}


def repository_root() -> Path:
    """The folder holding ``playbook/`` and ``notebooks/`` (the package is installed in editable mode)."""
    return REPOSITORY_ROOT


def runs_dir() -> Path:
    """Where trained models and run outputs go: ``$PLAYBOOK_RUNS``, else ``runs/`` at the repository root."""
    return Path(os.environ.get("PLAYBOOK_RUNS") or repository_root() / "runs")


def default_profile_name() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None, **overrides: int) -> Profile:
    """The profile called ``name``, else the one ``PLAYBOOK_PROFILE`` names, else the default.

    Keyword overrides replace single knobs (``get_profile("cpu", rm_steps=10)``) for a quick experiment.
    """
    chosen = name or os.environ.get(PROFILE_ENV) or default_profile_name()
    key = chosen.strip().lower()
    if key not in PROFILES:
        source = f"{PROFILE_ENV}={chosen!r}" if name is None else f"profile {chosen!r}"
        raise ValueError(f"Unknown {source}: choose one of {', '.join(PROFILES)}.")
    known = {f.name for f in fields(Profile)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"Unknown profile knob(s) {unknown}; known knobs: {sorted(known)}.")
    return replace(PROFILES[key], **overrides)
