import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import copies
from playbook.evaluation import best_of_n_kl
from playbook.io import text_key
from playbook.models import load_model
from playbook.overoptimization import (
    PairFeatures,
    ProxyReward,
    RecordedBestOfN,
    SampleScores,
    best_of_n_overoptimization,
    compare_proxy_sizes,
    course_heads,
    describe_best_of_n,
    fit_functional_form,
    gold_change,
    gold_difference_between_proxies,
    gold_peak,
    gold_preferences,
    paired_final_gains,
    ppo_overoptimization,
    recorded_best_of_n,
    reply_features,
    rescoring_gap,
    train_gold_and_proxies,
)
from playbook.ppo import PPOTrainer
from playbook.reward import RewardModel, give_distinct_pad_token


def synthetic_pairs(count: int, true_weight: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature pairs labelled by a known linear reward with Bradley–Terry noise, as people's labels are."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(count, len(true_weight), generator=generator)
    second = torch.randn(count, len(true_weight), generator=generator)
    first_wins = torch.rand(count, generator=generator) < torch.sigmoid((first - second) @ true_weight)
    keep = first_wins[:, None]
    return torch.where(keep, first, second), torch.where(keep, second, first)


TRUE_WEIGHT = torch.tensor([2.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])


def test_gold_preferences_put_the_gold_favourite_first():
    first, second = torch.randn(50, 8), torch.randn(50, 8)
    preferred, other = gold_preferences(TRUE_WEIGHT, first, second)
    assert bool((((preferred - other) @ TRUE_WEIGHT) >= 0).all())
    # every pair is kept, each row either as it was or swapped
    swapped = ((first - second) @ TRUE_WEIGHT) < 0
    assert torch.equal(preferred[swapped], second[swapped]) and torch.equal(preferred[~swapped], first[~swapped])


def test_noisy_gold_labels_follow_the_bradley_terry_probability():
    first = torch.zeros(20_000, 8)
    first[:, 0] = math.log(3) / 2  # margin log 3 under TRUE_WEIGHT: first wins with probability 3/4
    preferred, _ = gold_preferences(TRUE_WEIGHT, first, torch.zeros(20_000, 8), noisy=True, seed=1)
    share_first = float((preferred[:, 0] > 0).float().mean())
    assert share_first == pytest.approx(0.75, abs=0.01)


def test_more_gold_labelled_pairs_make_a_proxy_that_agrees_more_with_gold():
    train = synthetic_pairs(1200, TRUE_WEIGHT, seed=0)
    held_out = synthetic_pairs(400, TRUE_WEIGHT, seed=1)
    heads = train_gold_and_proxies(train, held_out, sizes=(20, 1000))
    cosine = torch.nn.functional.cosine_similarity(heads.gold, TRUE_WEIGHT, dim=0)
    assert float(cosine) > 0.95  # the gold head recovers the labels' direction
    agreement = heads.agreement["agreement"]
    assert agreement[1000] > agreement[20] and agreement[1000] > 0.9
    assert (heads.agreement["low"] <= agreement).all() and (agreement <= heads.agreement["high"]).all()


def test_proxy_sizes_beyond_the_data_are_refused():
    train = synthetic_pairs(50, TRUE_WEIGHT, seed=0)
    with pytest.raises(ValueError, match="only 50 training pairs"):
        train_gold_and_proxies(train, train, sizes=(100,))


def test_course_heads_keep_the_sizes_the_data_allows_and_fit_one_proxy_on_all_pairs_below_them():
    from playbook.config import get_profile

    cpu = get_profile("cpu")  # proxies of 100, 300 and 1,000 pairs
    few = PairFeatures(None, synthetic_pairs(150, TRUE_WEIGHT, seed=0), synthetic_pairs(40, TRUE_WEIGHT, seed=1))
    assert sorted(course_heads(cpu, few).proxies) == [100]
    sample = PairFeatures(None, synthetic_pairs(9, TRUE_WEIGHT, seed=0), synthetic_pairs(3, TRUE_WEIGHT, seed=1))
    assert sorted(course_heads(cpu, sample).proxies) == [9]  # the bundled sample data's 9 training pairs


def test_best_of_n_against_gold_itself_gains_equally_and_an_unrelated_proxy_gains_nothing():
    features = torch.randn(40, 32, 8, generator=torch.Generator().manual_seed(0))
    unrelated = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    scores = SampleScores.from_features(features, TRUE_WEIGHT, {1: TRUE_WEIGHT, 2: unrelated})
    curve = best_of_n_overoptimization(scores, ns=[1, 4, 32])
    exact = curve[curve["proxy pairs"] == 1]
    assert np.allclose(exact["proxy gain"], exact["gold gain"])
    assert np.allclose(curve.loc[curve["n"] == 1, ["proxy gain", "gold gain"]], 0, atol=1e-6)
    assert np.allclose(curve["kl"], [best_of_n_kl(n) for n in curve["n"]])
    blind = curve[(curve["proxy pairs"] == 2) & (curve["n"] == 32)].iloc[0]
    assert blind["proxy gain"] > 1.5  # the proxy finds what it likes ...
    assert blind["gold low"] < 0 < blind["gold high"]  # ... and gold sees no gain, within the interval


def test_gold_change_is_the_paired_difference_of_the_curve_points():
    features = torch.randn(30, 16, 8, generator=torch.Generator().manual_seed(2))
    proxy = TRUE_WEIGHT + torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])  # right, plus a strong wrong direction
    scores = SampleScores.from_features(features, TRUE_WEIGHT, {1: proxy})
    curve = best_of_n_overoptimization(scores, ns=[2, 16]).set_index("n")
    change = gold_change(scores, 1, from_n=2, to_n=16)
    assert change.mean == pytest.approx(curve.loc[16, "gold gain"] - curve.loc[2, "gold gain"], abs=1e-6)
    assert change.n == 30 and change.low <= change.mean <= change.high


