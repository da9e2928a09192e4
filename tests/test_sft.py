"""Supervised fine-tuning: which tokens train, what a few steps change, and the held-out reply NLL."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import cpu_state
from playbook import sft, training
from playbook.models import load_model
from playbook.sft import SFTConfig, loss_mask, reply_kl, reply_nll, sft_conversations, train_sft

TWO_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water and yeast."},
]


def test_only_the_last_reply_and_its_end_token_carry_loss(tokenizer):
    ids, mask = loss_mask(tokenizer, TWO_TURNS, max_length=None)
    prompt = tokenizer.apply_chat_template(TWO_TURNS[:-1], add_generation_prompt=True, return_dict=False)
    assert ids[: len(prompt)] == list(prompt)
    assert mask == [0] * len(prompt) + [1] * (len(ids) - len(prompt))
    # the reply, its <|im_end|> and the newline the template writes after it; the first reply ("Hello!") is context
    trained = [token for token, carries_loss in zip(ids, mask, strict=True) if carries_loss]
    assert tokenizer.decode(trained) == "Mix flour, water and yeast.<|im_end|>\n"

    cut_ids, cut_mask = loss_mask(tokenizer, TWO_TURNS, max_length=len(prompt) + 3)
    assert cut_ids == ids[: len(prompt) + 3] and cut_mask == [0] * len(prompt) + [1] * 3


def test_a_prompt_that_fills_max_length_is_refused(tokenizer):
    with pytest.raises(ValueError, match="max_length=5"):
        loss_mask(tokenizer, TWO_TURNS, max_length=5)


def test_sft_conversations_pair_prompts_with_chosen_replies_then_corrections():
    pairs = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": [{"role": "assistant", "content": "bad"}],
            }
        ]
    )
    corrections = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": "Q2"}], "completion": [{"role": "assistant", "content": "fixed"}]}]
    )
    rows = sft_conversations(pairs, corrections).to_list()
    assert rows == [
        {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "good"}]},
        {"prompt": [{"role": "user", "content": "Q2"}], "completion": [{"role": "assistant", "content": "fixed"}]},
    ]


def test_reply_nll_is_the_mean_nll_of_the_reply_tokens(tiny_causal_lm, tokenizer):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]

    def by_hand(conversation):
        ids = tokenizer.apply_chat_template(conversation, return_dict=False)
        start = len(tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=False))
        with torch.no_grad():
            logits = tiny_causal_lm(input_ids=torch.tensor([ids])).logits[0]
        log_probs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
        return -log_probs[torch.arange(len(ids) - start), torch.tensor(ids[start:])].mean().item()

    nll = reply_nll(tiny_causal_lm, tokenizer, [TWO_TURNS, short], batch_size=2)  # padded together in one batch
    assert nll == pytest.approx([by_hand(TWO_TURNS), by_hand(short)], rel=1e-5)


def test_reply_kl_sums_the_exact_per_token_kl_over_the_reply(tiny_causal_lm, tokenizer, monkeypatch):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}]
    moved = copy.deepcopy(tiny_causal_lm)
    with torch.no_grad():
        moved.lm_head.weight.add_(0.5 * torch.randn_like(moved.lm_head.weight))

    def by_hand(conversation):
        ids = tokenizer.apply_chat_template(conversation, return_dict=False)
        start = len(tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, return_dict=False))
        with torch.no_grad():
            p = moved(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].log_softmax(-1)
            q = tiny_causal_lm(input_ids=torch.tensor([ids])).logits[0, start - 1 : -1].log_softmax(-1)
        return (p.exp() * (p - q)).sum().item()

    kl = reply_kl(moved, tiny_causal_lm, tokenizer, [TWO_TURNS, short], batch_size=2)
    # float32 sums of p·(log p − log q) over a reply, for a KL near 0.005, carry rounding of about 1e-6
    assert kl == pytest.approx([by_hand(TWO_TURNS), by_hand(short)], rel=1e-4, abs=2e-6) and (kl > 0).all()
    assert reply_kl(tiny_causal_lm, tiny_causal_lm, tokenizer, [short]) == pytest.approx([0.0], abs=1e-6)

    # a policy that trained only its top layer shares the layer below: that one runs once for both models
    moved = copy.deepcopy(tiny_causal_lm)
    with torch.no_grad():
        moved.model.layers[1].mlp.down_proj.weight.add_(
            0.5 * torch.randn_like(moved.model.layers[1].mlp.down_proj.weight)
        )
    monkeypatch.setattr(sft, "next_token_logits_at", lambda *args: pytest.fail("each model ran whole"))
    kl = reply_kl(moved, tiny_causal_lm, tokenizer, [TWO_TURNS, short], batch_size=2)
    assert kl == pytest.approx([by_hand(TWO_TURNS), by_hand(short)], rel=1e-4, abs=2e-6) and (kl > 0).all()


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match=r"SFTConfig\.steps=0"):
        SFTConfig(steps=0)
    with pytest.raises(ValueError, match=r"SFTConfig\.trainable_layers=0"):
        SFTConfig(trainable_layers=0)
    with pytest.raises(ValueError, match=r"SFTConfig\.prompt_messages=0"):
        SFTConfig(prompt_messages=0)
    smoke = SFTConfig.from_profile("smoke")
    assert (smoke.steps, smoke.batch_size, smoke.max_length, smoke.trainable_layers) == (2, 2, 64, 6)


def test_sft_steps_lower_the_loss_and_change_only_the_top_layer(tiny_causal_lm, tokenizer, tmp_path):
    data = sft_conversations(
        Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": f"Say {word}."}],
                    "chosen": [{"role": "assistant", "content": f"{word} {word} {word}"}],
                    "rejected": [{"role": "assistant", "content": "No."}],
                }
                for word in ("apple", "river", "cloud", "stone")
            ]
        )
    )
    before = cpu_state(tiny_causal_lm)
    nll_before = reply_nll(tiny_causal_lm, tokenizer, [r["prompt"] + r["completion"] for r in data])
    config = SFTConfig(steps=12, max_passes=12, batch_size=4, max_length=64, learning_rate=1e-2, trainable_layers=1)
    result = train_sft(tiny_causal_lm, tokenizer, data, config, output_dir=tmp_path / "sft")

    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]
    nll_after = reply_nll(result.model, tokenizer, [r["prompt"] + r["completion"] for r in data])
    assert (nll_after < nll_before).all()
    after = cpu_state(result.model)  # a trainer on a GPU moves the model there
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed)
    assert any(name.startswith("model.layers.1.") for name in changed)
    assert result.details == {"examples": 4, "examples_dropped": 0, "resumed_at_step": 0}
    assert (tmp_path / "sft" / "config.json").is_file()

    # the same run again resumes from its last checkpoint: nothing left to train, the trained weights come back
    fresh = copy.deepcopy(tiny_causal_lm)
    fresh.load_state_dict(before)
    resumed = train_sft(fresh, tokenizer, data, config, output_dir=tmp_path / "sft")
    resumed_weights = cpu_state(resumed.model)
    assert all(torch.equal(resumed_weights[name], after[name]) for name in after)
    assert resumed.history.empty  # no step logged: it did not train again
    assert resumed.details["resumed_at_step"] == 12  # and says where it picked up


def test_sft_in_micro_batches_takes_the_same_steps_as_in_one_pass(tiny_causal_lm, tokenizer):
    """Replies of different lengths: accumulated micro-batches must weigh every reply token as one pass does (the
    same loss, and, over three Adam steps, the same weights)."""
    data = sft_conversations(
        Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": f"Say {word}."}],
                    "chosen": [{"role": "assistant", "content": " ".join([word] * repeats)}],
                    "rejected": [{"role": "assistant", "content": "No."}],
                }
                for word, repeats in (("apple", 1), ("river", 6), ("cloud", 2), ("stone", 9))
            ]
        )
    )
    start = cpu_state(tiny_causal_lm)
    weights, losses = {}, {}
    for micro in (None, 1):
        tiny_causal_lm.load_state_dict(start)
        config = SFTConfig(
            steps=3,
            max_passes=3,
            batch_size=4,
            max_length=64,
            learning_rate=1e-3,
            trainable_layers=1,
            micro_batch_size=micro,
        )
        result = train_sft(tiny_causal_lm, tokenizer, data, config)
        weights[micro], losses[micro] = cpu_state(result.model), result.history["loss"].to_numpy()
    assert max((weights[None][name] - start[name]).abs().max() for name in start) > 1e-3
    assert all(torch.allclose(weights[None][name], weights[1][name], atol=1e-6) for name in start)
    np.testing.assert_allclose(losses[1], losses[None], rtol=1e-5)


def test_sft_stops_after_max_passes_over_the_data(tiny_causal_lm, tokenizer, caplog):
    data = sft_conversations(
        Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": f"Say {word}."}],
                    "chosen": [{"role": "assistant", "content": word}],
                    "rejected": [{"role": "assistant", "content": "No."}],
                }
                for word in ("apple", "river", "cloud")
            ]
        )
    )
    config = SFTConfig(steps=50, max_passes=2, batch_size=2, max_length=64, trainable_layers=1)
    with caplog.at_level("WARNING", logger="playbook.training"):
        history = train_sft(tiny_causal_lm, tokenizer, data, config).history
    assert history["step"].max() == 4  # 2 passes of ceil(3 / 2) = 2 steps, not 50
    assert "SFT: 50 steps of 2 would be 33 passes over 3 examples; training 4 steps (2 passes)" in caplog.text


def test_prompts_are_cut_to_their_last_messages_so_long_histories_still_train(tiny_causal_lm, tokenizer):
    long_history = [
        {"role": "user", "content": "tell me a story " * 40},
        {"role": "assistant", "content": "Once upon a time " * 40},
        {"role": "user", "content": "Shorter, please."},
    ]
    data = Dataset.from_list([{"prompt": long_history, "completion": [{"role": "assistant", "content": "The end."}]}])
    kept = SFTConfig(steps=1, batch_size=1, max_length=64, prompt_messages=1, trainable_layers=1)
    assert train_sft(tiny_causal_lm, tokenizer, data, kept).details == {
        "examples": 1,
        "examples_dropped": 0,
        "resumed_at_step": 0,
    }
    whole = SFTConfig(steps=1, batch_size=1, max_length=64, prompt_messages=3, trainable_layers=1)
    with pytest.raises(ValueError, match="max_length=64"):  # the whole history fills it: TRL drops the example
        train_sft(tiny_causal_lm, tokenizer, data, whole)


@pytest.mark.slow
def test_sft_lowers_the_reply_nll_of_the_embedded_model(shared_data):
    from playbook.data import hh_rlhf_split

    policy, tokenizer = load_model()
    data = sft_conversations(hh_rlhf_split("smoke")["train"])
    assert len(data) == 16
    conversations = [row["prompt"][-1:] + row["completion"] for row in data]  # as train_sft trims them
    # batches of 2: these 16 conversations run from 46 to 251 tokens, and in batches of 8 most positions were padding
    before = reply_nll(policy, tokenizer, conversations, batch_size=2)
    config = SFTConfig(steps=3, batch_size=4, max_length=128, learning_rate=5e-5, prompt_messages=1)
    result = train_sft(policy, tokenizer, data, config)
    after = reply_nll(result.model, tokenizer, conversations, batch_size=2)
    assert after.mean() < before.mean() - 0.05  # 3 steps lowered it by 0.12 nats/token, 6 steps by 0.21


def test_trainer_scratch_folders_are_removed_when_python_exits(monkeypatch):
    """TRL needs an output_dir even when nothing is saved there; each one is registered for removal at exit."""
    registered = []
    monkeypatch.setattr(training.atexit, "register", lambda *call, **keywords: registered.append((call, keywords)))
    folder = Path(training.scratch_dir("playbook-test-"))
    assert folder.is_dir() and folder.name.startswith("playbook-test-")
    ((function, *arguments), keywords) = registered[0]
    function(*arguments, **keywords)
    assert not folder.exists() and len(registered) == 1
