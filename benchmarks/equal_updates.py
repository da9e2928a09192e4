"""DPO, RLOO and PPO at equal numbers of optimizer updates: held-out gain with its interval, KL and minutes.

.venv/bin/python benchmarks/equal_updates.py [--methods dpo rloo ppo] [--updates 240] [--seeds 0]
                                             [--held-out 150]

Notebook 07 compares notebook 06's PPO policy, 240 Adam updates (30 steps x 4 epochs x 2 minibatches), with DPO and
RLOO at 20 updates each: on the 2-core CPU one DPO or RLOO update took 9 to 20 s depending on the hour (notebook 07
prints its own run's), so PPO's 240 would take 36 to 80 minutes apiece. This script gives every method the same
number of updates, everything else as the notebooks run it (cpu profile, from notebook 04's SFT model, trained as
the notebook trains it into build/benchmarks/): DPO and RLOO take `updates` optimisation steps, PPO takes updates /
(epochs x minibatches) rollout steps. Each run's greedy replies to the same held-out prompts are scored by notebook
05's reward model (`playbook.beyond_ppo.evaluate_policies`, the SFT model as baseline): gain in standard deviations
of the SFT model's scores with the paired 95% bootstrap interval, exact KL to the SFT model along the policy's
replies, and the training minutes. One JSON line per run, then a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from common import course_reward_model, course_sft_model
from datasets import DatasetDict
from transformers import PreTrainedModel

from playbook.beyond_ppo import DPOConfig, RLOOConfig, evaluate_policies, train_dpo, train_rloo
from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.ppo import PPOConfig, PPOTrainer
from playbook.reward import RewardModel

PPO_UPDATES_PER_STEP = PPOConfig.from_profile("cpu").optimizer_updates // PPOConfig.from_profile("cpu").steps


def ends(history: pd.DataFrame, column: str, window: int = 20) -> dict[str, float]:
    """The mean of a logged column over the first and the last `window` steps: how far training moved it."""
    values = history[column].astype(float)
    return {
        f"{column} first {window}": values.head(window).mean(),
        f"{column} last {window}": values.tail(window).mean(),
    }


def train(
    method: str, updates: int, seed: int, split: DatasetDict, reward_model: RewardModel, start: Path
) -> tuple[PreTrainedModel, float, dict[str, float]]:
    """One run of `method` for `updates` optimizer updates: the trained policy, its minutes and its logged curve's
    ends (DPO's loss, RLOO's sampled-reply reward, PPO's KL per reply)."""
    policy, reference, tokenizer = load_policy_and_reference(start)
    prompts = [row["prompt"] for row in split["train"]]
    if method == "dpo":
        config = DPOConfig.from_profile("cpu", steps=updates, seed=seed)
        result = train_dpo(policy, reference, tokenizer, split["train"].shuffle(seed=seed), config)
        return result.model, result.seconds / 60, ends(result.history, "loss")
    if method == "rloo":
        del reference  # TRL's RLOO builds its reference from the policy's folder
        config = RLOOConfig.from_profile("cpu", steps=updates, seed=seed)
        result = train_rloo(policy, None, tokenizer, prompts, reward_model, config)
        return result.model, result.seconds / 60, ends(result.history, "reward")
    config = PPOConfig.from_profile("cpu", steps=updates // PPO_UPDATES_PER_STEP, seed=seed)
    result = PPOTrainer(policy, reference, tokenizer, prompts, reward_model, config).train()
    return result.model, result.history["seconds"].sum() / 60, ends(result.history, "kl", window=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=["dpo", "rloo", "ppo"], default=["dpo", "rloo", "ppo"])
    parser.add_argument(
        "--updates",
        type=int,
        nargs="+",
        default=[240],
        help="optimizer updates per run (PPO: a multiple of its updates per step)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--held-out", type=int, default=150, help="held-out prompts scored (notebook 07: 32)")
    args = parser.parse_args()
    if "ppo" in args.methods and any(updates % PPO_UPDATES_PER_STEP for updates in args.updates):
        parser.error(f"--updates: PPO takes {PPO_UPDATES_PER_STEP} updates per rollout step; give multiples of it")
    start = course_sft_model()
    split = hh_rlhf_split("cpu")
    held_out = [row["prompt"] for row in split["test"]][: args.held_out]
    reward_model = course_reward_model()
    sft, tokenizer = load_model(start)
    rows = []
    for method in args.methods:
        for updates in args.updates:
            for seed in args.seeds:
                policy, minutes, last = train(method, updates, seed, split, reward_model, start)
                table, _ = evaluate_policies(
                    {"SFT": sft, method: policy},
                    tokenizer,
                    held_out,
                    reward_model,
                    max_new_tokens=PPOConfig.from_profile("cpu").response_length,
                    baseline="SFT",
                )
                result = table.loc[method]
                rows.append(
                    {
                        "method": method,
                        "updates": updates,
                        "seed": seed,
                        "gain": result["gain (sd of baseline)"],
                        "low": result["gain 95% low"],
                        "high": result["gain 95% high"],
                        "wilcoxon p": result["Wilcoxon p"],
                        "kl": result["KL to baseline (nats/reply)"],
                        "minutes": minutes,
                    }
                    | last
                )
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{len(held_out)} held-out prompts, gain in sd of the SFT model's scores, KL in nats per reply")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
