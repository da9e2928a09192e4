"""What the benchmarks share: their own output folder (never a learner's ``runs/``) and the reward model they score
with, trained exactly as notebook 05 trains it (the course split, the cpu profile's settings)."""

from __future__ import annotations

from playbook.config import get_profile
from playbook.data import hh_rlhf_split
from playbook.io import REPOSITORY_ROOT
from playbook.reward import RewardConfig, RewardModel, load_or_train_reward_model

BENCHMARK_DIR = REPOSITORY_ROOT / "build" / "benchmarks"


def course_reward_model() -> RewardModel:
    """Notebook 05's reward model (cpu profile), trained once into ``build/benchmarks/reward_model``."""
    profile = get_profile("cpu")
    pairs = hh_rlhf_split(profile)["train"]
    return load_or_train_reward_model(pairs, RewardConfig.from_profile(profile), folder=BENCHMARK_DIR / "reward_model")
