"""The pipeline command, on two processes as `accelerate launch` runs it (gloo on this CPU machine), then its
evaluate stage in one process on the models those trained."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from playbook.models import load_model
from playbook.reward import RewardModel


def launch(stages: list[str], out: Path) -> str:
    """`accelerate launch` with two processes, running the pipeline's stages in order. Its `--cpu` flag starts CPU
    jobs through MPI; torchrun underneath `--multi_gpu` starts them directly, and without CUDA they talk over gloo
    (CUDA is hidden from them: on a one-GPU machine both ranks would share it, which NCCL refuses)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["-m", "playbook.pipeline", *stages, "--profile", "smoke", "--out", str(out)]
    environment = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_reward_sft_then_ppo_on_two_processes_then_evaluate(tmp_path, monkeypatch):
    out = launch(["reward", "sft", "ppo"], tmp_path)  # one start-up for the three stages, as a user may run them
    assert "reward (smoke profile, 2 process(es))" in out
    reward_model = RewardModel.load(tmp_path / "reward_model")
    assert len(pd.read_csv(tmp_path / "reward_model" / "history.csv")) > 0
    # each process extracted every other feature batch into the shared cache, then read the other's
    assert len(list((tmp_path / "reward_model-checkpoints").glob("train-chosen-*.pt"))) >= 2
    assert "sft (smoke profile, 2 process(es))" in out  # TRL's trainer runs on both processes, not twice alone
    assert "Loaded the reward model" in out and "ppo (smoke profile, 2 process(es))" in out
    assert "Starting from the SFT model saved in" in out  # PPO starts from notebook 04's SFT model
    sft_model, _ = load_model(tmp_path / "sft_model")
    embedded, _ = load_model()
    changed = [n for n, p in sft_model.named_parameters() if not p.equal(embedded.get_parameter(n))]
    assert changed and not any(".layers.0." in n for n in changed)  # the top layers trained, the bottom did not
    history = pd.read_csv(tmp_path / "ppo_policy" / "history.csv")
    assert len(history) == 2
    assert (history["replies"] == 4).all()  # 2 prompts per process per step, gathered from both processes
    policy, tokenizer = load_model(tmp_path / "ppo_policy")
    assert policy.config.num_hidden_layers == 30 and tokenizer.eos_token == "<|im_end|>"
    assert isinstance(reward_model.score([{"role": "user", "content": "Hi"}], "Hello!"), float)
    assert (tmp_path / "ppo_policy" / "ppo_config.json").is_file()

    # evaluate (one process) finds the SFT and PPO models, and writes notebook 08's tables as CSV
    from playbook.pipeline import main

    monkeypatch.setenv("PLAYBOOK_PROFILE", "smoke")
    (result,) = main(["evaluate", "--profile", "smoke", "--out", str(tmp_path)])
    folder = tmp_path / "evaluation"
    proxies = pd.read_csv(folder / "proxies.csv", index_col="pairs")
    assert list(proxies.index) == [4, 8] and proxies["agreement"].between(0, 1).all()
    best_of_n = pd.read_csv(folder / "best_of_n.csv")
    assert sorted(set(best_of_n["n"])) == [1, 2, 4]
    assert np.allclose(best_of_n.loc[best_of_n["n"] == 1, ["proxy gain", "gold gain"]], 0, atol=1e-5)
    ppo = pd.read_csv(folder / "ppo.csv")
    assert sorted(set(ppo["kl_coef"])) == [0.01, 0.1] and len(ppo) == 2 * 2  # two steps per β in smoke
    win_rates = pd.read_csv(folder / "win_rates.csv")
    assert list(zip(win_rates["policy"], win_rates["against"].str[:9], strict=True)) == [
        ("SFT", "PPO"),
        ("SFT", "best-of-4"),
        ("PPO", "best-of-4"),
    ]
    assert (win_rates[["wins", "ties", "losses"]].sum(axis=1) == 2).all()  # the smoke profile's two prompts
    assert (folder / "history.csv").is_file() and result.output_dir == folder
