"""What the benchmarks share: their own output folder (never a learner's ``runs/``), the reward model they score
with and the SFT model PPO starts from, trained exactly as notebooks 05 and 04 train them (the course split, the cpu
profile's settings)."""

from __future__ import annotations

from pathlib import Path

from playbook.config import get_profile
from playbook.data import hh_rlhf_split
from playbook.io import REPOSITORY_ROOT
from playbook.reward import RewardConfig, RewardModel, load_or_train_reward_model
from playbook.sft import load_or_train_sft_model

BENCHMARK_DIR = REPOSITORY_ROOT / "build" / "benchmarks"


def course_reward_model() -> RewardModel:
    """Notebook 05's reward model (cpu profile), trained once into ``build/benchmarks/reward_model``."""
    profile = get_profile("cpu")
    pairs = hh_rlhf_split(profile)["train"]
    return load_or_train_reward_model(pairs, RewardConfig.from_profile(profile), folder=BENCHMARK_DIR / "reward_model")


def course_sft_model() -> Path:
    """The folder of notebook 04's SFT model (cpu profile), trained once into ``build/benchmarks/sft_model``."""
    return load_or_train_sft_model("cpu", folder=BENCHMARK_DIR / "sft_model")
