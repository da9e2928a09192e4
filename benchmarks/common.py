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
REAL_DATA_PAIRS = 1_000  # the course split's training pairs are ~1,350; the bundled sample has a dozen


def course_training_pairs():
    """The cpu profile's hh-rlhf training pairs; stops with what to do when only the bundled sample is found, since
    a model trained on a dozen pairs would make every number a benchmark prints meaningless."""
    pairs = hh_rlhf_split(get_profile("cpu"))["train"]
    if len(pairs) < REAL_DATA_PAIRS:
        raise SystemExit(
            f"benchmarks: only {len(pairs)} hh-rlhf training pairs (the bundled sample). Point PLAYBOOK_DATA_DIR at "
            "the real data (e.g. PLAYBOOK_DATA_DIR=../shared/data, see data/README.md) and run again."
        )
    return pairs


def course_reward_model() -> RewardModel:
    """Notebook 05's reward model (cpu profile), trained once into ``build/benchmarks/reward_model``."""
    profile = get_profile("cpu")
    pairs = course_training_pairs()
    return load_or_train_reward_model(pairs, RewardConfig.from_profile(profile), folder=BENCHMARK_DIR / "reward_model")


def course_sft_model() -> Path:
    """The folder of notebook 04's SFT model (cpu profile), trained once into ``build/benchmarks/sft_model``."""
    course_training_pairs()
    return load_or_train_sft_model("cpu", folder=BENCHMARK_DIR / "sft_model")
