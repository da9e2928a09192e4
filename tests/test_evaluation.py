"""Win rates, the language-model judge's two orders, and best-of-N: values checked against hand counts, brute force
over subsets, and Monte-Carlo draws."""

import itertools
import math

import numpy as np
import pytest
import torch

from playbook.evaluation import (
    LanguageModelJudge,
    best_of_n_curve,
    best_of_n_distribution,
    best_of_n_kl,
    exact_kl,
    expected_best_of_n,
    pairwise_outcomes,
    sample_replies,
    win_rate,
    win_rate_table,
)
from playbook.models import generate_replies, load_model
from playbook.stats import proportion_interval


def test_outcomes_count_ties_half_and_respect_the_margin():
    assert pairwise_outcomes([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 1.05]).tolist() == [1.0, 0.0, 0.5, 0.0]
    assert pairwise_outcomes([1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 1.05], tie_margin=0.1).tolist() == [1, 0, 0.5, 0.5]
    with pytest.raises(ValueError, match="paired"):
        pairwise_outcomes([1.0, 2.0], [1.0])


def test_win_rate_without_ties_is_a_proportion_with_its_wilson_interval():
    result = win_rate([1] * 7 + [0] * 3, [0] * 7 + [1] * 3, names=("PPO", "SFT"))
    assert (result.wins, result.ties, result.losses, result.rate) == (7, 0, 3, 0.7)
    assert (result.low, result.high) == pytest.approx(proportion_interval(7, 10))
    assert not result.excludes_even and "neither is preferred" in result.describe()
    lopsided = win_rate([1] * 40, [0] * 40, names=("PPO", "SFT"))
    assert lopsided.excludes_even and "PPO is preferred beyond the noise" in lopsided.describe()


def test_win_rate_with_ties_reads_the_decisive_prompts():
    result = win_rate([1, 1, 0, 0, 0.5, 0.5, 1, 0], [0, 0, 1, 1, 0.5, 0.5, 0, 1])
    assert (result.wins, result.ties, result.losses) == (3, 2, 3)
    assert result.rate == 0.5 and result.low < 0.5 < result.high
    share_low, share_high = proportion_interval(3, 6)
    assert (result.low, result.high) == pytest.approx((0.5 + 0.75 * (share_low - 0.5), 0.5 + 0.75 * (share_high - 0.5)))
    # three losses among 21 ties: a sign test gives p = 0.25, so this is within the noise
    few_decisive = win_rate([0.0] * 21 + [0.0] * 3, [0.0] * 21 + [1.0] * 3)
    assert few_decisive.rate == pytest.approx(21 / 48) and not few_decisive.excludes_even
    assert win_rate([1.0] * 5, [1.0] * 5).low == win_rate([1.0] * 5, [1.0] * 5).high == 0.5


def test_win_rate_table_has_each_pair_once_in_order():
    scores = {"SFT": [0, 0, 0, 0], "PPO": [1, 1, 1, -1], "DPO": [0, 0, 0, 0]}
    table = win_rate_table(scores)
    assert list(zip(table["policy"], table["against"], strict=True)) == [("SFT", "PPO"), ("SFT", "DPO"), ("PPO", "DPO")]
    assert table["win rate"].tolist() == [0.25, 0.5, 0.75]
    assert table["ties"].tolist() == [0, 4, 0]
    clear = {"A": np.zeros(40), "B": np.ones(40), "C": np.r_[np.ones(27), np.zeros(13)] * 2}
    strict = win_rate_table(clear).set_index(["policy", "against"])
    # B beats A on all 40 prompts: beyond the noise either way; C against B (27 of 40) only at 95% for one pair
    assert strict.loc[("A", "B"), "beyond noise"] and strict.loc[("A", "B"), "beyond noise, Bonferroni"]
    assert strict.loc[("B", "C"), "beyond noise"] and not strict.loc[("B", "C"), "beyond noise, Bonferroni"]


def test_best_of_n_kl_closed_form():
    assert best_of_n_kl(1) == 0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_kl(0)


def test_exact_best_of_n_matches_draws_and_the_closed_form_when_no_outcome_is_likely():
    rng = np.random.default_rng(0)
    p, rewards = np.array([0.1, 0.2, 0.3, 0.4]), np.array([3.0, 1.0, 0.0, 2.0])
    kept = best_of_n_distribution(p, rewards, 3)
    assert kept.sum() == pytest.approx(1) and best_of_n_distribution(p, rewards, 1) == pytest.approx(p)
    draws = rng.choice(4, size=(100_000, 3), p=p)
    best = np.take_along_axis(draws, rewards[draws].argmax(axis=1, keepdims=True), axis=1)[:, 0]
    assert np.bincount(best, minlength=4) / len(best) == pytest.approx(kept, abs=0.01)
    # many equally likely outcomes: the discrete KL reaches the closed form (a continuous reward's)
    uniform = np.full(100_000, 1e-5)
    assert exact_kl(best_of_n_distribution(uniform, rng.permutation(100_000), 8), uniform) == pytest.approx(
        best_of_n_kl(8), abs=1e-3
    )
    # a peaked distribution: the closed form is only an upper bound
    assert exact_kl(kept, p) < best_of_n_kl(3)


