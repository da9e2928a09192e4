"""Seconds per RL step on this machine: our PPO vs TRL's RLOO on identical sizes, split into phases, in one run.

.venv/bin/python benchmarks/ppo_step.py [--steps 4] [--batch 8] [--response-length 24] [--layers 6]

Both train the top --layers layers of the embedded model on hh-rlhf harmless-base prompts, with --batch sampled
replies of up to --response-length tokens per step, scored by notebook 05's reward model (trained as notebook 05 does
into build/benchmarks/, never into runs/). PPO uses notebook 06's settings (4 epochs, minibatches of half the batch);
RLOO uses 4 replies per prompt and one optimisation pass, TRL's defaults. The first step of each is a warm-up
and not counted. Phases: generate (sampling), score (reward model), forward (log-probs and values the rollout
needs), update (loss, backward, optimiser; for RLOO also its own log-prob passes).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from common import course_reward_model
from transformers import TrainerCallback

from playbook.beyond_ppo import RLOOConfig, train_rloo
from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.ppo import PPOConfig, PPOTrainer


class StepClock(TrainerCallback):
    """Wall time of every optimiser step of a transformers/TRL trainer."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def timed(function, spent: list[float]):
    """Wrap `function` so every call adds its duration to `spent`."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    prompts = [row["prompt"][-3:] for row in hh_rlhf_split("cpu")["train"]]
    reward_model = course_reward_model()
    policy, reference, tokenizer = load_policy_and_reference()
    config = PPOConfig.from_profile(
        "cpu",
        policy_trainable_layers=args.layers,
        batch_size=args.batch,
        mini_batch_size=max(1, args.batch // 2),
        response_length=args.response_length,
        steps=args.steps,
    )
    ppo = PPOTrainer(policy, reference, tokenizer, prompts, reward_model, config).train().history
    phases = ["seconds_generate", "seconds_score", "seconds_forward", "seconds_update"]
    ppo_mean = ppo.iloc[1:][phases + ["seconds"]].mean()

    generate_seconds, score_seconds, clock = [], [], StepClock()
    rloo_policy, _ = load_model()
    rloo_policy.generate = timed(rloo_policy.generate, generate_seconds)
    reward_model.score_batch = timed(reward_model.score_batch, score_seconds)
    generations = 4
    rloo_config = RLOOConfig.from_profile(
        "cpu",
        steps=args.steps,
        prompts_per_step=max(1, args.batch // generations),
        generations=generations,
        max_completion_length=args.response_length,
        trainable_layers=args.layers,
    )
    train_rloo(rloo_policy, None, tokenizer, prompts, reward_model, rloo_config, callbacks=[clock])
    rloo_total = pd.Series(clock.seconds[1:]).mean()
    rloo_generate = pd.Series(generate_seconds[1:]).mean()
    rloo_score = pd.Series(score_seconds[1:]).mean()
    rloo_mean = pd.Series(
        {
            "seconds_generate": rloo_generate,
            "seconds_score": rloo_score,
            "seconds_forward": float("nan"),
            "seconds_update": rloo_total - rloo_generate - rloo_score,
            "seconds": rloo_total,
        }
    )
    table = pd.DataFrame({"PPO (playbook)": ppo_mean, "RLOO (TRL)": rloo_mean})
    table.index = [name.removeprefix("seconds_") if name != "seconds" else "whole step" for name in table.index]
    table["PPO / RLOO"] = table["PPO (playbook)"] / table["RLOO (TRL)"]
    print(
        f"{args.batch} replies of <= {args.response_length} tokens per step, top {args.layers} layers trained; "
        f"mean of steps 2-{args.steps}, seconds"
    )
    print(table.round(2).to_string())


if __name__ == "__main__":
    main()
