"""SFT on this machine: the cost of a step and what a cpu-profile run does to held-out replies.

    .venv/bin/python benchmarks/sft_cpu.py [--steps N]

The embedded model is fine-tuned with ``train_sft`` and the cpu profile's SFTConfig (``--steps`` overrides its step
count) on hh_rlhf_split("cpu")["train"] (each prompt's last user turn and its chosen reply, as train_sft trims
it). Printed: seconds per step (training wall time / steps), and the mean NLL per reply token of the chosen replies
of the held-out pairs (same trimming) before and after, with a bootstrap 95% interval over conversations of the
mean and of the per-conversation change, and that change's Wilcoxon p-value (``playbook.stats``). Nothing is saved
(the trained model stays in memory); nothing goes to runs/. Needs PLAYBOOK_DATA_DIR (the real hh-rlhf); falls back
to the bundled sample otherwise.
"""

from __future__ import annotations

import argparse

from playbook.data import hh_rlhf_split
from playbook.models import load_model
from playbook.sft import SFTConfig, reply_nll, sft_conversations, train_sft
from playbook.stats import bootstrap_mean_interval, describe_effect, format_p_value, paired_difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="SFT steps (default: the cpu profile's)")
    args = parser.parse_args()
    split = hh_rlhf_split("cpu")
    config = SFTConfig.from_profile("cpu", **({"steps": args.steps} if args.steps else {}))
    held_out = [row["prompt"][-config.prompt_messages :] + row["chosen"] for row in split["test"]]
    policy, tokenizer = load_model(device="cpu")
    before = reply_nll(policy, tokenizer, held_out)
    result = train_sft(policy, tokenizer, sft_conversations(split["train"]), config)
    after = reply_nll(result.model, tokenizer, held_out)
    loss = result.history["loss"]
    print(config)
    print(
        f"{config.steps} steps on {result.details['examples']} conversations ({result.details['examples_dropped']} "
        f"dropped) in {result.seconds:.0f} s: {result.seconds / config.steps:.1f} s per step; training loss "
        f"{loss.head(5).mean():.3f} (first 5 steps) -> {loss.tail(5).mean():.3f} (last 5)"
    )
    for name, values in (("before", before), ("after", after)):
        low, high = bootstrap_mean_interval(values)
        print(
            f"held-out reply NLL {name:>6}: {values.mean():.3f} nats/token "
            f"(95% CI {low:.3f} to {high:.3f}), n={len(values)}"
        )
    change = paired_difference(after, before)
    print(f"held-out reply NLL after - before: {change} (Wilcoxon {format_p_value(change.wilcoxon_p_value)})")
    print(describe_effect(change, "the held-out reply NLL"))


if __name__ == "__main__":
    main()
