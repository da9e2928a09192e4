"""What best-of-N costs on this machine: sampled replies per second and reward-model scores per second, beside greedy
replies to the same held-out prompts, measured side by side in one run (the four take turns; medians of repeats).

.venv/bin/python benchmarks/best_of_n_speed.py [--prompts 8] [--samples 8] [--tokens 24] [--repeats 3]

Best-of-N with N samples per prompt costs N sampled replies plus N reward-model scores; the ratios printed say how
many greedy replies' worth of time one sampled reply and one score take, so a curve over N can be sized before it
runs. Uses notebook 04's SFT model and notebook 05's reward model as ``benchmarks/common.py`` trains them (in
``build/benchmarks``, never ``runs/``).
"""

from __future__ import annotations

import argparse

from common import course_reward_model, course_sft_model

from playbook.config import get_profile
from playbook.data import hh_rlhf_split
from playbook.environment import interleaved_seconds
from playbook.evaluation import sample_replies
from playbook.models import generate_replies, load_model
from playbook.overoptimization import last_user_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="held-out prompts")
    parser.add_argument("--samples", type=int, default=8, help="sampled replies per prompt (N)")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per reply (the cpu profile's PPO length)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    reward_model = course_reward_model()
    policy, tokenizer = load_model(course_sft_model())
    prompts = last_user_turns(hh_rlhf_split(get_profile("cpu"))["test"], args.prompts)  # as notebook 08 samples
    replies = sample_replies(policy, tokenizer, prompts, args.samples, max_new_tokens=args.tokens)
    flat_prompts = [p for p in prompts for _ in range(args.samples)]
    flat_replies = [r for group in replies for r in group]

    actions = {
        "greedy": lambda: generate_replies(policy, tokenizer, prompts, max_new_tokens=args.tokens),
        "sampled": lambda: sample_replies(policy, tokenizer, prompts, args.samples, max_new_tokens=args.tokens),
        # the same samples from a batch of each prompt repeated, which reads the prompt once per row (sample_replies
        # reads it once and copies its cache)
        "repeated": lambda: generate_replies(
            policy,
            tokenizer,
            flat_prompts,
            max_new_tokens=args.tokens,
            batch_size=32,  # sample_replies' default
            do_sample=True,
            top_k=0,
            top_p=1.0,
        ),
        "scored": lambda: reward_model.score_batch(flat_prompts, flat_replies),
    }
    # the four take turns in each repeat, so a machine whose speed drifts during the run shifts them alike
    seconds = interleaved_seconds(actions, args.repeats).median()
    greedy, sampled, repeated, scored = (seconds[name] for name in actions)

    greedy_rate = args.prompts / greedy
    rates = {
        "greedy replies": greedy_rate,
        "sampled replies (best-of-N)": len(flat_replies) / sampled,
        "… prompt read once per row": len(flat_replies) / repeated,
        "reward-model scores": len(flat_replies) / scored,
    }
    print(f"{args.prompts} prompts, {args.samples} samples each, {args.tokens} new tokens")
    print(f"{'':<30}{'per second':>12}{'vs greedy':>11}")
    for name, rate in rates.items():
        print(f"{name:<30}{rate:>12.2f}{rate / greedy_rate:>10.2f}x")
    per_prompt = args.samples / rates["sampled replies (best-of-N)"] + args.samples / rates["reward-model scores"]
    print(f"best-of-{args.samples} per prompt: {per_prompt:.2f} s, {per_prompt * greedy_rate:.1f}x one greedy reply")


if __name__ == "__main__":
    main()
