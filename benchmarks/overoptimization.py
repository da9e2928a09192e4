"""Best-of-n reward over-optimisation at laptop scale (Gao et al. 2022's synthetic-gold setup): a gold head on every
real hh-rlhf pair, proxies on gold-labelled subsets, best-of-n against each proxy scored by proxy and gold.

.venv/bin/python benchmarks/overoptimization.py [--prompts 32] [--samples 64] [--sizes 100 300 1000] [--noisy]

Uses notebook 04's SFT model as the sampling policy and notebook 05's reward-model backbone for the features, as
``benchmarks/common.py`` trains them; features and samples are cached in ``build/benchmarks/overoptimization``
(never ``runs/``), so a second run with other sizes or ``--noisy`` costs seconds. Prints the proxies' agreement with
gold, the best-of-n curve (gains in standard deviations, gold's 95% interval over prompts), where gold peaks, and
Gao et al.'s best-of-n form d(α − βd) fitted to each curve.
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch
from common import BENCHMARK_DIR, course_reward_model, course_sft_model, course_training_pairs

from playbook.config import get_profile
from playbook.data import hh_rlhf_split
from playbook.evaluation import sample_replies
from playbook.models import load_model
from playbook.overoptimization import (
    best_of_n_overoptimization,
    fit_functional_form,
    gold_peak,
    last_user_turns,
    reply_features,
    train_gold_and_proxies,
)
from playbook.reward import RewardConfig, cached_head_features

CACHE = BENCHMARK_DIR / "overoptimization"


def sampled_features(prompts, samples: int, tokens: int, reward_model) -> torch.Tensor:
    """Features of `samples` replies per prompt from the SFT model, cached by their settings."""
    saved = CACHE / f"samples-{len(prompts)}x{samples}x{tokens}.pt"
    if saved.is_file():
        return torch.load(saved)
    policy, tokenizer = load_model(course_sft_model())
    start = time.perf_counter()
    replies = sample_replies(policy, tokenizer, prompts, samples, max_new_tokens=tokens, temperature=0.7)
    sampled = time.perf_counter() - start
    features = reply_features(reward_model, prompts, replies)
    print(
        f"sampled {len(prompts) * samples} replies in {sampled:.0f} s, features in "
        f"{time.perf_counter() - start - sampled:.0f} s"
    )
    saved.with_suffix(".json").write_text(json.dumps(replies[:2], indent=1))
    torch.save(features, saved)
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts")
    parser.add_argument("--samples", type=int, default=64, help="sampled replies per prompt (the largest n)")
    parser.add_argument("--tokens", type=int, default=24, help="new tokens per reply (the cpu profile's PPO length)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="gold-labelled pairs per proxy")
    parser.add_argument("--noisy", action="store_true", help="sample gold labels from σ(margin) instead of argmax")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)

    reward_model = course_reward_model()
    config = RewardConfig.from_profile(get_profile("cpu"))
    split = hh_rlhf_split(get_profile("cpu"))
    course_training_pairs()
    train = cached_head_features(reward_model, split["train"], config, CACHE / "pair-features", split="train")
    held_out = cached_head_features(reward_model, split["test"], config, CACHE / "pair-features", split="eval")
    heads = train_gold_and_proxies(train, held_out, sizes=args.sizes, noisy=args.noisy, seed=args.seed)
    print(
        f"gold head on {len(train[0]) + len(held_out[0])} real pairs; proxies' agreement with gold on "
        f"{len(held_out[0])} held-out pairs (gold labels{', noisy' if args.noisy else ''}):"
    )
    print(heads.agreement.round(3).to_string())

    prompts = last_user_turns(split["test"], args.prompts)
    features = sampled_features(prompts, args.samples, args.tokens, reward_model)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= args.samples]
    curve = best_of_n_overoptimization(features, heads.gold, heads.proxies, ns=ns, seed=args.seed)
    with pd.option_context("display.width", 160):
        print(curve.round(3).to_string(index=False))
        print(gold_peak(curve).round(3).to_string())
    for pairs, group in curve.groupby("proxy pairs"):
        fits = {
            what: fit_functional_form(group["sqrt_kl"], group[column], form="best-of-n")
            for what, column in (("proxy", "proxy gain"), ("gold", "gold gain"))
        }
        print(f"{pairs} pairs: d(α − βd) fits " + "; ".join(f"{w} α={a:.3f} β={b:.3f}" for w, (a, b) in fits.items()))


if __name__ == "__main__":
    main()
