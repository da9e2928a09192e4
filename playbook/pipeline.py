"""The course's training pipeline as a command, for runs outside the notebooks (a bigger machine, several GPUs).

    python -m playbook.pipeline reward [--profile cpu] [--out DIR]
    python -m playbook.pipeline ppo    [--profile gpu] [--out DIR]
    python -m playbook.pipeline sft    [--profile cpu] [--out DIR]
    python -m playbook.pipeline evaluate [--profile cpu] [--out DIR]
    python -m playbook.pipeline sft reward ppo     (several stages, in the order given, in one start-up)
    accelerate launch --num_processes 2 -m playbook.pipeline ppo --profile gpu

Each stage writes what the notebooks write, in the same folders: ``reward`` trains the reward model (notebook 05)
into ``<out>/reward_model``; ``sft`` fine-tunes the embedded model on the split's prompts and chosen replies
(notebook 04) into ``<out>/sft_model``; ``ppo``, ``dpo`` and ``rloo`` train a policy from that SFT model, which is
also their reference (notebooks 06 and 07), into ``<out>/ppo_policy``, ``<out>/dpo`` and ``<out>/rloo``, training
the SFT model and the reward model first when they are not there yet. ``evaluate`` measures what notebook 08
measures (gold and proxy reward models, best-of-n and PPO against the proxies, win rates of the policies found in
``<out>``) and writes its tables as CSV into ``<out>/evaluation``. Each also writes its per-step history to
``history.csv`` in that folder. ``<out>`` defaults to the profile's runs folder
(:func:`playbook.config.runs_dir`), which is where the notebooks look.

Under ``accelerate launch`` every process runs this same command: PPO splits the prompts across processes and
gathers its statistics from all of them, the reward model's "head" method splits its feature batches, and the TRL
trainers (DPO, RLOO, the reward model's "lora" and "full" methods) do what TRL does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from playbook.beyond_ppo import DPOConfig, RLOOConfig, train_dpo, train_rloo
from playbook.config import PROFILES, Profile, get_profile, runs_dir
from playbook.data import hh_rlhf_split
from playbook.models import load_model, load_policy_and_reference
from playbook.overoptimization import run_evaluation
from playbook.ppo import PPOConfig, train_ppo
from playbook.reward import RewardConfig, RewardModel, load_or_train_reward_model, train_reward_model
from playbook.sft import SFTConfig, learner_corrections, load_or_train_sft_model, sft_conversations, train_sft
from playbook.training import TrainResult, process_state


def _reward_model(profile: Profile, out: Path) -> RewardModel:
    return load_or_train_reward_model(
        hh_rlhf_split(profile)["train"], RewardConfig.from_profile(profile), folder=out / "reward_model"
    )


def run_reward(profile: Profile, out: Path) -> TrainResult:
    """Notebook 05's reward model, trained on the split's training pairs and evaluated on its held-out pairs."""
    split = hh_rlhf_split(profile)
    config = RewardConfig.from_profile(profile)
    return train_reward_model(split["train"], config, eval_pairs=split["test"], output_dir=out / "reward_model")


def _sft_start(profile: Profile, out: Path):
    """``(policy, reference, tokenizer)``: two copies of notebook 04's SFT model (trained first if there is none)."""
    return load_policy_and_reference(load_or_train_sft_model(profile, folder=out / "sft_model"))


def run_ppo(profile: Profile, out: Path) -> TrainResult:
    """Notebook 06's PPO run against the reward model, from the SFT model (which is also its reference)."""
    reward_model = _reward_model(profile, out)
    policy, reference, tokenizer = _sft_start(profile, out)
    prompts = [row["prompt"] for row in hh_rlhf_split(profile)["train"]]
    config = PPOConfig.from_profile(profile)
    return train_ppo(policy, reference, tokenizer, prompts, reward_model, config, output_dir=out / "ppo_policy")


def run_dpo(profile: Profile, out: Path) -> TrainResult:
    """Notebook 07's DPO run on the split's training pairs, from the SFT model."""
    policy, reference, tokenizer = _sft_start(profile, out)
    pairs = hh_rlhf_split(profile)["train"].shuffle(seed=0)
    return train_dpo(policy, reference, tokenizer, pairs, DPOConfig.from_profile(profile), output_dir=out / "dpo")


def run_rloo(profile: Profile, out: Path) -> TrainResult:
    """Notebook 07's RLOO run against the reward model, from the SFT model."""
    reward_model = _reward_model(profile, out)
    policy, _, tokenizer = _sft_start(profile, out)
    prompts = [row["prompt"] for row in hh_rlhf_split(profile)["train"]]
    config = RLOOConfig.from_profile(profile)
    return train_rloo(policy, None, tokenizer, prompts, reward_model, config, output_dir=out / "rloo")


def run_sft(profile: Profile, out: Path) -> TrainResult:
    """Notebook 04's supervised fine-tuning of the embedded model on the split's training prompts and their chosen
    replies (and the learner's corrections from notebook 02, if any)."""
    policy, tokenizer = load_model()
    conversations = sft_conversations(hh_rlhf_split(profile)["train"], learner_corrections(profile))
    return train_sft(policy, tokenizer, conversations, SFTConfig.from_profile(profile), output_dir=out / "sft_model")


STAGES: dict[str, Callable[[Profile, Path], TrainResult]] = {
    "reward": run_reward,
    "ppo": run_ppo,
    "dpo": run_dpo,
    "rloo": run_rloo,
    "sft": run_sft,
    "evaluate": run_evaluation,
}


def main(argv: list[str] | None = None) -> list[TrainResult]:
    parser = argparse.ArgumentParser(prog="python -m playbook.pipeline", description=__doc__.split("\n\n")[0])
    stages = ", ".join(STAGES)
    parser.add_argument("stages", nargs="+", choices=STAGES, metavar="stage", help=f"one or more of {stages}")
    parser.add_argument("--profile", choices=PROFILES, help="default: $PLAYBOOK_PROFILE, else gpu with CUDA, else cpu")
    parser.add_argument("--out", type=Path, help="folder for the artefacts (default: the profile's runs folder)")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    out = args.out or runs_dir(profile)
    results = []
    for stage in args.stages:  # one start-up (imports, process group) for all of them
        result = STAGES[stage](profile, out)
        state = process_state()
        if state.is_main_process:
            result.history.to_csv(result.output_dir / "history.csv", index=False)
            print(
                f"{stage} ({profile.name} profile, {state.num_processes} process(es)): {len(result.history)} logged "
                f"steps in {result.seconds / 60:.1f} min; saved to {result.output_dir}",
                flush=True,
            )
        results.append(result)
    return results


if __name__ == "__main__":
    main()
