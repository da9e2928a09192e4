import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from playbook.feedback import PairwiseFeedback, to_preference_row
from playbook.models import load_model
from playbook.reward import (
    RewardConfig,
    RewardModel,
    accuracy_by_length,
    backbone_features,
    cached_head_features,
    check_preference_dataset,
    encode_conversation,
    fit_bradley_terry_head,
    give_distinct_pad_token,
    pairwise_accuracy,
    plot_history,
    reading_positions,
    reward_margins,
    seconds_per_pair,
    train_reward_model,
    trl_steps,
)
from playbook.stats import proportion_interval

TOPICS = ["the weather", "my homework", "a recipe", "trains", "music", "a poem", "math", "my garden", "a trip", "cats"]


def separable_pairs(count: int, offset: int = 0) -> Dataset:
    """Polite, helpful replies always beat curt ones: trivially separable by the reply alone."""
    rows = []
    for i in range(offset, offset + count):
        topic = TOPICS[i % len(TOPICS)]
        rows.append(
            to_preference_row(
                PairwiseFeedback(
                    f"Can you help me with {topic}? ({i})",
                    f"Of course! Happy to help with {topic}.",
                    "No. Go away.",
                )
            )
        )
    return Dataset.from_list(rows)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_encoding_keeps_the_end_and_stops_at_the_closing_token(tokenizer):
    conversation = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Final answer."}]
    ids = encode_conversation(tokenizer, conversation, max_length=16)
    assert len(ids) == 16 and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids).endswith("Final answer.<|im_end|>")


def test_distinct_pad_token(tokenizer, tiny_causal_lm):
    local = type(tokenizer).from_pretrained(tokenizer.name_or_path) if tokenizer.name_or_path else tokenizer
    give_distinct_pad_token(local, tiny_causal_lm)
    assert local.pad_token_id != local.eos_token_id == 2
    assert tiny_causal_lm.config.pad_token_id == local.pad_token_id


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": [], "chosen": []}], r"missing column\(s\) \['rejected'\]"),
        (
            [
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": " "}],
                }
            ],
            r"train_dataset\[0\]: empty rejected response",
        ),
    ],
)
def test_bad_datasets_are_rejected_clearly(rows, message):
    with pytest.raises(ValueError, match=message):
        check_preference_dataset(Dataset.from_list(rows), "train_dataset")


def test_missing_reward_model_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="05_reward_model.ipynb"):
        RewardModel.load(tmp_path / "nothing")


def test_bradley_terry_head_recovers_a_separating_direction():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(200, 8), torch.randn(200, 8)
    chosen[:, 3] += 3.0  # the preferred side is higher along one axis
    weight, history = fit_bradley_terry_head(chosen, rejected, l2=0.01, steps=50, eval_pairs=(chosen, rejected))
    assert weight.abs().argmax() == 3
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] and history["eval_accuracy"].iloc[-1] > 0.9


def test_plot_history_names_the_loss_each_method_minimised():
    steps = pd.DataFrame({"step": [0, 10], "loss": [0.69, 0.6], "accuracy": [0.5, 0.7]})
    trainer_axes = plot_history(steps).axes
    assert trainer_axes[0].get_title() == "Bradley–Terry loss (training pairs)"
    assert trainer_axes[0].get_xlabel() == "step"
    torch.manual_seed(0)
    chosen, rejected = torch.randn(50, 4) + 1, torch.randn(50, 4)
    _, history = fit_bradley_terry_head(chosen, rejected, l2=0.1, steps=30)
    assert history["iterations"].iloc[0] == 0 and history["iterations"].is_monotonic_increasing
    assert history["iterations"].iloc[-1] <= 30
    head_axes = plot_history(history).axes
    assert head_axes[0].get_title() == "Bradley–Terry loss + ½λ‖w‖² (training pairs)"
    assert head_axes[0].get_xlabel() == head_axes[1].get_xlabel() == "L-BFGS iterations"
    assert list(head_axes[0].lines[0].get_xdata()) == history["iterations"].tolist()


