"""PPO settings vs held-out gain and KL on this CPU: fresh runs per setting and seed, printed as one table.

.venv/bin/python benchmarks/ppo_tradeoff.py [--checkpoints 20 30] [--held-out 150] [--seeds 0 1 2] [--only NAME ...]
                                          [--start sft|embedded] [--column-ranges]
                                          [--steps-csv PATH] [--profile cpu|gpu]

Each run starts from notebook 04's SFT model (trained as notebook 04 does, into build/benchmarks/; ``--start
embedded``: from the embedded model, as the course did before it had an SFT notebook) with notebook 06's settings
(PPOConfig's defaults, the cpu profile: 8 replies of <= 24 tokens per step, top 6 policy layers, 4 PPO epochs),
is scored by notebook 05's reward model (trained as
notebook 05 does, into build/benchmarks/), and changes one thing. The gain is the held-out reward-model score of
greedy replies after each checkpoint's number of steps, in standard deviations of the starting model's scores on the
same prompts; the KL is the mean over the last 5 steps, in nats per reply. Several seeds (prompt order and sampling)
show how reliable a setting is: the table gives the mean and the worst gain over them. ``--profile gpu`` starts each
variant from the gpu profile's PPO settings instead (every layer training, 64 replies of <= 64 tokens per step), with
the same cpu-profile SFT model, reward model and held-out prompts, so the two profiles' PPO compare on one yardstick.
"""

from __future__ import annotations

import argparse

import pandas as pd
from common import course_reward_model, course_sft_model

from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.ppo import PPOConfig, PPOTrainer, score_spread

