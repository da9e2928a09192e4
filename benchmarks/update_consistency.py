"""How far DPO's and RLOO's optimizer updates carry the policy: step sizes, net displacement and their ratio.

.venv/bin/python benchmarks/update_consistency.py [--methods dpo rloo] [--steps 20] [--seed 0] [--kl-prompts 32]

Notebook 07 trains DPO and RLOO for the same 20 Adam updates at the same learning rate and schedule, on the same top
6 layers of notebook 04's SFT model (trained as the notebook trains it, into build/benchmarks/). Adam divides the
running mean of each weight's gradient by a running estimate of its scale, so a gradient scaled down (by clipping to
`max_grad_norm`, say) does not by itself make a smaller step. What decides how far the policy gets is whether the
steps point the same way. After every update this records the step's length ||θ_t − θ_(t−1)|| over the trainable
weights and the distance from the start ||θ_t − θ_0||; their ratio at the end, net distance / path length, is 1 when
every step points the same way and √(Σ step²) / Σ step for the same steps in independent random directions (a random
walk). Also printed: the gradient norm TRL logs before clipping, and the KL that notebook 07 measures along greedy
replies.
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import torch
from common import course_reward_model, course_sft_model
from transformers import TrainerCallback

from playbook.beyond_ppo import DPOConfig, RLOOConfig, evaluate_policies, train_dpo, train_rloo
from playbook.data import hh_rlhf_split
from playbook.frozen_layers import train_top_layers
from playbook.models import load_policy_and_reference
from playbook.ppo import PPOConfig


class StepLengths(TrainerCallback):
    """After each optimizer step: the length of that step and the distance from the start, in weight space."""

    def __init__(self, policy: torch.nn.Module) -> None:
        self.weights = [p for p in policy.parameters() if p.requires_grad]
        self.start = self._flat()
        self.previous = self.start.clone()
        self.rows: list[dict[str, float]] = []

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().float().cpu() for p in self.weights])

    def on_step_end(self, args, state, control, **kwargs) -> None:
        now = self._flat()
        step = float((now - self.previous).norm())
        path = step + (self.rows[-1]["path length"] if self.rows else 0.0)
        distance = float((now - self.start).norm())
        self.rows.append({"step": state.global_step, "step length": step, "path length": path, "distance": distance})
        self.previous = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=["dpo", "rloo"], default=["dpo", "rloo"])
    parser.add_argument("--steps", type=int, default=20, help="optimizer updates (notebook 07: 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kl-prompts", type=int, default=32, help="held-out prompts for the KL (notebook 07: 32)")
    args = parser.parse_args()
    start = course_sft_model()
    split = hh_rlhf_split("cpu")
    reward_model = course_reward_model()
    held_out = [row["prompt"] for row in split["test"]][: args.kl_prompts]
    summary = {}
    for method in args.methods:
        policy, reference, tokenizer = load_policy_and_reference(start)
        config_class = DPOConfig if method == "dpo" else RLOOConfig
        config = config_class.from_profile("cpu", steps=args.steps, seed=args.seed)
        train_top_layers(policy, config.trainable_layers)  # as the trainer will, so the callback reads those weights
        lengths = StepLengths(policy)
        if method == "dpo":
            pairs = split["train"].shuffle(seed=args.seed)
            result = train_dpo(policy, reference, tokenizer, pairs, config, callbacks=[lengths])
        else:
            prompts = [row["prompt"] for row in split["train"]]
            result = train_rloo(policy, None, tokenizer, prompts, reward_model, config, callbacks=[lengths])
        steps = pd.DataFrame(lengths.rows)
        table, _ = evaluate_policies(  # notebook 07's table: greedy replies, KL to the start along them
            {"SFT": reference, method: result.model},
            tokenizer,
            held_out,
            reward_model,
            max_new_tokens=PPOConfig.from_profile("cpu").response_length,
            baseline="SFT",
        )
        last = steps.iloc[-1]
        summary[method] = {
            "updates": len(steps),
            "mean step length": steps["step length"].mean(),
            "path length": last["path length"],
            "distance from start": last["distance"],
            "distance / path": last["distance"] / last["path length"],
            "same steps, random directions": math.sqrt((steps["step length"] ** 2).sum()) / last["path length"],
            "grad norm before clipping (mean)": result.history["grad_norm"].astype(float).mean(),
            "KL to start along greedy replies (nats/reply)": table.loc[method, "KL to baseline (nats/reply)"],
        }
        print(method, steps.round(5).to_string(index=False), sep="\n", flush=True)
    print(pd.DataFrame(summary).round(4).to_string())


if __name__ == "__main__":
    main()