@pytest.mark.slow
def test_head_method_learns_separable_pairs_and_scores_consistently(tmp_path):
    config = RewardConfig.from_profile("smoke", layers=2, max_length=48)
    result = train_reward_model(
        separable_pairs(24), config, eval_pairs=separable_pairs(10, offset=100), output_dir=tmp_path / "rm"
    )
    assert result.output_dir == tmp_path / "rm" and result.seconds > 0
    assert ((result.details["eval_margins_after"] > 0).mean()) > 0.9
    assert result.history["loss"].iloc[-1] < result.history["loss"].iloc[0]
    reloaded = RewardModel.load(tmp_path / "rm")
    assert reloaded.model.config.num_hidden_layers == 2
    held_out = separable_pairs(10, offset=200)
    assert pairwise_accuracy(reloaded, held_out) > 0.9
    margins = reward_margins(reloaded, held_out)
    row = held_out[0]
    direct = reloaded.score(row["prompt"], row["chosen"][0]["content"]) - reloaded.score(
        row["prompt"], row["rejected"][0]["content"]
    )
    assert margins[0] == pytest.approx(direct, abs=1e-4)


@pytest.mark.slow
def test_head_method_resumes_feature_extraction_to_the_same_weights(tmp_path, monkeypatch):
    config = RewardConfig.from_profile("smoke", layers=2, max_length=48, batch_size=2)
    data = separable_pairs(12)
    assert not train_reward_model(data, config, output_dir=tmp_path / "straight").details["features_were_cached"]

    calls = {"n": 0}
    real_forward = torch.nn.Module.__call__

    def flaky(module, *args, **kwargs):
        if type(module).__name__ == "LlamaModel":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("laptop lid closed")
        return real_forward(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(data, config, output_dir=tmp_path / "resumed")
    monkeypatch.undo()
    saved_chunks = list((tmp_path / "resumed-checkpoints").glob("train-chosen-*.pt"))
    assert len(saved_chunks) == 2  # the chunks finished before the interruption
    assert train_reward_model(data, config, output_dir=tmp_path / "resumed").details["features_were_cached"]
    assert torch.equal(weights(tmp_path / "straight")["score.weight"], weights(tmp_path / "resumed")["score.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_trl_methods_learn_and_resume_to_identical_weights(tiny_base, tmp_path, monkeypatch, method):
    from trl import RewardTrainer

    config = RewardConfig.from_profile("smoke", layers=2, max_length=40, batch_size=4, steps=8, method=method)
    data = separable_pairs(32)
    straight = train_reward_model(data, config, base=tiny_base, output_dir=tmp_path / "a")
    losses = straight.history["loss"].dropna()
    assert losses.iloc[-1] < losses.iloc[0]

    real_step, calls = RewardTrainer.training_step, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the checkpoint at step 4
            raise KeyboardInterrupt("power cut")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(RewardTrainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(data, config, base=tiny_base, output_dir=tmp_path / "b")
    monkeypatch.undo()
    assert (tmp_path / "b-checkpoints" / "checkpoint-4").is_dir()
    train_reward_model(data, config, base=tiny_base, output_dir=tmp_path / "b")
    first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name], second[name], atol=1e-6), name


@pytest.mark.slow
def test_resume_false_sets_old_checkpoints_aside_instead_of_deleting(tmp_path):
    config = RewardConfig.from_profile("smoke", layers=2, max_length=40)
    train_reward_model(separable_pairs(8), config, output_dir=tmp_path / "rm")
    train_reward_model(separable_pairs(8), config, output_dir=tmp_path / "rm", resume=False)
    assert len(list(tmp_path.glob("rm-checkpoints-set-aside-*"))) == 1
    assert json.loads((tmp_path / "rm" / "reward_settings.json").read_text())["method"] == "head"


# ------------------------------------------------------------------------------ saving, loading, bad folders


@pytest.fixture
def tiny_reward_model(tiny_base):
    model, tokenizer = load_model(tiny_base, task="reward", device="cpu")
    return RewardModel(model, tokenizer, max_length=32)


def test_a_stop_while_publishing_leaves_the_previous_model_and_its_settings(tiny_reward_model, tmp_path, monkeypatch):
    folder = tiny_reward_model.save(tmp_path / "rm", extra={"method": "head"})
    tiny_reward_model.max_length = 64
    seen_in_staging = []
    real_rename = Path.rename

    def stop_at_publishing(source, destination):
        if source.name.endswith(".partial") and Path(destination) == folder:
            seen_in_staging.append(json.loads((source / "reward_settings.json").read_text())["max_length"])
            raise KeyboardInterrupt("power cut")
        return real_rename(source, destination)

    monkeypatch.setattr(Path, "rename", stop_at_publishing)
    with pytest.raises(KeyboardInterrupt):
        tiny_reward_model.save(folder)
    monkeypatch.undo()
    assert seen_in_staging == [64]  # the settings travel inside the copy that one rename publishes
    assert RewardModel.load(folder, device="cpu").max_length == 32
    tiny_reward_model.save(folder)
    assert RewardModel.load(folder, device="cpu").max_length == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm", "tiny-base"]


def _language_model_with_settings(folder, tiny_base, reward_model):
    shutil.copytree(tiny_base, folder)
    (folder / "reward_settings.json").write_text('{"max_length": 32}')


def _damaged_settings(text):
    def damage(folder, tiny_base, reward_model):
        reward_model.save(folder)
        (folder / "reward_settings.json").write_text(text)

    return damage


def _truncated_reward_weights(folder, tiny_base, reward_model):
    reward_model.save(folder)
    weights_file = folder / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:500])


