"""PPO settings vs held-out gain and KL on this CPU, one fresh run per setting, printed as one table.

.venv/bin/python benchmarks/ppo_tradeoff.py [--steps 20] [--held-out 32]

Each run starts from the embedded SFT model with notebook 05's settings (cpu profile: 8 replies of <= 24 tokens per
step, top 6 policy layers, 4 PPO epochs) and changes one thing: the learning rate or the KL coefficient β. The gain
is the held-out reward-model score in standard deviations of the SFT model's scores on the same prompts.
"""

from __future__ import annotations

import argparse

import pandas as pd

from playbook.config import get_profile
from playbook.data import load_hh_rlhf
from playbook.models import load_model
from playbook.ppo import CPU_SETTINGS, PPOConfig, PPOTrainer, score_spread
from playbook.reward import RewardModel, default_reward_dir

VARIANTS = {
    "notebook 05 (lr 2e-5, β 0.1)": {},
    "lr 3e-5": {"learning_rate": 3e-5},
    "β 0.01": {"kl_coef": 0.01},
    "β 0.5": {"kl_coef": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--only", nargs="*", help="names of the variants to run (default: all)")
    args = parser.parse_args()
    profile = get_profile("cpu")
    pairs = load_hh_rlhf("harmless-base")
    split = pairs.train_test_split(test_size=min(profile.hh_eval_pairs, len(pairs) // 4), seed=0)
    train_prompts = [row["prompt"] for row in split["train"]]
    held_out = [row["prompt"] for row in split["test"]][: args.held_out]
    reward_model = RewardModel.load()
    reference, tokenizer = load_model()
    rows, baseline = {}, None
    for name, change in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        policy, _ = load_model()
        value, _ = load_model(default_reward_dir(), task="reward")
        config = PPOConfig.from_profile(profile, **{**CPU_SETTINGS, **change, "steps": args.steps})
        trainer = PPOTrainer(policy, reference, reward_model, value, tokenizer, train_prompts, config)
        if baseline is None:
            baseline = score_spread(reward_model.score_batch(held_out, trainer.respond(held_out)))
        history = trainer.train()
        mean_after, _ = score_spread(reward_model.score_batch(held_out, trainer.respond(held_out)))
        rows[name] = {
            "held-out gain (sd)": (mean_after - baseline[0]) / baseline[1],
            "final KL (nats)": history["kl"].tail(5).mean(),
            "PPO minutes": history["seconds"].sum() / 60,
        }
        print(name, rows[name], flush=True)
    print(f"\n{args.steps} steps, {len(held_out)} held-out prompts (SFT mean {baseline[0]:.3f}, sd {baseline[1]:.3f})")
    print(pd.DataFrame(rows).T.round(2).to_string())


if __name__ == "__main__":
    main()