VARIANTS = {
    "notebook 06 (lr 3e-5, β 0.1)": {},
    "raw scores, uncalibrated value, lr 2e-5": {
        "normalize_scores": False,
        "calibrate_value": False,
        "zero_value_head": False,
        "learning_rate": 2e-5,
    },
    "raw scores, calibrated value, lr 2e-5": {
        "normalize_scores": False,
        "zero_value_head": False,
        "learning_rate": 2e-5,
    },
    "lr 2e-5": {"learning_rate": 2e-5},
    "β 0.3": {"kl_coef": 0.3},
    "lr 5e-5, β 0.3": {"learning_rate": 5e-5, "kl_coef": 0.3},
    "GAE λ 1 (no bootstrapping from the value model)": {"lam": 1.0},
    "replies of <= 16 tokens": {"response_length": 16},
    "16 replies, 2 epochs": {"batch_size": 16, "mini_batch_size": 8, "ppo_epochs": 2},
    "16 replies, 4 epochs": {"batch_size": 16, "mini_batch_size": 8},
    "16 replies, 4 epochs, lr 2e-5": {"batch_size": 16, "mini_batch_size": 8, "learning_rate": 2e-5},
    "16 replies, 4 epochs, lr 2e-5, β 0.2": {
        "batch_size": 16,
        "mini_batch_size": 8,
        "learning_rate": 2e-5,
        "kl_coef": 0.2,
    },
    "16 replies, 4 epochs, lr 2e-5, β 0.3": {
        "batch_size": 16,
        "mini_batch_size": 8,
        "learning_rate": 2e-5,
        "kl_coef": 0.3,
    },
    "32 replies, 4 epochs, lr 2e-5": {"batch_size": 32, "mini_batch_size": 16, "learning_rate": 2e-5},
    "32 replies, 4 epochs, lr 3e-5": {"batch_size": 32, "mini_batch_size": 16},
    "lr 5e-5": {"learning_rate": 5e-5},
    "lr 5e-5, 2 epochs": {"learning_rate": 5e-5, "ppo_epochs": 2},
    "lr 5e-5, replies of <= 16 tokens": {"learning_rate": 5e-5, "response_length": 16},
    "scale from the first rollout (8 replies)": {"scale_samples": 0},
    "missing-end penalty 1.0": {"missing_eos_penalty": 1.0},
    "sampling temperature 1.0": {"temperature": 1.0},
    "sampling temperature 0.5": {"temperature": 0.5},
    "value head from the reward model": {"zero_value_head": False},
    "top 12 layers trained": {"policy_trainable_layers": 12},
    "value model lr 3e-4": {"value_learning_rate": 3e-4},
    "value model: top 4 layers trained": {"value_trainable_layers": 4},
    # notebook 06's "break it" switches
    "no KL penalty (β 0)": {"kl_coef": 0.0},
    "lr 3e-4 (notebook 06's × 10)": {"learning_rate": 3e-4},
    "value model not calibrated": {"zero_value_head": False, "calibrate_value": False},
}
# the logged columns notebook 06 reads a run by ("How to read a run")
LOGGED = ["score", "kl", "kl_k3", "approx_kl", "policy_clipfrac", "value_loss", "explained_variance", "entropy"]
LOGGED += ["response_length", "ended"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[20, 30], help="step counts to measure at")
    parser.add_argument("--held-out", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="names of the variants to run, in this order (default: all)")
    parser.add_argument("--start", choices=["sft", "embedded"], default="sft", help="the policy PPO starts from")
    parser.add_argument(
        "--column-ranges", action="store_true", help="also print each setting's logged columns over all its steps"
    )
    parser.add_argument("--steps-csv", help="also write every step's logged columns (setting, seed, step) to this CSV")
    parser.add_argument(
        "--profile",
        choices=["cpu", "gpu"],
        default="cpu",
        help="whose PPO settings each variant changes (with gpu, the first variant is the gpu profile's own run)",
    )
    args = parser.parse_args()
    unknown = set(args.only or []) - set(VARIANTS)
    if unknown:
        parser.error(f"--only: no variant named {sorted(unknown)}; the variants are {list(VARIANTS)}")
    start = course_sft_model() if args.start == "sft" else None  # None: the embedded model
    split = hh_rlhf_split("cpu")
    train_prompts = [row["prompt"] for row in split["train"]]
    held_out = [row["prompt"] for row in split["test"]][: args.held_out]
    reward_model = course_reward_model()
    _, reference, tokenizer = load_policy_and_reference(start)
    runs, baseline, logged = [], None, []
    for name in args.only or VARIANTS:  # in the order asked for
        change = VARIANTS[name]
        for seed in args.seeds:
            policy, _ = load_model(start)
            config = PPOConfig.from_profile(args.profile, **change, steps=max(args.checkpoints), seed=seed)
            trainer = PPOTrainer(policy, reference, tokenizer, train_prompts, reward_model, config)
            if baseline is None:
                baseline = score_spread(reward_model.score_batch(held_out, trainer.respond(held_out)))
            histories = []
            for steps in sorted(set(args.checkpoints)):
                histories.append(trainer.train(steps - trainer.steps_done).history)
                history = pd.concat(histories)
                mean_after, _ = score_spread(reward_model.score_batch(held_out, trainer.respond(held_out)))
                runs.append(
                    {
                        "setting": name,
                        "steps": steps,
                        "seed": seed,
                        "gain": (mean_after - baseline[0]) / baseline[1],
                        "kl": history["kl"].tail(5).mean(),
                        "ended": history["ended"].tail(5).mean(),
                        "minutes": history["seconds"].sum() / 60,
                    }
                )
                print(runs[-1], flush=True)
            logged.append(history[["step", *LOGGED]].assign(setting=name, seed=seed))
    table = pd.DataFrame(runs).groupby(["setting", "steps"], sort=False)
    summary = pd.DataFrame(
        {
            "mean gain (sd)": table["gain"].mean(),
            "worst gain (sd)": table["gain"].min(),
            "mean KL (nats)": table["kl"].mean(),
            "worst KL (nats)": table["kl"].max(),
            "PPO minutes": table["minutes"].mean(),
        }
    )
    print(
        f"\nfrom the {args.start} model, seeds {args.seeds}, {len(held_out)} held-out prompts (starting model's mean "
        f"{baseline[0]:.3f}, sd {baseline[1]:.3f})"
    )
    print(summary.round(2).to_string())
    if args.steps_csv:
        pd.concat(logged).to_csv(args.steps_csv, index=False)
    if args.column_ranges:  # the healthy (or broken) range of each column, over every step of every seed
        steps = pd.concat(logged).groupby("setting", sort=False)
        for name, rows in steps:
            print(f"\n{name}: {len(rows)} steps over seeds {args.seeds}")
            print(rows[LOGGED].describe(percentiles=[0.1, 0.5, 0.9]).T[["min", "10%", "50%", "90%", "max"]].round(3))


if __name__ == "__main__":
    main()
