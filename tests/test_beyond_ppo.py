import pytest
import torch
from datasets import Dataset

from conftest import cpu_state
from playbook.beyond_ppo import DPOConfig, RLOOConfig, evaluate_policies, train_dpo, train_rloo

PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"Question {i}: is the sky blue?"}],
        "chosen": [{"role": "assistant", "content": "Yes, on a clear day."}],
        "rejected": [{"role": "assistant", "content": "No idea, go away."}],
    }
    for i in range(8)
]


def top_layer_changed_and_bottom_frozen(model, before):
    """Only the top decoder layer and the final norm may change; returns whether anything did."""
    after = cpu_state(model)  # a trainer on a GPU moves the model there
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert all(name.startswith(("model.layers.1.", "model.norm")) for name in changed), changed
    return bool(changed)


def test_dpo_raises_the_chosen_over_rejected_margin_and_trains_only_the_top_layer(tiny_causal_lm, tokenizer, tmp_path):
    torch.manual_seed(0)
    reference = type(tiny_causal_lm)(tiny_causal_lm.config).eval()
    reference.load_state_dict(tiny_causal_lm.state_dict())
    before = cpu_state(tiny_causal_lm)
    run = train_dpo(
        tiny_causal_lm,
        reference,
        tokenizer,
        Dataset.from_list(PAIRS),
        DPOConfig(steps=6, max_passes=6, batch_size=4, learning_rate=5e-2, trainable_layers=1),
        output_dir=tmp_path / "dpo",
    )
    assert run.seconds > 0 and run.output_dir == tmp_path / "dpo"
    assert (tmp_path / "dpo" / "config.json").is_file()
    margins = run.history["rewards/margins"].dropna()
    assert len(margins) == 6
    assert run.details == {"pairs": 8, "pairs kept": 8}
    assert (run.history["seconds"] > 0).all()  # each logged step's wall time
    assert margins.iloc[-1] > margins.iloc[0] + 0.05
    assert top_layer_changed_and_bottom_frozen(tiny_causal_lm, before)


def test_dpo_in_micro_batches_takes_the_same_step_as_in_one_pass(tiny_causal_lm, tokenizer):
    """Gradient accumulation (the gpu profile's micro_batch_size) bounds memory without changing the update."""
    reference = type(tiny_causal_lm)(tiny_causal_lm.config).eval()
    reference.load_state_dict(tiny_causal_lm.state_dict())
    start = cpu_state(tiny_causal_lm)
    trained = {}
    for micro in (None, 1):
        tiny_causal_lm.load_state_dict(start)
        config = DPOConfig(steps=1, batch_size=4, learning_rate=1e-3, trainable_layers=1, micro_batch_size=micro)
        model = train_dpo(tiny_causal_lm, reference, tokenizer, Dataset.from_list(PAIRS[:4]), config).model
        trained[micro] = cpu_state(model)
    moved = max((trained[None][name] - start[name]).abs().max() for name in start)
    assert moved > 5e-4  # Adam's first step moves weights by about the learning rate
    assert all(torch.allclose(trained[None][name], trained[1][name], atol=1e-6) for name in start)


def test_dpo_counts_the_pairs_its_cut_to_max_length_leaves_without_a_reply(tiny_causal_lm, tokenizer):
    reference = type(tiny_causal_lm)(tiny_causal_lm.config).eval()
    reference.load_state_dict(tiny_causal_lm.state_dict())
    long_prompt = {**PAIRS[0], "prompt": [{"role": "user", "content": "Is the sky blue? " * 40}]}
    config = DPOConfig(steps=1, batch_size=2, max_length=48, trainable_layers=1)
    run = train_dpo(tiny_causal_lm, reference, tokenizer, Dataset.from_list([*PAIRS[:3], long_prompt]), config)
    assert run.details == {"pairs": 4, "pairs kept": 3}


def test_dpo_names_a_missing_column(tiny_causal_lm, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="'rejected'"):
        train_dpo(
            tiny_causal_lm,
            tiny_causal_lm,
            tokenizer,
            Dataset.from_list([{"prompt": "a", "chosen": "b"}]),
            DPOConfig(steps=1),
        )


def test_rloo_runs_the_requested_steps_with_our_reward_interface(tiny_causal_lm, tokenizer, tmp_path):
    # TRL loads RLOO's frozen reference from the policy's folder, so the policy must come from one.
    tiny_causal_lm.save_pretrained(tmp_path / "tiny")
    policy = type(tiny_causal_lm).from_pretrained(tmp_path / "tiny")
    seen = []

    def length_reward(prompts, completions, **_):
        seen.append([len(prompt) for prompt in prompts])
        return [float(len(c[-1]["content"])) for c in completions]

    earlier = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}]
    prompts = [earlier + row["prompt"] for row in PAIRS]
    before = cpu_state(policy)
    config = RLOOConfig(
        steps=2, prompts_per_step=2, generations=2, max_completion_length=6, prompt_messages=1, trainable_layers=1
    )
    run = train_rloo(policy, None, tokenizer, prompts, length_reward, config)
    assert run.output_dir is None
    assert run.history["step"].max() == 2
    assert "reward" in run.history.columns
    assert seen and all(lengths == [1, 1, 1, 1] for lengths in seen)  # 4 replies a step, each to the last message
    assert top_layer_changed_and_bottom_frozen(policy, before)
    with pytest.raises(ValueError, match="RLOOConfig.generations=1: needs at least 2"):
        RLOOConfig(generations=1)
    with pytest.raises(ValueError, match="reference: TRL's RLOO uses the policy's own folder"):
        train_rloo(policy, tiny_causal_lm, tokenizer, prompts, length_reward, config)


class CountingRewardModel:
    """Scores 0, 1, 2, ... for the first policy evaluated, 1, 2, 3, ... for the second: a gain of exactly 1 sd."""

    def __init__(self):
        self.calls = 0

    def score_batch(self, prompts, replies):
        self.calls += 1
        return [float(i + self.calls - 1) for i in range(len(replies))]


def test_evaluate_policies_reports_gain_against_the_baseline(tiny_causal_lm, tokenizer):
    prompts = [row["prompt"] for row in PAIRS[:3]]
    policies = {"sft": tiny_causal_lm, "other": tiny_causal_lm}
    table, replies = evaluate_policies(
        policies, tokenizer, prompts, CountingRewardModel(), max_new_tokens=4, baseline="sft"
    )
    assert table["gain (sd of baseline)"].tolist() == pytest.approx([0.0, 1.0])
    # every prompt scores exactly 1 higher: the paired interval has no width, and three of three up gives p = 2/8
    assert table.loc["other", ["gain 95% low", "gain 95% high", "Wilcoxon p"]].tolist() == pytest.approx([1, 1, 0.25])
    assert table["KL to baseline (nats/reply)"].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # the same model
    assert table.loc["other", "mean RM score"] == pytest.approx(2.0)
    assert len(replies["sft"]) == 3 and replies["sft"] == replies["other"]
    with pytest.raises(ValueError, match="baseline"):
        evaluate_policies(policies, tokenizer, prompts, CountingRewardModel(), max_new_tokens=4, baseline="ppo")
