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

from playbook.io import REPOSITORY_ROOT, check_folder_setting

PROFILE_ENV = "PLAYBOOK_PROFILE"
RUNS_ENV = "PLAYBOOK_RUNS"


@dataclass(frozen=True)
class Profile:
    """Every knob that differs between ``smoke``, ``cpu`` and ``gpu``. Counts, lengths and the few settings that
    must change with the hardware (how much of the model trains, and at which learning rate); everything else is a
    default of a trainer's config (:class:`playbook.reward.RewardConfig`, :class:`playbook.ppo.PPOConfig`,
    :class:`playbook.beyond_ppo.DPOConfig`, :class:`playbook.beyond_ppo.RLOOConfig`, :class:`playbook.sft.SFTConfig`),
    built with
    ``XConfig.from_profile(profile)``."""

    name: str
    # Generation used by the probe notebooks (01, 08): tokens per answer, and how many probes.
    max_new_tokens: int
    probe_limit: int
    # Preference data (03-07): hh-rlhf pairs to train on, pairs held out (never trained on), and how many held-out
    # prompts the RL notebooks answer before and after training.
    hh_train_pairs: int
    hh_eval_pairs: int
    eval_prompts: int
    # Reward-model training (05): how (see playbook.reward), tokens per conversation, pairs per step,
    # optimisation steps, backbone layers kept, LoRA rank.
    rm_method: str
    rm_max_length: int
    rm_batch_size: int
    rm_steps: int
    rm_layers: int
    rm_lora_rank: int
    # Supervised fine-tuning: optimisation steps of ppo_batch_size conversations, and the learning rate.
    sft_steps: int
    sft_learning_rate: float
    # Policy training (04, 06, 07): the top decoder layers of the policy and of PPO's value model that train (None:
    # every layer; the embeddings never do), and the prompt tokens kept (from the end) when sampling replies.
    policy_trainable_layers: int | None
    value_trainable_layers: int | None
    prompt_length: int
    # PPO (06): prompts per rollout and per gradient step, passes over each rollout, rollouts, tokens per sampled
    # reply, learning rate.
    ppo_batch_size: int
    ppo_mini_batch_size: int
    ppo_epochs: int
    ppo_steps: int
    ppo_response_length: int
    ppo_learning_rate: float
    # PPO: replies sampled from the start policy before the first step to fix its score normalisation
    ppo_scale_samples: int
    # DPO and RLOO (07): optimisation steps of ppo_batch_size pairs or replies, and the learning rate.
    rl_steps: int
    rl_learning_rate: float
    # Hallucination and calibration (08-10): questions evaluated per data set.
    eval_questions: int
    # DoLa (09): TruthfulQA questions scored for MC1/MC2/MC3 (each needs one forward pass per answer option).
    mc_questions: int
    # Next-token calibration (10): held-out hh-rlhf conversations whose chosen reply each model scores.
    calibration_texts: int
    # Evaluation and over-optimisation (08): gold-labelled pairs per proxy reward model, held-out prompts (their last
    # user turn) and sampled replies per prompt for best-of-n (the largest n), PPO steps against a proxy (per KL
    # coefficient). Sampling costs about 0.3 s per reply on the 2-core CPU, hence 24 × 16 there.
    overopt_proxy_pairs: tuple[int, ...]
    overopt_prompts: int
    overopt_samples: int
    overopt_ppo_steps: int
    # Timed checks (00's doctor, 10's DoLa speed): repeats of each timed step, whose median is reported.
    timing_repeats: int
    # Examples per forward and backward pass of the TRL trainers (reward model, SFT, DPO) on one device; a step's
    # batch is reached by gradient accumulation. None: a step's whole batch in one pass. Bounds a GPU's memory: on an
    # H200 the gpu profile's DPO step (64 pairs of <= 512 tokens) peaked at 70 GiB in one pass, 11 GiB in passes of
    # 8, with the same losses (benchmarks/README.md, session 17).
    micro_batch_size: int | None = None


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        max_new_tokens=16,
        probe_limit=3,
        hh_train_pairs=16,
        hh_eval_pairs=16,
        eval_prompts=2,
        rm_method="head",
        rm_max_length=64,
        rm_batch_size=4,
        rm_steps=20,
        rm_layers=18,
        rm_lora_rank=4,
        sft_steps=2,
        sft_learning_rate=2e-5,
        policy_trainable_layers=6,
        value_trainable_layers=2,
        prompt_length=64,
        ppo_batch_size=2,
        ppo_mini_batch_size=1,
        ppo_epochs=1,  # smoke checks that the code runs: one pass costs a quarter of four
        ppo_steps=2,
        ppo_response_length=8,
        ppo_learning_rate=3e-5,
        ppo_scale_samples=2,
        rl_steps=2,
        rl_learning_rate=2e-5,
        eval_questions=4,
        mc_questions=2,
        calibration_texts=4,
        overopt_proxy_pairs=(4, 8),
        overopt_prompts=2,
        overopt_samples=4,
        overopt_ppo_steps=2,
        timing_repeats=1,
    ),
    # The course's measured run on a 2-core laptop CPU (README, benchmarks/README.md).
    "cpu": Profile(
        name="cpu",
        max_new_tokens=64,
        probe_limit=1_000,
        hh_train_pairs=1_494,
        hh_eval_pairs=300,
        eval_prompts=150,
        rm_method="head",
        rm_max_length=128,
        rm_batch_size=8,
        rm_steps=200,
        rm_layers=18,
        rm_lora_rank=8,
        sft_steps=20,
        sft_learning_rate=2e-5,
        policy_trainable_layers=6,
        value_trainable_layers=2,
        prompt_length=64,
        ppo_batch_size=8,
        ppo_mini_batch_size=4,
        ppo_epochs=4,
        ppo_steps=30,
        ppo_response_length=24,
        ppo_learning_rate=3e-5,
        ppo_scale_samples=64,
        rl_steps=20,
        rl_learning_rate=2e-5,
        eval_questions=150,
        mc_questions=90,
        calibration_texts=60,
        overopt_proxy_pairs=(100, 300, 1_000),
        overopt_prompts=24,
        overopt_samples=16,
        overopt_ppo_steps=10,
        timing_repeats=3,
    ),
    # Sized for one GPU from the published reproductions (SFT, reward and PPO's step time measured on one H200 with
    # the course's data: benchmarks/README.md, "The gpu profile"); every layer trains, so the
    # learning rates are those of full fine-tuning (Huang et al. 2024 used 3e-6 for PPO on 1B-6.9B models;
    # InstructGPT about 1e-5 for its 1.3B policy), with larger batches and longer replies.
    "gpu": Profile(
        name="gpu",
        max_new_tokens=128,
        probe_limit=1_000,
        hh_train_pairs=20_000,
        hh_eval_pairs=2_000,
        eval_prompts=500,
        rm_method="lora",
        rm_max_length=512,
        rm_batch_size=32,
        rm_steps=2_000,
        rm_layers=30,
        rm_lora_rank=16,
        sft_steps=500,
        sft_learning_rate=1e-5,
        policy_trainable_layers=None,
        value_trainable_layers=None,
        prompt_length=256,
        ppo_batch_size=64,
        ppo_mini_batch_size=16,
        ppo_epochs=4,
        # measured on an H200 from the cpu profile's SFT and reward models (benchmarks/README.md, session 20): +0.78
        # to +0.97 sd of held-out reward in 20 steps on three seeds, at 4.0-4.7 nats of KL per reply and climbing
        ppo_steps=20,
        ppo_response_length=64,
        ppo_learning_rate=1e-5,
        ppo_scale_samples=256,
        rl_steps=200,
        rl_learning_rate=5e-6,
        eval_questions=817,
        mc_questions=817,
        calibration_texts=1_000,
        overopt_proxy_pairs=(300, 1_000, 10_000),
        overopt_prompts=256,
        overopt_samples=128,
        overopt_ppo_steps=100,
        timing_repeats=3,
        micro_batch_size=8,
    ),
}


