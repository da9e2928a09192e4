"""DPO, RLOO and PPO at equal numbers of optimizer updates: held-out gain with its interval, KL and minutes.

.venv/bin/python benchmarks/equal_updates.py [--methods dpo rloo ppo] [--updates 20 240] [--seeds 0]
                                             [--held-out 150]

Notebook 07 compares notebook 06's PPO policy, 240 Adam updates (30 steps x 4 epochs x 2 minibatches), with DPO and
RLOO at 20 updates each: on this 2-core CPU one DPO or RLOO update costs ~20 s, so PPO's 240 would take ~80 minutes
apiece. This script gives every method the same number of updates, everything else as the notebooks run it (cpu
profile, from notebook 04's SFT model, trained as the notebook trains it into build/benchmarks/): DPO and RLOO take
`updates` optimisation steps, PPO takes updates / (epochs x minibatches) rollout steps. Each run's greedy replies to
the same held-out prompts are scored by notebook 05's reward model (`playbook.beyond_ppo.evaluate_policies`, the SFT
model as baseline): gain in standard deviations of the SFT model's scores with the paired 95% bootstrap interval,
exact KL to the SFT model along the policy's replies, and the training minutes. One JSON line per run, then a table.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd
from common import course_reward_model, course_sft_model

from playbook.beyond_ppo import DPOConfig, RLOOConfig, evaluate_policies, train_dpo, train_rloo
from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.ppo import PPOConfig, PPOTrainer


def train(method: str, updates: int, seed: int, split, reward_model, start) -> tuple[object, float, dict]:
    """One run of `method` for `updates` optimizer updates: the trained policy, its minutes and a last logged value."""
    policy, reference, tokenizer = load_policy_and_reference(start)
    prompts = [row["prompt"] for row in split["train"]]
    if method == "dpo":
        config = DPOConfig.from_profile("cpu", steps=updates, seed=seed)
        result = train_dpo(policy, reference, tokenizer, split["train"].shuffle(seed=seed), config)
        return result.model, result.seconds / 60, {"last loss": float(result.history["loss"].iloc[-1])}
    if method == "rloo":
        del reference  # TRL's RLOO builds its reference from the policy's folder
        config = RLOOConfig.from_profile("cpu", steps=updates, seed=seed)
        result = train_rloo(policy, None, tokenizer, prompts, reward_model, config)
        return result.model, result.seconds / 60, {"last reward": float(result.history["reward"].tail(10).mean())}
    per_step = PPOConfig.from_profile("cpu").optimizer_updates // PPOConfig.from_profile("cpu").steps
    if updates % per_step:
        raise SystemExit(f"--updates {updates}: PPO takes {per_step} updates per rollout step; pick a multiple")
    config = PPOConfig.from_profile("cpu", steps=updates // per_step, seed=seed)
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, reward_model, config)
    history = trainer.train(config.steps).history
    return trainer.policy, history["seconds"].sum() / 60, {"last kl": float(history["kl"].tail(5).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=["dpo", "rloo", "ppo"], default=["dpo", "rloo", "ppo"])
    parser.add_argument("--updates", type=int, nargs="+", default=[20, 240], help="optimizer updates per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--held-out", type=int, default=150, help="held-out prompts scored (notebook 07: 32)")
    args = parser.parse_args()
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