def test_expected_best_of_n_equals_the_average_over_every_subset():
    rng = np.random.default_rng(1)
    proxy, gold = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    for n in (1, 2, 4, 6):
        brute = np.array(
            [
                np.mean(
                    [gold[row, list(s)][np.argmax(proxy[row, list(s)])] for s in itertools.combinations(range(6), n)]
                )
                for row in range(3)
            ]
        )
        assert expected_best_of_n(proxy, gold, n=n) == pytest.approx(brute)
    assert expected_best_of_n(proxy, n=1) == pytest.approx(proxy.mean(axis=1))
    assert expected_best_of_n(proxy, gold, n=6) == pytest.approx(gold[np.arange(3), proxy.argmax(axis=1)])
    curve = best_of_n_curve(proxy, gold, ns=[1, 2, 4])
    assert curve["selection score"].is_monotonic_increasing and curve["kl"].iloc[0] == 0
    with pytest.raises(ValueError, match="between 1 and"):
        expected_best_of_n(proxy, n=7)


@pytest.fixture(scope="module")
def embedded():
    return load_model()


@pytest.mark.slow
def test_best_of_n_kl_on_the_model_s_next_token_distribution(embedded):
    """The 135M model's next token: the exact best-of-n KL, its Monte-Carlo estimate, and the closed-form bound."""
    model, tokenizer = embedded
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    with torch.no_grad():
        p = torch.softmax(model(ids.to(model.device)).logits[0, -1].double(), dim=-1).cpu().numpy()
    p = p / p.sum()
    rewards = np.random.default_rng(0).permutation(len(p)).astype(float)  # a distinct score per token
    kept = best_of_n_distribution(p, rewards, 4)
    draws = np.random.default_rng(1).choice(len(p), size=(20_000, 4), p=p)
    best = np.take_along_axis(draws, rewards[draws].argmax(axis=1, keepdims=True), axis=1)[:, 0]
    monte_carlo = float(np.mean(np.log(kept[best]) - np.log(p[best])))  # E over best-of-4 draws of log(P_4 / p)
    assert monte_carlo == pytest.approx(exact_kl(kept, p), abs=0.03)
    assert exact_kl(kept, p) <= best_of_n_kl(4) + 1e-9


@pytest.mark.slow
def test_language_model_judge_asks_both_orders(embedded):
    judge = LanguageModelJudge(*embedded)
    table = judge.compare(["What is 2 + 2?"] * 2, ["4", "2 + 2 is 4."], ["4", "Bananas."])
    assert table.loc[0, "prefers_first"] == pytest.approx(0.5)  # the same reply twice: no content preference
    assert ((table[["A shown first", "A shown second"]] > 0) & (table[["A shown first", "A shown second"]] < 1)).all(
        axis=None
    )
    row = table.loc[1]
    assert row["prefers_first"] == pytest.approx((row["A shown first"] + row["A shown second"]) / 2)


@pytest.mark.slow
def test_sampled_replies_are_repeatable_for_a_seed(embedded):
    model, tokenizer = embedded
    prompts = [[{"role": "user", "content": "Say hi."}], [{"role": "user", "content": "Name a fruit."}]]
    first = sample_replies(model, tokenizer, prompts, 3, max_new_tokens=4, seed=5)
    assert [len(r) for r in first] == [3, 3]
    assert sample_replies(model, tokenizer, prompts, 3, max_new_tokens=4, seed=5) == first


@pytest.mark.slow
def test_sampling_from_the_prompts_cache_continues_the_prompt_as_greedy_does(embedded):
    """Each prompt is read once and its cache copied to every row: at a temperature near 0 each row's reply is the
    greedy reply, also when the samples span more than one batch or a batch holds several prompts."""
    model, tokenizer = embedded
    prompts = [
        [{"role": "user", "content": "Name a fruit."}],
        [{"role": "user", "content": "What is the capital of France?"}],
    ]
    greedy = generate_replies(model, tokenizer, prompts, max_new_tokens=6)
    cold = sample_replies(model, tokenizer, prompts, 3, max_new_tokens=6, temperature=1e-3, batch_size=2)
    assert cold == [[reply] * 3 for reply in greedy]
    # both prompts in one batch, the shorter one left-padded
    assert sample_replies(model, tokenizer, prompts, 3, max_new_tokens=6, temperature=1e-3, batch_size=8) == cold
    model.generation_config.cache_implementation = "dynamic"  # a model that names its cache: the prompt repeated
    try:
        repeated = sample_replies(model, tokenizer, prompts, 3, max_new_tokens=6, temperature=1e-3, batch_size=2)
    finally:
        model.generation_config.cache_implementation = None
    assert repeated == cold
