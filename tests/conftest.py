"""Shared fixtures: the real data folder, the embedded model, and a tiny model for fast checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """The real data sets: ``PLAYBOOK_DATA_DIR`` if set (it must exist), else ``../shared/data`` if present. The
    test runs with ``PLAYBOOK_DATA_DIR`` pointing there, since that variable is what the loaders read."""
    configured = os.environ.get("PLAYBOOK_DATA_DIR")
    if configured:
        folder = Path(configured)
        assert folder.is_dir(), f"PLAYBOOK_DATA_DIR={configured} does not exist"
    else:
        folder = REPO.parent / "shared" / "data"
        if not folder.is_dir():
            pytest.skip("real data sets not available (set PLAYBOOK_DATA_DIR)")
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def embedded():
    """``(model, tokenizer)`` of the embedded SmolLM2-135M-Instruct, loaded once per test session."""
    from playbook.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def tokenizer():
    from playbook.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def tiny_causal_lm(tokenizer) -> LlamaForCausalLM:
    """A 2-layer, 16-wide Llama with the embedded model's vocabulary: fast, random, and deterministic."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_base(tiny_causal_lm, tokenizer, tmp_path) -> Path:
    """The tiny model saved as a model folder, for functions that load a base model by path."""
    from playbook.models import write_model_atomically

    folder = tmp_path / "tiny-base"
    write_model_atomically(tiny_causal_lm, tokenizer, folder, source="test")
    return folder


@pytest.fixture
def tiny_ppo_config():
    """A factory of the smallest PPO settings the tiny model trains with (two replies of ≤ 4 tokens per step, one
    trainable layer each), changed by keyword."""
    from playbook.ppo import PPOConfig

    def build(**changes):
        settings = dict(
            batch_size=2, mini_batch_size=1, response_length=4, policy_trainable_layers=1, value_trainable_layers=1
        )
        return PPOConfig(**(settings | changes))

    return build


def copies(model, count: int) -> list:
    """``count`` independent deep copies of ``model``."""
    import copy

    return [copy.deepcopy(model) for _ in range(count)]


def value_model_like(policy):
    """A one-output classification model with the policy's backbone weights (as a reward model built from it)."""
    from transformers import LlamaForSequenceClassification

    value = LlamaForSequenceClassification(policy.config.__class__(**{**policy.config.to_dict(), "num_labels": 1}))
    value.model.load_state_dict(policy.model.state_dict())
    return value.eval()


def cpu_state(model) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights on the CPU, to compare before and after training wherever a trainer put it."""
    return {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