def test_gold_difference_between_proxies_is_paired_over_the_same_prompts():
    features = torch.randn(30, 16, 8, generator=torch.Generator().manual_seed(3))
    wrong = TRUE_WEIGHT + torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    scores = SampleScores.from_features(features, TRUE_WEIGHT, {1: TRUE_WEIGHT, 2: wrong})
    curve = best_of_n_overoptimization(scores, ns=[8]).set_index("proxy pairs")
    difference = gold_difference_between_proxies(scores, 1, 2, n=8)
    assert difference.mean == pytest.approx(curve.loc[1, "gold gain"] - curve.loc[2, "gold gain"], abs=1e-6)
    # the proxy that is gold itself picks gold's best on every prompt: never worse, and better beyond the noise
    assert difference.n == 30 and difference.low > 0
    swapped = gold_difference_between_proxies(scores, 2, 1, n=8)
    assert swapped.mean == pytest.approx(-difference.mean)


def test_best_of_n_readings_name_a_measured_fall_and_order_the_proxies():
    rng = np.random.default_rng(4)
    gold = rng.normal(size=(60, 32))
    hacked = gold + 0.3 * rng.normal(size=gold.shape)
    top = hacked.argmax(axis=1)
    hacked[np.arange(60), top] += 10  # each prompt has one reply this proxy loves and gold hates
    gold_with_hack = gold.copy()
    gold_with_hack[np.arange(60), top] = -3
    scores = SampleScores(gold_with_hack, {10: hacked, 1000: gold_with_hack})
    curve = best_of_n_overoptimization(scores, ns=[1, 2, 4, 8, 16, 32])
    lines = describe_best_of_n(curve, scores)
    assert lines[0].startswith("proxy of 10 pairs: proxy gain at n = 32")
    assert "Gold peaks at n = " in lines[0] and "beyond the noise: over-optimisation" in lines[0]
    assert lines[1].startswith("proxy of 1000 pairs") and "Gold is highest at the largest n measured (32)" in lines[1]
    (comparison,) = compare_proxy_sizes(scores, n=32)
    assert "the 1000-pair proxy picked better replies" in comparison and "Bonferroni" not in comparison


def test_a_recorded_best_of_n_run_is_read_back_in_the_files_order(tmp_path):
    rows = [
        {"prompt_key": text_key(f"Question {i}?"), "sample": s, "gold": i + s / 10, "proxy 100": -s, "proxy 300": s}
        | {"reply": f"reply {i}.{s}, with a comma"}
        for i in (2, 0)
        for s in range(4)
    ]
    path = tmp_path / "recorded.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    recorded = recorded_best_of_n(path)
    assert recorded.prompt_keys == [text_key("Question 2?"), text_key("Question 0?")]
    assert recorded.replies[1] == [f"reply 0.{s}, with a comma" for s in range(4)]
    assert recorded.scores.gold.tolist() == [[2.0, 2.1, 2.2, 2.3], [0.0, 0.1, 0.2, 0.3]]
    assert sorted(recorded.scores.proxies) == [100, 300] and recorded.scores.proxies[100][0].tolist() == [0, -1, -2, -3]
    pd.DataFrame(rows[:-1]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="different numbers of samples"):
        recorded_best_of_n(path)
    pd.DataFrame(rows).drop(columns="reply").to_csv(path, index=False)
    with pytest.raises(ValueError, match="record the file again"):
        recorded_best_of_n(path)
    with pytest.raises(FileNotFoundError, match="--record-best-of-n"):
        recorded_best_of_n(tmp_path / "missing.csv")


