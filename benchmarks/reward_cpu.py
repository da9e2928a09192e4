"""Reward-model cost on this machine, measured side by side in one run.

    .venv/bin/python benchmarks/reward_cpu.py                 # speed: full vs LoRA vs frozen-head, scoring
    .venv/bin/python benchmarks/reward_cpu.py --tradeoff 900  # accuracy by layer kept, on N harmless-base pairs

Speed: pairs per second of one training step (8 pairs, 128 tokens) for TRL RewardTrainer with full fine-tuning
and with LoRA, of the frozen-head method's one-off feature pass, and of scoring; with ratios to full fine-tuning.
Trade-off: features of every layer are read in one pass (``reward_features.read_features``, which also pools over
the reply; ``reward_features.py`` compares more features on the course split); for each layer the head is fitted on
the first N−300 pairs and evaluated on the last 300, with the time the head method would take at that depth.
Needs PLAYBOOK_DATA_DIR (the real hh-rlhf); falls back to the bundled sample otherwise.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from reward_features import read_features

from playbook.data import load_hh_rlhf
from playbook.models import load_model
from playbook.reward import (
    RewardConfig,
    backbone_features,
    choose_l2,
    fit_bradley_terry_head,
    give_distinct_pad_token,
    score_token_ids,
    tokenize_pairs,
    train_reward_model,
)

PAIRS_PER_STEP = 8
MAX_LENGTH = 128


def trainer_pairs_per_second(method: str, pairs, steps: int) -> float:
    """Pairs per second of ``steps`` RewardTrainer steps: a (steps + 1)-step run minus a 1-step run, so model
    loading, tokenising and saving cancel out."""
    seconds = {}
    for count in (1, steps + 1):
        config = RewardConfig(method=method, max_length=MAX_LENGTH, batch_size=PAIRS_PER_STEP, layers=30, steps=count)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            train_reward_model(pairs, config, output_dir=f"{folder}/rm")
            seconds[count] = time.perf_counter() - start
    return steps * PAIRS_PER_STEP / max(seconds[steps + 1] - seconds[1], 1e-9)


def speed(steps: int) -> None:
    pairs = load_hh_rlhf().shuffle(seed=0).select(range(PAIRS_PER_STEP * (steps + 2)))
    model, tokenizer = load_model(task="reward", device="cpu")
    give_distinct_pad_token(tokenizer, model)
    encoded = tokenize_pairs(pairs, tokenizer, MAX_LENGTH)
    conversations = list(encoded["chosen_ids"]) + list(encoded["rejected_ids"])
    start = time.perf_counter()
    backbone_features(model, conversations, tokenizer.pad_token_id, batch_size=16)
    head_rate = len(pairs) / (time.perf_counter() - start)
    start = time.perf_counter()
    score_token_ids(model, conversations, tokenizer.pad_token_id, batch_size=16)
    score_rate = len(pairs) / (time.perf_counter() - start)
    rates = {
        "full fine-tune step (RewardTrainer)": trainer_pairs_per_second("full", pairs, steps),
        "LoRA step (RewardTrainer, r=8)": trainer_pairs_per_second("lora", pairs, steps),
        "frozen head: feature pass (30 layers)": head_rate,
        "scoring (30 layers)": score_rate,
    }
    baseline = rates["full fine-tune step (RewardTrainer)"]
    print(f"{'pairs of ' + str(MAX_LENGTH) + ' tokens':<40}{'pairs/s':>9}{'vs full':>9}")
    for name, rate in rates.items():
        print(f"{name:<40}{rate:>9.2f}{rate / baseline:>8.1f}x")


def tradeoff(pairs_total: int) -> None:
    data = load_hh_rlhf().shuffle(seed=0).select(range(pairs_total))
    model, tokenizer = load_model(task="reward", device="cpu")
    give_distinct_pad_token(tokenizer, model)
    layers = (6, 12, 18, 24, 30)
    start = time.perf_counter()  # what a reward model cut at each layer reads: the final norm of that layer's output
    features = {
        side: {layer: read[("last", layer)] for layer in layers}
        for side in ("chosen", "rejected")
        for read in [read_features(model, tokenizer, data, side, layers, MAX_LENGTH, batch_size=16)]
    }
    seconds_all = time.perf_counter() - start
    cut = pairs_total - 300
    print(f"{pairs_total - 300} training pairs, 300 held-out, {MAX_LENGTH} tokens")
    print(f"{'layers kept':<12}{'held-out acc':>13}{'l2':>6}{'est. min for cpu profile':>26}")
    for layer in layers:
        chosen, rejected = features["chosen"][layer], features["rejected"][layer]
        l2 = choose_l2(chosen[:cut], rejected[:cut])
        _, history = fit_bradley_terry_head(
            chosen[:cut], rejected[:cut], l2=l2, steps=200, eval_pairs=(chosen[cut:], rejected[cut:])
        )
        minutes = seconds_all / pairs_total * 1794 * layer / 30 / 60
        print(f"{layer:<12}{history['eval_accuracy'].iloc[-1]:>13.3f}{l2:>6}{minutes:>26.1f}")
    print(f"standard error of a held-out accuracy near 0.63: ±{np.sqrt(0.63 * 0.37 / 300):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per method")
    parser.add_argument("--tradeoff", type=int, metavar="N", help="accuracy by layer on N pairs instead of speed")
    args = parser.parse_args()
    if args.tradeoff:
        tradeoff(args.tradeoff)
    else:
        speed(args.steps)


if __name__ == "__main__":
    main()