BAD_REWARD_FOLDERS = {
    "language model with settings": (
        _language_model_with_settings,
        r"rm holds no trained reward head \(its weights have no score\.weight\): it looks like a language model",
    ),
    "settings not JSON": (
        _damaged_settings("{"),
        r"rm/reward_settings\.json: damaged \(JSONDecodeError: .*Fix it or save the reward model again",
    ),
    "settings without max_length": (
        _damaged_settings('{"method": "head"}'),
        r"rm/reward_settings\.json: damaged \(KeyError: 'max_length'\); it must be a JSON object with 'max_length'",
    ),
    "max_length not a number": (_damaged_settings('{"max_length": "long"}'), r"'max_length' must be a positive"),
    "weights cut short": (
        _truncated_reward_weights,
        r"rm/model\.safetensors: cannot be read .* The reward model in .*rm is damaged: run notebooks/05",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REWARD_FOLDERS))
def test_bad_reward_folders_raise_naming_the_folder_or_file(case, tiny_base, tiny_reward_model, tmp_path):
    make, message = BAD_REWARD_FOLDERS[case]
    make(tmp_path / "rm", tiny_base, tiny_reward_model)
    with pytest.raises(ValueError, match=message):
        RewardModel.load(tmp_path / "rm", device="cpu")


def test_a_damaged_feature_chunk_is_named_and_computed_again(tiny_reward_model, tmp_path, caplog):
    model, tokenizer = tiny_reward_model.model, tiny_reward_model.tokenizer
    encoded = [tokenizer(f"text number {i}").input_ids for i in range(6)]
    fresh = backbone_features(model, encoded, tokenizer.pad_token_id, batch_size=2)
    backbone_features(model, encoded, tokenizer.pad_token_id, batch_size=2, cache_dir=tmp_path)
    damaged = tmp_path / "features-00001.pt"
    damaged.write_bytes(damaged.read_bytes()[:40])
    with caplog.at_level("WARNING", logger="playbook.reward"):
        resumed = backbone_features(model, encoded, tokenizer.pad_token_id, batch_size=2, cache_dir=tmp_path)
    assert f"{damaged} cannot be read" in caplog.text and "computing this chunk again" in caplog.text
    assert torch.equal(resumed, fresh)
    assert torch.load(damaged).shape == (2, model.config.hidden_size)  # repaired for the next resume


def test_a_deleted_feature_cache_folder_is_made_again(tiny_reward_model, tmp_path):
    # notebook 05 invites deleting the checkpoints folder to time a whole run; notebook 08 reads the features from it
    model, tokenizer = tiny_reward_model.model, tiny_reward_model.tokenizer
    encoded = [tokenizer(f"text number {i}").input_ids for i in range(5)]
    cache = tmp_path / "reward_model-checkpoints"
    cached = backbone_features(model, encoded, tokenizer.pad_token_id, batch_size=2, cache_dir=cache)
    assert sorted(path.name for path in cache.iterdir()) == [f"features-{n:05d}.pt" for n in range(3)]
    assert torch.equal(cached, backbone_features(model, encoded, tokenizer.pad_token_id, batch_size=2))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("layers", 0, "RewardConfig.layers=0: must be positive"),
        ("batch_size", 0, "RewardConfig.batch_size=0: must be positive"),
        ("steps", -5, "RewardConfig.steps=-5: must be positive"),
        ("method", "heads", "RewardConfig.method='heads': use 'head', 'lora' or 'full'"),
    ],
)
def test_reward_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RewardConfig(**{field: value})


def test_reward_config_from_profile():
    assert RewardConfig.from_profile("cpu") == RewardConfig()
    assert RewardConfig.from_profile("gpu").method == "lora"
    with pytest.raises(TypeError, match="rm_layers"):
        RewardConfig.from_profile("cpu", rm_layers=3)