def test_rescoring_a_recording_tells_the_same_models_from_others(tiny_reward_model):
    prompts = [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Name a colour."}]]
    replies = [["Hello.", "Go away."], ["Red.", "Blue."]]
    gold, proxy = torch.randn(16, generator=torch.Generator().manual_seed(0)), torch.ones(16)
    scores = SampleScores.from_features(reply_features(tiny_reward_model, prompts, replies), gold, {100: proxy})
    rounded = SampleScores(scores.gold.round(6), {100: scores.proxies[100].round(6)})  # as the file stores them
    recorded = RecordedBestOfN([text_key(p[-1]["content"]) for p in prompts], replies, rounded)
    # the first recorded prompt found among the learner's prompts is the one re-scored
    assert rescoring_gap(recorded, prompts[1:], tiny_reward_model, gold, {100: proxy}) < 1e-5
    assert rescoring_gap(recorded, prompts, tiny_reward_model, gold, {100: 2 * proxy}) > 1e-3
    assert rescoring_gap(recorded, prompts, tiny_reward_model, gold, {4: proxy}) is None  # another profile's proxies
    assert (
        rescoring_gap(recorded, [[{"role": "user", "content": "Other?"}]], tiny_reward_model, gold, {100: proxy})
        is None
    )


def test_functional_forms_recover_their_coefficients():
    d = np.linspace(0.1, 2.0, 12)
    assert fit_functional_form(d, d * (1.5 - 0.4 * d), form="best-of-n") == pytest.approx((1.5, 0.4))
    assert fit_functional_form(np.r_[0.0, d], np.r_[0.0, d * (0.8 - 0.3 * np.log(d))], form="rl") == pytest.approx(
        (0.8, 0.3)
    )
    with pytest.raises(ValueError, match="'best-of-n' or 'rl'"):
        fit_functional_form(d, d, form="ppo")


def test_gold_peak_names_the_n_where_gold_is_highest():
    curve = pd.DataFrame(
        {
            "proxy pairs": [100] * 4,
            "n": [1, 4, 16, 64],
            "proxy gain": [0.0, 0.5, 0.9, 1.2],
            "gold gain": [0.0, 0.3, 0.2, -0.1],
        }
    )
    peak = gold_peak(curve).loc[100]
    assert peak["gold peaks at n"] == 4 and peak["gold gain at largest n"] == -0.1
    assert peak["proxy gain at largest n"] == 1.2


@pytest.fixture
def tiny_reward_model(tiny_base) -> RewardModel:
    model, tokenizer = load_model(tiny_base, task="reward", device="cpu")
    give_distinct_pad_token(tokenizer, model)  # as train_reward_model does: the reply's own end is read
    return RewardModel(model, tokenizer, max_length=32)


def test_reply_features_are_what_the_reward_model_scores(tiny_reward_model):
    reward_model = tiny_reward_model
    model = reward_model.model
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "How are you?"}]]
    replies = [["Hello.", "Hi there, friend."], ["Fine.", "Well, thanks."]]
    features = reply_features(reward_model, prompts, replies)
    assert features.shape == (2, 2, model.config.hidden_size)
    scores = features @ model.score.weight.data[0].float()
    expected = reward_model.score_batch([p for p in prompts for _ in range(2)], [r for g in replies for r in g])
    assert np.allclose(scores.flatten().numpy(), expected, atol=1e-4)
    with pytest.raises(ValueError, match="same number of samples"):
        reply_features(reward_model, prompts, [["a"], ["b", "c"]])


def test_proxy_reward_pays_the_proxy_and_records_gold_for_the_same_replies(tiny_reward_model):
    hidden = tiny_reward_model.model.config.hidden_size
    proxy, gold = torch.randn(hidden, generator=torch.Generator().manual_seed(0)), torch.ones(hidden)
    reward = ProxyReward(tiny_reward_model, proxy, gold)
    prompts = [[{"role": "user", "content": "Hi"}]] * 2
    paid = reward.score_batch(prompts, ["Hello.", "Go away."])
    features = reply_features(tiny_reward_model, prompts, [["Hello."], ["Go away."]])[:, 0]
    assert np.allclose(paid, (features @ proxy).numpy(), atol=1e-5)
    assert np.allclose(reward.gold_scores[0], (features @ gold).numpy(), atol=1e-5)
    # the value model PPO copies from `model` starts out as the proxy reward model
    assert np.allclose(
        RewardModel(reward.model, tiny_reward_model.tokenizer, 32).score_batch(prompts, ["Hello.", "Go away."]),
        paid,
        atol=1e-4,
    )


