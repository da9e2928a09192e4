import math

import pytest
import torch

from playbook.config import get_profile
from playbook.ppo import (
    PPOConfig,
    compute_gae,
    entropy_from_logits,
    kl_shaped_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    truncate_after_eos,
    value_loss,
)


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
    assert (config.batch_size, config.steps, config.kl_coef) == (8, 20, 0.2)
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        PPOConfig(batch_size=6, mini_batch_size=4)
    with pytest.raises(TypeError, match="kl_coeff"):
        PPOConfig.from_profile(get_profile("cpu"), kl_coeff=0.2)


def test_train_top_layers_freezes_the_rest(tiny_causal_lm):
    from playbook.ppo import train_top_layers

    train_top_layers(tiny_causal_lm, 1)
    trainable = {name for name, p in tiny_causal_lm.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.norm")) for name in trainable)


@pytest.mark.slow
def test_ppo_raises_a_programmatic_reward_on_the_embedded_model():
    from playbook.models import load_model
    from playbook.ppo import PPOTrainer
    from playbook.reward import keep_lower_layers

    def commas(prompts, replies):
        return [float(reply.count(",")) for reply in replies]

    policy, tokenizer = load_model()
    reference, _ = load_model()
    value, _ = load_model(task="reward")
    keep_lower_layers(value, 2)
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
        steps=3,
        batch_size=4,
        mini_batch_size=2,
        ppo_epochs=4,
        response_length=12,
        learning_rate=2e-5,
        value_learning_rate=1e-4,
        kl_coef=0.02,
    )
    trainer = PPOTrainer(policy, reference, commas, value, tokenizer, prompts, config)
    before = sum(commas(prompts, trainer.respond(prompts)))
    history = trainer.train()
    after = sum(commas(prompts, trainer.respond(prompts)))
    assert after >= before + 3, (before, after)
    assert history["kl"].iloc[-1] > 0 and (history["response_length"] <= 12).all()
    phases = history[["seconds_generate", "seconds_score", "seconds_forward", "seconds_update"]]
    assert (phases > 0).all().all() and (phases.sum(axis=1) <= history["seconds"]).all()
    assert set(history.columns) >= {"score", "kl", "kl_k3", "policy_loss", "value_loss", "policy_clipfrac", "entropy"}