def repository_root() -> Path:
    """The folder holding ``playbook/`` and ``notebooks/`` (the package is installed in editable mode)."""
    return REPOSITORY_ROOT


def runs_dir(profile: Profile | str | None = None) -> Path:
    """Where trained models and run outputs go: ``$PLAYBOOK_RUNS`` (else ``runs/`` at the repository root), in a
    folder per profile (``runs/cpu/reward_model``), so a run in one profile never replaces a model trained in
    another. ``profile`` defaults to the current one (:func:`get_profile`)."""
    name = profile.name if isinstance(profile, Profile) else get_profile(profile).name
    configured = os.environ.get(RUNS_ENV)
    if configured:
        check_folder_setting(Path(configured), RUNS_ENV)
    return Path(configured or repository_root() / "runs") / name


def default_profile_name() -> str:
    """``gpu`` when CUDA is available, else ``cpu``."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None, **overrides) -> Profile:
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


class TrainerConfig:
    """What every trainer's config shares: ``from_profile`` and argument checks that name the field.

    A subclass is a frozen dataclass whose defaults are the course's measured cpu run; :meth:`profile_values`
    says which fields a profile sets, and ``overrides`` change any field for one experiment.
    """

    @classmethod
    def profile_values(cls, profile: Profile) -> dict:
        """The fields a profile sets (the rest keep their defaults)."""
        return {}

    @classmethod
    def from_profile(cls, profile: Profile | str | None = None, **overrides):
        """The config for ``profile`` (a :class:`Profile`, its name, or ``None`` for the current one)."""
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"Unknown {cls.__name__} field(s) {unknown}; known: {sorted(f.name for f in fields(cls))}.")
        return cls(**{**cls.profile_values(profile), **overrides})

    def require(self, condition: bool, field: str, rule: str) -> None:
        """Raise ``ValueError`` naming the field, its value and the rule it breaks, unless ``condition``."""
        if not condition:
            raise ValueError(f"{type(self).__name__}.{field}={getattr(self, field)!r}: {rule}.")

    def require_positive(self, *names: str) -> None:
        for name in names:
            self.require(getattr(self, name) > 0, name, "must be positive")

    def require_micro_batch(self) -> None:
        """``micro_batch_size``: ``None``, or a positive number that divides ``batch_size``."""
        micro = self.micro_batch_size
        self.require(
            micro is None or (micro > 0 and self.batch_size % micro == 0),
            "micro_batch_size",
            f"must be None, or positive and divide batch_size={self.batch_size}",
        )

    def require_layer_count(self, *names: str) -> None:
        """A number of top decoder layers to train: positive, or ``None`` for every layer."""
        for name in names:
            self.require(getattr(self, name) is None or getattr(self, name) > 0, name, "must be positive, or None")