def test_trl_steps_cap_the_passes_over_the_training_pairs(caplog):
    gpu = RewardConfig(method="lora", batch_size=32, steps=2_000)
    with caplog.at_level("WARNING", logger="playbook.training"):
        assert trl_steps(gpu, 1_346) == 3 * 43  # ceil(1346 / 32) = 43 steps per pass
    assert "reward model: 2000 steps of 32 would be 48 passes over 1346 examples" in caplog.text
    assert trl_steps(RewardConfig(method="lora", batch_size=8, steps=100), 1_346) == 100
    assert trl_steps(gpu, 100, max_epochs=1) == 4


def test_accuracy_by_length_splits_pairs_and_gives_wilson_intervals():
    margins = [1.0, -1.0, 2.0, 0.5, -0.5, 3.0]
    chosen = [1, 1, 1, 9, 9, 5]
    rejected = [5, 5, 5, 2, 2, 5]
    table = accuracy_by_length(margins, chosen, rejected)
    assert table.loc["chosen is shorter", "pairs"] == 3
    assert table.loc["chosen is shorter", "accuracy"] == pytest.approx(2 / 3)
    assert tuple(table.loc["chosen is shorter", ["low", "high"]]) == pytest.approx(proportion_interval(2, 3))
    assert table.loc["chosen is longer", "accuracy"] == pytest.approx(0.5)
    assert table.loc["same length", "pairs"] == 1 and table.loc["same length", "accuracy"] == 1.0
    with pytest.raises(ValueError, match="one value per pair"):
        accuracy_by_length([1.0], [1, 2], [2, 1])


def test_cached_head_features_are_the_vectors_the_head_scores(tiny_reward_model, tmp_path):
    give_distinct_pad_token(tiny_reward_model.tokenizer, tiny_reward_model.model)
    pairs = separable_pairs(5)
    config = RewardConfig(max_length=32, batch_size=2)
    chosen, rejected = cached_head_features(tiny_reward_model, pairs, config, tmp_path, split="train")
    assert sorted(p.name for p in tmp_path.glob("train-chosen-*.pt")) == [f"train-chosen-{n:05d}.pt" for n in range(2)]
    again, _ = cached_head_features(tiny_reward_model, pairs, config, tmp_path, split="train")  # read from the cache
    assert torch.equal(again, chosen)
    head = tiny_reward_model.model.score.weight.data[0]
    assert (chosen - rejected) @ head == pytest.approx(torch.tensor(reward_margins(tiny_reward_model, pairs)), abs=1e-4)
    with pytest.raises(ValueError, match="split='test'"):
        cached_head_features(tiny_reward_model, pairs, config, tmp_path, split="test")


def test_reading_positions_mark_the_closing_token_and_the_padding(tiny_reward_model):
    give_distinct_pad_token(tiny_reward_model.tokenizer, tiny_reward_model.model)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    length = len(encode_conversation(tiny_reward_model.tokenizer, conversation, tiny_reward_model.max_length))
    table = reading_positions(tiny_reward_model, conversation, pad_to=length + 2, last=3)
    assert list(table.index) == list(range(length - 3, length + 2))
    assert list(table["attention mask"]) == [1, 1, 1, 0, 0]
    read = table.loc[length - 1]
    assert read["token"] == "'<|im_end|>'" and read[""].startswith("reward read here")
    assert table.loc[length - 3, "token"] == "' there'"  # the token's text, quoted: its leading space shows
    assert read["reward if read here"] == pytest.approx(
        tiny_reward_model.score_conversations([conversation])[0], abs=1e-4
    )
    assert table.loc[length - 2, ""].startswith("would be read here")
    with pytest.raises(ValueError, match="pad_to=2"):
        reading_positions(tiny_reward_model, conversation, pad_to=2)


def test_seconds_per_pair_times_each_method_and_leaves_the_model_as_it_was(tiny_reward_model):
    model, tokenizer = tiny_reward_model.model, tiny_reward_model.tokenizer
    give_distinct_pad_token(tokenizer, model)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainable = [p.requires_grad for p in model.parameters()]
    config = RewardConfig(max_length=32)
    for method in ("head", "lora", "full"):
        assert 0 < seconds_per_pair(model, tokenizer, separable_pairs(2), config, method=method) < 60
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[name], before[name]) for name in before)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == trainable
    with pytest.raises(ValueError, match="method='fast'"):
        seconds_per_pair(model, tokenizer, separable_pairs(2), config, method="fast")