def test_ppo_curve_measures_gains_in_the_baseline_units(tiny_reward_model):
    hidden = tiny_reward_model.model.config.hidden_size
    gold = torch.zeros(hidden)
    gold[0] = 1.0
    reward = ProxyReward(tiny_reward_model, 2 * gold, gold)
    reward.proxy_scores, reward.gold_scores = [[0.0, 2.0], [4.0, 6.0]], [[0.0, 1.0], [2.0, 3.0]]
    baseline = torch.zeros(1, 4, hidden)
    baseline[0, :, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # gold mean 0.5, sd 0.5; proxy mean 1, sd 1
    history = pd.DataFrame({"step": [1, 2], "kl": [-0.1, 0.81]})
    curve = ppo_overoptimization(history, reward, baseline, window=1)
    assert np.allclose(curve["gold gain"], [0.0, 4.0]) and np.allclose(curve["proxy gain"], [0.0, 4.0])
    assert np.allclose(curve["sqrt_kl"], [0.0, 0.9])
    assert np.allclose(ppo_overoptimization(history, reward, baseline, window=2)["gold gain"], [0.0, 2.0])
    with pytest.raises(ValueError, match="3 PPO steps but 2 rollouts"):
        ppo_overoptimization(pd.DataFrame({"step": [1, 2, 3], "kl": [0, 0, 0]}), reward, baseline)


def test_final_gains_of_two_runs_are_paired_reply_by_reply(tiny_reward_model):
    hidden = tiny_reward_model.model.config.hidden_size
    gold = torch.zeros(hidden)
    gold[0] = 1.0
    baseline = torch.zeros(1, 4, hidden)
    baseline[0, :, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])  # gold sd 0.5, proxy (2 × gold) sd 1
    prompts = [[[{"role": "user", "content": f"question {i}"}] for i in range(4)]] * 2
    runs = []
    for shift in (0.0, 0.25):
        run = ProxyReward(tiny_reward_model, 2 * gold, gold, prompts=list(prompts))
        # prompts differ a lot (0 to 3), the second run adds the same small shift to every reply
        run.gold_scores = [[0.0 + shift, 1.0 + shift, 2.0 + shift, 3.0 + shift]] * 2
        run.proxy_scores = [[2 * score for score in rollout] for rollout in run.gold_scores]
        runs.append(run)
    differences = paired_final_gains(runs[1], runs[0], baseline, rollouts=2)
    assert differences["gold"].mean == pytest.approx(0.5) and differences["proxy"].mean == pytest.approx(0.5)
    assert differences["gold"].low == pytest.approx(0.5)  # paired: the prompts' spread cancels exactly
    runs[1].prompts = [prompts[0][::-1]] * 2
    with pytest.raises(ValueError, match="different prompts"):
        paired_final_gains(runs[1], runs[0], baseline, rollouts=2)


def test_a_ppo_run_against_a_proxy_gives_one_gold_record_per_step(
    tiny_causal_lm, tokenizer, tiny_reward_model, tiny_ppo_config
):
    reference, policy = copies(tiny_causal_lm, 2)
    hidden = tiny_reward_model.model.config.hidden_size
    reward = ProxyReward(tiny_reward_model, torch.ones(hidden), -torch.ones(hidden))
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Name a colour, please."}]]
    config = tiny_ppo_config(steps=2, scale_samples=2)
    history = PPOTrainer(policy, reference, tokenizer, prompts, reward, config).train().history
    # one rollout of the start policy fixes the score scale, then one per step
    assert len(reward.gold_scores) == 3 and all(len(scores) == 2 for scores in reward.gold_scores)
    assert np.allclose(history["score"], [np.mean(scores) for scores in reward.proxy_scores[1:]])
    baseline = reply_features(tiny_reward_model, prompts, [["Red.", "Blue."], ["Hello.", "Green."]])
    curve = ppo_overoptimization(history, reward, baseline)
    # gold is minus the proxy here, so gold's gain is minus the proxy's, in the units of each
    proxy_sd, gold_sd = float((baseline @ reward.proxy).std()), float((baseline @ reward.gold).std())
    assert np.allclose(curve["gold gain"] * gold_sd, -curve["proxy gain"] * proxy_sd, atol=1e-4)
