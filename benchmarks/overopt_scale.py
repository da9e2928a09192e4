"""Notebook 08's over-optimisation experiment beyond the laptop's budget: best-of-n to larger n, more prompts, and PPO
against every proxy size.

.venv/bin/python benchmarks/overopt_scale.py [--prompts 96] [--samples 128] [--proxies 100 300 1000]
                                             [--kl-coefs 0.1 0.01] [--ppo-steps 40] [--save-every 20]
                                             [--no-best-of-n] [--tag NAME]

Everything else as notebook 08 runs it in the cpu profile (`playbook.overoptimization`): the gold head fitted on every
real pair of the course split, proxies on the first 100 / 300 / 1,000 gold-labelled training pairs, notebook 04's
SFT model sampling replies of <= 24 tokens at PPO's temperature to the last user turns of held-out conversations,
and notebook 05's reward model's backbone reading them (both as `benchmarks/common.py` trains them, into
build/benchmarks/). Gains are in standard deviations of each head's scores over the SFT model's samples, as in the
notebook. Prints gold's peak per proxy and every PPO run's end and gold peak; writes best_of_n-TAG.csv and
ppo-TAG.csv into build/benchmarks/overopt_scale/ (the PPO curves every --save-every steps, so a run stopped by a
time limit keeps what it measured). To run the PPO runs side by side, start one process per proxy and
KL coefficient with --no-best-of-n and a smaller --samples (the samples then only set the gains' units).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
from common import BENCHMARK_DIR, course_sft_model

from playbook.config import get_profile
from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.overoptimization import (
    ProxyReward,
    SampleScores,
    best_of_n_overoptimization,
    course_pair_features,
    gold_change,
    gold_peak,
    last_user_turns,
    ppo_overoptimization,
    sample_sizes,
    sampled_reply_features,
    train_gold_and_proxies,
)
from playbook.ppo import PPOConfig, PPOTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=96, help="held-out prompts (notebook 08: 24)")
    parser.add_argument("--samples", type=int, default=128, help="sampled replies per prompt (notebook 08: 16)")
    parser.add_argument("--proxies", type=int, nargs="+", default=[100, 300, 1_000], help="proxy sizes, in pairs")
    parser.add_argument("--kl-coefs", type=float, nargs="*", default=[0.1, 0.01], help="PPO's β values (none: no PPO)")
    parser.add_argument("--ppo-steps", type=int, default=40, help="PPO steps per run (notebook 08: 10)")
    parser.add_argument("--save-every", type=int, default=20, help="PPO steps between writes of the curves' CSV")
    parser.add_argument("--no-best-of-n", action="store_true", help="only the PPO runs")
    parser.add_argument("--tag", default="run", help="suffix of the CSV files written")
    args = parser.parse_args()
    profile = get_profile("cpu")
    out = BENCHMARK_DIR / "overopt_scale"
    out.mkdir(parents=True, exist_ok=True)
    features = course_pair_features(profile, out=BENCHMARK_DIR)
    heads = train_gold_and_proxies(features.train, features.held_out, sizes=args.proxies)
    print(heads.agreement.round(3).to_string(), flush=True)
    sft = course_sft_model()
    prompts = last_user_turns(hh_rlhf_split(profile)["test"], args.prompts)
    config = PPOConfig.from_profile(profile, steps=args.ppo_steps)
    policy, tokenizer = load_model(sft)
    start = time.perf_counter()
    _, sampled = sampled_reply_features(
        policy,
        tokenizer,
        features.backbone,
        prompts,
        args.samples,
        max_new_tokens=config.response_length,
        temperature=config.temperature,
        batch_size=128,
    )
    print(f"{len(prompts)} prompts x {args.samples} replies sampled and read in {time.perf_counter() - start:.0f} s")
    if not args.no_best_of_n:
        scores = SampleScores.from_features(sampled, heads.gold, heads.proxies)
        best_of_n = best_of_n_overoptimization(scores, ns=sample_sizes(args.samples))
        best_of_n.to_csv(out / f"best_of_n-{args.tag}.csv", index=False)
        print(best_of_n.round(3).to_string())
        peaks = gold_peak(best_of_n)
        print(peaks.round(3).to_string())
        for pairs, row in peaks.iterrows():
            if row["gold peaks at n"] < row["largest n"]:
                fall = gold_change(scores, pairs, from_n=int(row["gold peaks at n"]), to_n=args.samples)
                print(f"proxy {pairs}: gold from its peak to n = {args.samples}: {fall}")
    curves = []
    for pairs in args.proxies:
        for beta in args.kl_coefs:
            reward = ProxyReward(features.backbone, heads.proxies[pairs], heads.gold)
            # playbook.overoptimization.ppo_against_proxy's run, trained in pieces to save the curve as it goes
            policy, reference, tokenizer = load_policy_and_reference(sft)
            trainer = PPOTrainer(policy, reference, tokenizer, prompts, reward, replace(config, kl_coef=beta))
            while trainer.steps_done < config.steps:
                trainer.train(min(args.save_every, config.steps - trainer.steps_done))
                history = trainer.history
                curve = ppo_overoptimization(history, reward, sampled)
                curve = curve.assign(**{"proxy pairs": pairs, "kl_coef": beta})
                pd.concat([*curves, curve], ignore_index=True).to_csv(out / f"ppo-{args.tag}.csv", index=False)
            curves.append(curve)
            last, best = curve.iloc[-1], curve.loc[curve["gold gain"].idxmax()]
            print(
                f"PPO against the {pairs}-pair proxy, β {beta}: {len(history)} steps in "
                f"{history['seconds'].sum() / 60:.1f} min; end: √KL {last['sqrt_kl']:.2f}, proxy "
                f"{last['proxy gain']:+.2f} sd, gold {last['gold gain']:+.2f} sd; gold highest "
                f"{best['gold gain']:+.2f} sd at step {int(best['step'])} (√KL {best['sqrt_kl']:.2f})",
                flush=True,
            )
            for prompt, reply in zip(prompts[:3], trainer.respond(prompts[:3]), strict=True):
                print(f"  {prompt[-1]['content'][:80]!r} -> {reply[:160]!r}", flush=True)


if __name__ == "__main__":
    main()
