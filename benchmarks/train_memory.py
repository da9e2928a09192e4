"""Peak GPU memory of the TRL trainers' steps, one pass per step against micro-batches, side by side in one run.

.venv/bin/python benchmarks/train_memory.py [--profile gpu] [--micro-batches 8 none] [--steps 2]

Trains DPO and the reward model for a few steps from the embedded model on the profile's training pairs, once per
micro-batch size ("none": the step's whole batch in one pass), and prints each run's peak
`torch.cuda.max_memory_allocated`, its seconds and its logged losses (equal both ways: the micro-batches accumulate
the same gradient). On a machine without CUDA the peak reads nan. Writes nothing into runs/.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from functools import partial

import torch
from datasets import Dataset

from playbook.beyond_ppo import DPOConfig, train_dpo
from playbook.config import Profile, get_profile
from playbook.data import hh_rlhf_split
from playbook.models import load_model
from playbook.reward import RewardConfig, train_reward_model
from playbook.training import TrainResult


def measure(label: str, run: Callable[[], TrainResult]) -> None:
    """Print the peak GPU memory, seconds and losses of ``run`` (or that it ran out of memory)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        losses = run().history["loss"].dropna().round(4).tolist()
    except torch.OutOfMemoryError as error:
        losses = f"out of memory: {str(error)[:90]}"
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    print(f"{label}: peak {peak:.1f} GiB, {time.perf_counter() - start:.1f} s, loss {losses}", flush=True)


def dpo_steps(profile: Profile, pairs: Dataset, steps: int, micro_batch_size: int | None) -> TrainResult:
    policy, tokenizer = load_model()
    reference, _ = load_model()
    config = DPOConfig.from_profile(profile, steps=steps, micro_batch_size=micro_batch_size)
    return train_dpo(policy, reference.eval(), tokenizer, pairs, config)


def reward_steps(profile: Profile, pairs: Dataset, steps: int, micro_batch_size: int | None) -> TrainResult:
    config = RewardConfig.from_profile(profile, steps=steps, micro_batch_size=micro_batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        return train_reward_model(pairs, config, output_dir=f"{scratch}/reward_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--micro-batches", nargs="+", default=["8", "none"], help='sizes, or "none" for one pass')
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    profile = get_profile(args.profile)
    pairs = hh_rlhf_split(profile)["train"].shuffle(seed=0)  # as `python -m playbook.pipeline dpo` shuffles them
    for micro in [None if size == "none" else int(size) for size in args.micro_batches]:
        measure(f"DPO, micro-batch {micro}", partial(dpo_steps, profile, pairs, args.steps, micro))
        measure(
            f"reward model ({profile.rm_method}), micro-batch {micro}",
            partial(reward_steps, profile, pairs, args.steps, micro),
        )


if __name__ == "__main__":
    main()
