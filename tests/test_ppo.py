import math
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch

from conftest import copies, value_model_like
from playbook.config import get_profile
from playbook.ppo import (
    PPOConfig,
    PPOTrainer,
    advantage_table,
    checked_scores,
    clipping_table,
    compare_runs,
    compute_gae,
    explained_variance,
    kl_shaped_rewards,
    policy_loss,
    token_moments,
    truncate_after_eos,
    value_loss,
    word_count_reward,
)
from playbook.tensors import entropy_from_logits, logprobs_from_logits, masked_mean, masked_var, masked_whiten


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_by_hand_with_padding():
    rewards, values, mask = t([[1, 2, 3]]), t([[0.5, 1.0, 1.5]]), t([[1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=1 (last valid): δ = 2 + 0.9·0 − 1 = 1;  t=0: δ = 1 + 0.9·1 − 0.5 = 1.4, A = 1.4 + 0.72·1 = 2.12
    torch.testing.assert_close(advantages, t([[2.12, 1.0, 0.0]]))
    torch.testing.assert_close(returns, advantages + values)


def test_gae_all_padding_and_length_one_rows():
    rewards = t([[9, 9, 9], [5, 9, 9]])
    values = t([[1, 2, 3], [2, 7, 7]])
    mask = t([[0, 0, 0], [1, 0, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages, t([[0, 0, 0], [3, 0, 0]]))  # value after the only token is 0
    torch.testing.assert_close(returns[1, 0], torch.tensor(5.0))


def test_gae_without_discounting_sums_future_rewards():
    rewards, values, mask = t([[0, 0, 1]]), torch.zeros(1, 3), torch.ones(1, 3)
    advantages, _ = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, t([[1, 1, 1]]))


def test_masked_statistics_ignore_padding():
    values, mask = t([[1, 3, 100], [5, 100, 100]]), t([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    torch.testing.assert_close(masked_mean(values, mask, dim=1), t([2, 5]))
    assert masked_var(values, mask).item() == pytest.approx(4.0)  # unbiased variance of 1, 3, 5
    assert masked_var(values, mask, unbiased=False).item() == pytest.approx(8 / 3)
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(whitened, t([[-1, 0, 0], [1, 0, 0]]), atol=1e-4, rtol=0)
    assert masked_mean(values, torch.zeros_like(mask)).item() == 0.0  # nothing valid: 0, not NaN


def test_policy_loss_clips_by_hand():
    new, old, advantages, mask = t([[0.0, math.log(2.0)]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([[1, 1]])
    loss, clipfrac = policy_loss(new, old, advantages, mask, clip_range=0.2)
    # ratios 1 and 2; max(−A·r, −A·clip(r)) = −1 and −1.2
    assert loss.item() == pytest.approx(-1.1)
    assert clipfrac.item() == pytest.approx(0.5)
    masked_loss, _ = policy_loss(new, old, advantages, t([[1, 0]]), clip_range=0.2)
    assert masked_loss.item() == pytest.approx(-1.0)


def test_value_loss_clips_by_hand():
    loss, clipfrac = value_loss(t([[1.0]]), t([[0.0]]), t([[2.0]]), t([[1]]), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.2 - 2.0) ** 2)  # the clipped error (3.24) is the larger
    assert clipfrac.item() == 1.0
    loss, clipfrac = value_loss(t([[0.1]]), t([[0.0]]), t([[2.0]]), t([[1]]), clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * 1.9**2) and clipfrac.item() == 0.0


def test_kl_shaped_rewards_put_the_score_on_the_last_real_token():
    logprobs, ref = t([[-1, -2, -3], [-1, -1, -1]]), t([[-1.5, -1, -3], [-1, -1, -1]])
    mask, scores = t([[1, 1, 0], [0, 0, 0]]), t([2.0, 7.0])
    rewards = kl_shaped_rewards(logprobs, ref, mask, scores, kl_coef=0.1)
    torch.testing.assert_close(rewards, t([[-0.05, 2.1, 0.0], [0.0, 0.0, 0.0]]))  # an all-padding row gets nothing


def test_truncate_after_first_eos():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    truncated, mask, has_eos = truncate_after_eos(responses, eos_id=2, pad_id=0)
    assert truncated.tolist() == [[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_logprobs_and_entropy():
    logits = torch.log(t([[[0.5, 0.25, 0.25]]]))
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.25))
    assert entropy_from_logits(logits).item() == pytest.approx(-(0.5 * math.log(0.5) + 0.5 * math.log(0.25)))


def test_config_from_profile_and_checks():
    config = PPOConfig.from_profile(get_profile("cpu"), kl_coef=0.2)
    assert (config.batch_size, config.steps, config.kl_coef) == (8, 30, 0.2)
    with pytest.raises(ValueError, match="mini_batch_size=4: must divide batch_size 6"):
        PPOConfig(batch_size=6, mini_batch_size=4)
    with pytest.raises(TypeError, match="kl_coeff"):
        PPOConfig.from_profile(get_profile("cpu"), kl_coeff=0.2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size=0: must be positive"),
        ("batch_size", -8, "batch_size=-8: must be positive"),
        ("steps", -1, "steps=-1: must be 0 or more"),
        ("kl_coef", -0.1, "kl_coef=-0.1: must be 0 or more"),
        ("learning_rate", -1e-5, "learning_rate=-1e-05: must be positive"),
        ("ppo_epochs", 0, "ppo_epochs=0: must be positive"),
        ("mini_batch_size", 0, "mini_batch_size=0: must be positive"),
        ("temperature", 0.0, "temperature=0.0: must be positive"),
        ("gamma", 1.5, "gamma=1.5: must be in"),
        ("lam", -0.5, "lam=-0.5: must be in"),
        ("policy_trainable_layers", 0, "policy_trainable_layers=0: must be positive, or None"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(f"PPOConfig.{message}")):
        PPOConfig(**{field: value})


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([1.0], "returned 1 scores for 2 replies: return one per reply"),
        ([1.0, 2.0, 3.0], "returned 3 scores for 2 replies"),
        ([1.0, float("nan")], "non-finite scores at replies [1]"),
        ([float("inf"), 0.0], "non-finite scores at replies [0]"),
    ],
)
def test_reward_function_boundary_is_checked(scores, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        checked_scores(scores, 2)
    torch.testing.assert_close(checked_scores([1, 2], 2), t([1.0, 2.0]))


def test_saved_policy_keeps_its_settings_and_history(tiny_causal_lm, tokenizer, tiny_ppo_config, tmp_path):
    reference, policy = copies(tiny_causal_lm, 2)
    config = tiny_ppo_config(scale_samples=0, steps=1)
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour, please."}]]
    trainer = PPOTrainer(
        policy, reference, tokenizer, prompts, lambda p, r: [1.0] * len(r), config, value_model=value_model_like(policy)
    )
    trainer.train()
    trainer.train(output_dir=tmp_path / "policy")  # a second call numbers its steps on, and the file keeps both
    assert PPOConfig.saved_with(tmp_path / "policy") == config
    assert pd.read_csv(tmp_path / "policy" / "history.csv")["step"].tolist() == [1, 2]
    assert config.optimizer_updates == 1 * config.ppo_epochs * 2 and PPOConfig().optimizer_updates == 30 * 4 * 2
    with pytest.raises(FileNotFoundError, match="ppo_config.json"):
        PPOConfig.saved_with(tmp_path)


def test_config_defaults_are_the_measured_cpu_run():
    assert PPOConfig.from_profile(get_profile("cpu")) == PPOConfig()
    gpu = PPOConfig.from_profile(get_profile("gpu"))
    assert (
        gpu.policy_trainable_layers is None and gpu.batch_size == 64 and gpu.learning_rate < PPOConfig().learning_rate
    )


@pytest.mark.slow
def test_ppo_raises_a_programmatic_reward_on_the_embedded_model():
    from playbook.models import load_model
    from playbook.reward import keep_lower_layers

    def commas(prompts, replies):
        return [float(reply.count(",")) for reply in replies]

    policy, tokenizer = load_model()
    reference, _ = load_model()
    value, _ = load_model(task="reward")
    keep_lower_layers(value, 2)  # its random head is zeroed by the trainer (zero_value_head), not left to its draw
    prompts = [
        [{"role": "user", "content": question}]
        for question in (
            "Name some fruits.",
            "List three colours.",
            "Describe your day.",
            "What animals live on farms?",
        )
    ]
    config = PPOConfig(
        steps=4,
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=2,
        response_length=12,
        learning_rate=2e-4,
        value_learning_rate=1e-4,
        kl_coef=0.02,
        missing_eos_penalty=0.0,
        scale_samples=0,
        policy_trainable_layers=6,
    )
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, commas, config, value_model=value)
    assert trainer.trunk.starts == {"policy": 24, "reference": 24, "value": 0}  # the frozen 24 layers run once
    before = sum(commas(prompts, trainer.respond(prompts)))
    history = trainer.train().history
    after = sum(commas(prompts, trainer.respond(prompts)))
    assert after >= before + 2, (before, after)  # seeds 0-3 gain 4, 4, 5 and 7 commas
    assert history["score"].tail(2).mean() > history["score"].iloc[0]  # sampled replies too
    assert history["kl"].iloc[-1] > 0 and (history["response_length"] <= 12).all()
    cut_off_only = history["ended"] == 0  # a step whose replies all ran to the limit has the limit as mean length
    assert history["ended"].between(0, 1).all() and (history.loc[cut_off_only, "response_length"] == 12).all()
    assert (history.loc[history["response_length"] < 12, "ended"] > 0).all()
    phases = history[["seconds_generate", "seconds_score", "seconds_forward", "seconds_update"]]
    assert (phases > 0).all().all() and (phases.sum(axis=1) <= history["seconds"]).all()
    assert set(history.columns) >= {"score", "kl", "kl_k3", "policy_loss", "value_loss", "policy_clipfrac", "entropy"}


def test_trainer_runs_frozen_layers_once_with_the_same_numbers(tiny_causal_lm, tokenizer, tiny_ppo_config):
    reference, policy = copies(tiny_causal_lm, 2)
    value = value_model_like(tiny_causal_lm)
    config = tiny_ppo_config(scale_samples=0)
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour, please."}]]
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, lambda p, r: [1.0] * len(r), config, value_model=value)
    assert trainer.trunk.starts == {"policy": 1, "reference": 1, "value": 1}
    assert trainer.train(0).history.empty and trainer.steps_done == 0  # zero steps means none, not the default
    assert (
        not policy.model.embed_tokens.weight.requires_grad
        and not value.model.layers[0].self_attn.q_proj.weight.requires_grad
    )
    batch = trainer.rollout(prompts)
    ids = torch.cat([batch.query, batch.response], 1)
    attention = torch.cat([batch.query_mask, batch.mask], 1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    width = batch.response.shape[1]
    with torch.no_grad():
        for model, expected in ((policy, batch.logprobs), (reference, batch.ref_logprobs)):
            logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
            logprobs = logprobs_from_logits(logits[:, -width - 1 : -1] / config.temperature, batch.response)
            torch.testing.assert_close(expected, logprobs, rtol=0, atol=1e-5)
        hidden = value.model(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state
        values = value.score(hidden[:, -width - 1 : -1]).squeeze(-1)
    torch.testing.assert_close(batch.values, trainer.scale.values(values), rtol=0, atol=1e-5)
    trainer.update(batch)
    assert not torch.equal(policy.model.layers[1].mlp.up_proj.weight, reference.model.layers[1].mlp.up_proj.weight)
    assert torch.equal(policy.model.layers[0].mlp.up_proj.weight, reference.model.layers[0].mlp.up_proj.weight)


def test_first_rollout_fixes_the_score_and_value_scale(tiny_causal_lm, tokenizer):
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour, please."}]]
    for normalize, expected_value_mean in ((False, 2.0), (True, 0.0)):
        reference, policy = copies(tiny_causal_lm, 2)
        config = PPOConfig(
            batch_size=2,
            mini_batch_size=1,
            response_length=4,
            normalize_scores=normalize,
            scale_samples=0,
            policy_trainable_layers=None,
            value_trainable_layers=None,
        )
        value = value_model_like(tiny_causal_lm)
        trainer = PPOTrainer(policy, reference, tokenizer, prompts, lambda p, r: [1.0, 3.0], config, value_model=value)
        batch = trainer.rollout(prompts)
        # the value model's mean over reply tokens lands on the mean score (on the normalised scale: 0)
        assert masked_mean(batch.values, batch.mask).item() == pytest.approx(expected_value_mean, abs=1e-5)
        assert batch.scores.tolist() == [1.0, 3.0]  # the history reports raw scores
        assert trainer.scale.scale == pytest.approx(math.sqrt(2.0) if normalize else 1.0)
        first = trainer.scale
        trainer.rollout(prompts)
        assert trainer.scale is first  # fixed once, on the SFT policy's replies
        stats = trainer.step()  # the logged objective weighs KL by β on the normalised scale: β·σ in raw units
        assert stats["score"] == pytest.approx(2.0)
        assert stats["rlhf_reward"] == pytest.approx(2.0 - config.kl_coef * first.scale * stats["kl"])


def test_a_zeroed_value_head_starts_every_estimate_at_the_mean_score_and_then_learns(
    tiny_causal_lm, tokenizer, tiny_ppo_config
):
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour, please."}]]
    reference, policy = copies(tiny_causal_lm, 2)
    value = value_model_like(tiny_causal_lm)
    lower_layer = value.model.layers[0].mlp.up_proj.weight.detach().clone()
    config = tiny_ppo_config(scale_samples=0, zero_value_head=True)
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, lambda p, r: [1.0, 3.0], config, value_model=value)
    assert not value.score.weight.any()
    batch = trainer.rollout(prompts)
    # raw estimates 0, their mean 0, so the calibration's shift is 0 and every normalised estimate is 0: the mean score
    assert trainer.scale.value_shift == 0.0 and not batch.values.any()
    assert trainer.step()["explained_variance"] == 0.0  # one constant estimate explains none of the returns
    assert value.score.weight.any()  # the head learns from the returns
    assert torch.equal(value.model.layers[0].mlp.up_proj.weight, lower_layer)  # below the trained layer, untouched
    kept = value_model_like(tiny_causal_lm)
    head = kept.score.weight.detach().clone()
    PPOTrainer(
        copies(tiny_causal_lm, 1)[0],
        reference,
        tokenizer,
        prompts,
        lambda p, r: [1.0, 3.0],
        tiny_ppo_config(zero_value_head=False),
        value_model=kept,
    )
    assert torch.equal(kept.score.weight, head)  # zero_value_head=False keeps the head it was given
    with pytest.raises(ValueError, match="zero_value_head: the value model .* no linear `score` head"):
        PPOTrainer(policy, reference, tokenizer, prompts, lambda p, r: [1.0, 3.0], config, value_model=policy)


def test_explained_variance_by_hand_and_summed_over_processes():
    values, returns = t([[1.0, 2.0, 9.0], [3.0, 0.0, 0.0]]), t([[1.0, 3.0, 7.0], [5.0, 0.0, 0.0]])
    mask = t([[1, 1, 0], [1, 0, 0]])
    # real tokens: R = 1, 3, 5 (variance 8/3); R − V = 0, 1, 2 (variance 2/3): 1 − (2/3)/(8/3) = 0.75
    assert explained_variance(token_moments(values, returns, mask)) == pytest.approx(0.75)
    halves = token_moments(values[:1], returns[:1], mask[:1]) + token_moments(values[1:], returns[1:], mask[1:])
    assert explained_variance(halves) == pytest.approx(0.75)  # two processes' sums give the same number
    assert explained_variance(token_moments(torch.zeros(2, 3), returns, mask)) == pytest.approx(0.0)
    assert explained_variance(token_moments(returns, returns, mask)) == pytest.approx(1.0)


def test_start_policy_replies_fix_the_scale_before_the_first_step(tiny_causal_lm, tokenizer, tiny_ppo_config):
    prompts = [[{"role": "user", "content": f"Say {word}."}] for word in ("one", "two", "three", "four", "five")]
    reference, policy = copies(tiny_causal_lm, 2)
    scores = iter([1.0, 2.0, 3.0, 4.0, 9.0, 0.0, 0.0, 7.0, 7.0])  # 5 warm-up replies, a rollout, a step
    seen = []

    def score(prompts, replies):
        seen.append([p[0]["content"] for p in prompts])
        return [next(scores) for _ in replies]

    config = tiny_ppo_config(scale_samples=5)
    trainer = PPOTrainer(policy, reference, tokenizer, prompts, score, config, value_model=value_model_like(policy))
    batch = trainer.rollout(prompts[:2])
    warm_up = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0])
    assert trainer.scale.shift == pytest.approx(warm_up.mean().item())
    assert trainer.scale.scale == pytest.approx(warm_up.std().item())  # from the 5 replies, not this rollout's 2
    assert batch.scores.tolist() == [0.0, 0.0] and [len(prompts) for prompts in seen] == [5, 2]
    assert seen[0] == [prompts[i][0]["content"] for i in trainer._order]  # the next training prompts, in one batch
    assert trainer.step()["score"] == pytest.approx(7.0)


def test_a_shared_start_scale_skips_the_scale_sample_and_draws_what_the_first_trainer_drew(
    tiny_causal_lm, tokenizer, tiny_ppo_config
):
    prompts = [[{"role": "user", "content": f"Say {word}."}] for word in ("one", "two", "three", "four", "five")]
    value = value_model_like(tiny_causal_lm)
    calls = []

    def score(prompts, replies):
        calls.append(([p[0]["content"] for p in prompts], list(replies)))
        return [float(len(reply)) for reply in replies]

    def trainer(start_scale=None, **changes):
        reference, policy = copies(tiny_causal_lm, 2)
        config = tiny_ppo_config(scale_samples=3, **changes)  # not a whole pass over the prompts
        value_model = copies(value, 1)[0]
        return PPOTrainer(
            policy, reference, tokenizer, prompts, score, config, value_model=value_model, start_scale=start_scale
        )

    first = trainer()
    first.train(2)
    start_replies, first_rollouts = calls[0], calls[1:]
    assert len(start_replies[1]) == 3 and len(first_rollouts) == 2
    calls.clear()
    shared = trainer(start_scale=first.start_scale, learning_rate=0.1)
    shared.train(2)
    assert shared.scale == first.scale and len(calls) == 2  # nothing sampled to fix the scale
    assert calls[0] == first_rollouts[0]  # the same prompts and the very same sampled replies
    assert calls[1][0] == first_rollouts[1][0]  # then the same prompts, from a policy updated differently
    uncalibrated = trainer(start_scale=first.start_scale, calibrate_value=False)
    uncalibrated.step()
    assert uncalibrated.scale == replace(first.scale, value_shift=0.0)  # its own config's calibrate_value
    with pytest.raises(ValueError, match="same seed, prompts and scale_samples"):
        trainer(start_scale=first.start_scale, seed=1)


def test_score_scale_maps_by_hand():
    from playbook.ppo import ScoreScale

    scale = ScoreScale(shift=-8.0, scale=2.0, value_shift=3.0)
    torch.testing.assert_close(scale.scores(t([-8.0, -6.0])), t([0.0, 1.0]))
    torch.testing.assert_close(scale.values(t([3.0, 7.0])), t([0.0, 2.0]))


def test_advantage_table_columns_agree_with_each_other():
    settings = {"kl_coef": 0.1, "gamma": 1.0, "lam": 0.95}
    logprobs, ref = t([[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]]), t([[-1.5, -2.0, -1.0], [-0.2, -1.0, 0.0]])
    values, mask, scores = t([[0.2, 0.1, 0.4], [-0.5, 0.3, 9.0]]), t([[1, 1, 1], [1, 1, 0]]), t([1.5, -0.5])
    table = advantage_table([["a", "b", "c"], ["d", "e"]], logprobs, ref, values, mask, scores, **settings)
    assert len(table) == 5 and table["token"].tolist() == ["a", "b", "c", "d", "e"]  # padding has no row
    assert table["kl"].tolist() == pytest.approx((table["logprob"] - table["ref_logprob"]).tolist())
    assert table["return"].tolist() == pytest.approx((table["advantage"] + table["value"]).tolist())
    assert table["whitened"].mean() == pytest.approx(0.0, abs=1e-6)
    assert table["whitened"].std(ddof=1) == pytest.approx(1.0, abs=1e-4)
    for _, reply in table.groupby("reply"):  # the rewards of a reply add up to its score minus β·ΣKL
        assert reply["reward"].sum() == pytest.approx(reply["score"].iloc[0] - 0.1 * reply["kl"].sum())
    # by hand, reply 1 (γ = 1, λ = 0.95): r = (0.01, 0.02 − 0.5); δ_1 = −0.48 + 0 − 0.3, δ_0 = 0.01 + 0.3 + 0.5
    second = table[table["reply"] == 1]
    assert second["advantage"].tolist() == pytest.approx([0.81 + 0.95 * -0.78, -0.78])
    with pytest.raises(ValueError, match=r"tokens\[1\] has 3 tokens but its mask 2"):
        advantage_table(
            [["a", "b", "c"], ["d", "e", "f"]], logprobs, ref, values, mask, scores, kl_coef=0.1, gamma=1, lam=1
        )
    same, zero = t([[-1.0, -1.0]]), t([[0.0, 0.0]])  # no KL: the first token's reward is −β·0
    no_kl = advantage_table([["a", "b"]], same, same, zero, t([[1, 1]]), t([1.0]), **settings)
    assert math.copysign(1.0, no_kl["reward"].iloc[0]) == 1.0  # shows as 0, not −0


def test_clipping_table_marks_the_tokens_policy_loss_clips():
    old = t([[0.0, 0.0, 0.0, 0.0, 0.0]])
    new = torch.log(t([[1.5, 1.5, 0.5, 0.5, 1.1]]))
    advantages, mask = t([[1.0, -1.0, -2.0, 2.0, 1.0]]), t([[1, 1, 1, 1, 1]])
    table = clipping_table(new, old, advantages, mask, clip_range=0.2)
    # clipped where the gain would go on growing: A > 0 with r > 1.2, A < 0 with r < 0.8
    assert table["clipped"].tolist() == [True, False, True, False, False]
    assert table["why"][0].startswith("A > 0") and table["why"][2].startswith("A < 0") and table["why"][1] == ""
    assert table["objective"].tolist() == pytest.approx([1.2, -1.5, -1.6, 1.0, 1.1])
    loss, clipfrac = policy_loss(new, old, advantages, mask, clip_range=0.2)
    assert -table["objective"].mean() == pytest.approx(loss.item())
    assert table["clipped"].mean() == pytest.approx(clipfrac.item())


def test_word_count_reward_peaks_at_the_target():
    reward = word_count_reward(3)
    assert reward([[]] * 4, ["one two three", "one", "a b c d e", ""]) == [0.0, -2.0, -2.0, -3.0]
    with pytest.raises(ValueError, match="target_words"):
        word_count_reward(0)


def test_compare_runs_names_the_columns_that_left_the_reference_range():
    reference = pd.DataFrame({"kl": [0.0, 0.2, 0.4, 9.0], "value_loss": [1.0, 2.0, 1.5, 9.0]})
    others = {
        "lr × 10": pd.DataFrame({"kl": [0.0, 2.0, 4.0], "value_loss": [1.0, 1.2, 1.4]}),
        "β = 0": pd.DataFrame({"kl": [0.0, 0.3, 0.3, 5.0], "value_loss": [0.1, 0.2, 0.3, 0.4]}),
    }
    table, lines = compare_runs(reference, others, ["kl", "value_loss"], reference_name="training run")
    # three steps each (the shortest run): the reference run's 4th step is left out of its means and its range
    assert table.loc["training run", "kl"] == pytest.approx(0.2)
    assert table.loc["β = 0", "kl"] == pytest.approx(0.2)
    assert lines[0] == "lr × 10: kl 2 (above 0 to 0.4)"
    assert lines[1] == "β = 0: value_loss 0.2 (below 1 to 2)"
    _, quiet = compare_runs(reference, {"same": reference.head(3)}, ["kl"])
    assert quiet == ["same: none"]
