import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import bootstrap
from sklearn.calibration import calibration_curve
from torchmetrics.functional.classification import binary_calibration_error

from playbook.calibration import (
    MCQuestion,
    accuracy_coverage,
    apply_temperature,
    brier_score,
    calibrated_ece_floor,
    calibration_bins,
    calibration_report,
    describe_ece,
    ece_difference,
    ece_interval,
    expected_calibration_error,
    fit_temperature,
    grouped_bin_accuracy_interval,
    grouped_ece_difference,
    grouped_ece_interval,
    load_mc_questions,
    maximum_calibration_error,
    negative_log_likelihood,
    option_nll,
    reliability_diagram,
    split_by_answer,
    truthfulqa_mc_questions,
)
from playbook.data import BUNDLED_DATA_DIR, load_truthfulqa
from playbook.io import REPOSITORY_ROOT


def random_answers(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    confidences = rng.uniform(0.05, 0.999, n)
    correct = (rng.uniform(size=n) < confidences**1.5).astype(int)  # overconfident on purpose
    return confidences, correct


def test_perfectly_calibrated_bins_give_zero():
    confidences = np.repeat([0.25, 0.75], 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.0)
    assert maximum_calibration_error(confidences, correct) == pytest.approx(0.0)


def test_confident_and_always_wrong():
    confidences, correct = np.full(5, 0.9), np.zeros(5)
    assert expected_calibration_error(confidences, correct) == pytest.approx(0.9)
    assert brier_score(confidences, correct) == pytest.approx(0.81)
    assert negative_log_likelihood(confidences, correct) == pytest.approx(-np.log(0.1))


def test_empty_bins_are_skipped():
    bins = calibration_bins([0.05, 0.95], [0, 1], n_bins=10)
    assert bins.count.tolist() == [1, 1] and bins.accuracy.tolist() == [0.0, 1.0]
    assert expected_calibration_error([0.05, 0.95], [0, 1]) == pytest.approx(0.05)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_bins_agree_with_scikit_learn(strategy):
    confidences, correct = random_answers()
    expected_true, expected_pred = calibration_curve(correct, confidences, n_bins=10, strategy=strategy)
    bins = calibration_bins(confidences, correct, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(bins.accuracy, expected_true, atol=1e-6)
    np.testing.assert_allclose(bins.confidence, expected_pred, atol=1e-6)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_and_mce_agree_with_torchmetrics(n_bins):
    confidences, correct = random_answers(seed=n_bins)
    preds, target = torch.tensor(confidences, dtype=torch.float64), torch.tensor(correct)
    reference = binary_calibration_error(preds, target, n_bins=n_bins, norm="l1").item()
    assert expected_calibration_error(confidences, correct, n_bins) == pytest.approx(reference, abs=1e-6)
    reference_max = binary_calibration_error(preds, target, n_bins=n_bins, norm="max").item()
    assert maximum_calibration_error(confidences, correct, n_bins) == pytest.approx(reference_max, abs=1e-6)


@pytest.mark.parametrize(
    ("confidences", "correct", "message"),
    [
        ([0.5, 0.6], [1], "confidences has 2 values but correct has 1"),
        ([0.5, float("nan")], [1, 0], "NaN"),
        ([0.5, 1.2], [1, 0], r"must lie in \[0, 1\]"),
        ([0.5, -0.1], [1, 0], r"must lie in \[0, 1\]"),
        ([0.5, 0.6], [1, 2], "only 0/1"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_are_named(confidences, correct, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(confidences, correct)


def test_temperature_fit_recovers_a_known_temperature_within_5_percent():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(4000, 4))
    labels = np.array([rng.choice(4, p=np.exp(row) / np.exp(row).sum()) for row in true_logits])
    shown = true_logits * 2.5  # a model that is 2.5 times too sharp: its best temperature is 2.5
    temperature = fit_temperature(shown, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before, after = apply_temperature(shown, 1.0), apply_temperature(shown, temperature)
    assert (before.argmax(1) == after.argmax(1)).all()  # accuracy does not change
    ece_before = expected_calibration_error(before.max(1), before.argmax(1) == labels)
    ece_after = expected_calibration_error(after.max(1), after.argmax(1) == labels)
    assert ece_after < ece_before / 2


BAD_TEMPERATURE_INPUTS = {
    "no rows": (np.zeros((0, 4)), [], r"logits: no rows; fit the temperature on the logits of at least one question"),
    "infinite logit": (
        np.array([[1.0, 2.0], [np.inf, 0.0]]),
        [0, 1],
        r"logits: row 1 holds NaN or infinite values; drop those questions",
    ),
    "label out of range": (np.zeros((2, 2)), [0, 2], r"labels: each must be an option index from 0 to 1"),
}


@pytest.mark.parametrize("case", list(BAD_TEMPERATURE_INPUTS))
def test_fit_temperature_rejects_input_it_cannot_fit(case):
    logits, labels, message = BAD_TEMPERATURE_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)


def test_temperature_errors():
    with pytest.raises(ValueError, match=r"must be \[N, K\]"):
        fit_temperature(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.full((2, 2), np.nan), [0, 1])
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(np.zeros((1, 2)), 0.0)


def test_accuracy_coverage_answers_most_confident_first():
    table = accuracy_coverage([0.9, 0.2, 0.6, 0.8], [1, 0, 0, 1])
    assert table["coverage"].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert table["accuracy"].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])


def test_report_and_diagram():
    confidences, correct = random_answers()
    report = calibration_report(confidences, correct)
    assert set(report) == {"accuracy", "mean confidence", "ECE", "MCE", "Brier", "NLL (top answer, binary)"}
    figure = reliability_diagram(confidences, correct, title="test")
    assert f"ECE = {report['ECE']:.3f}" in figure.axes[0].get_title()
    assert figure.axes[1].get_ylabel() == "answers"
    assert reliability_diagram(confidences, correct, counted="pairs").axes[1].get_ylabel() == "pairs"


def test_mc_questions():
    question = MCQuestion("2+2?", ("3", "4"), 1)
    assert "A. 3\nB. 4" in question.prompt()[0]["content"]
    with pytest.raises(ValueError, match="answer index 2"):
        MCQuestion("2+2?", ("3", "4"), 2)
    easy = load_mc_questions(BUNDLED_DATA_DIR / "easy_mc.jsonl")
    assert len(easy) == 40 and {q.answer for q in easy} == {0, 1, 2, 3}
    rows = [{"question": "q", "mc1_choices": ["right", "w1", "w2", "w3", "w4"], "mc1_labels": [1, 0, 0, 0, 0]}] * 20
    questions = truthfulqa_mc_questions(rows)
    assert all(len(q.options) == 4 and q.options[q.answer] == "right" for q in questions)
    assert len({q.answer for q in questions}) > 1  # the right letter moves around
    short = {"question": "q", "mc1_choices": ["right", "wrong"], "mc1_labels": [1, 0]}
    assert len(truthfulqa_mc_questions([short, *rows[:2]])) == 2  # too few options: skipped


def test_mc_file_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_bytes(b'{"question": "q", "options": ["a", "b"], "answer": 0}\n{"question": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"mc\.jsonl:2: not UTF-8 text"):
        load_mc_questions(path)


def test_bad_mc_file_names_the_line(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n{"question": "q", "options": ["a"]}\n')
    with pytest.raises(ValueError, match=r"mc\.jsonl:2"):
        load_mc_questions(path)


@pytest.mark.slow
def test_letter_scoring_on_the_embedded_model(embedded):
    from playbook.calibration import letter_logits, option_logits, p_true

    model, tokenizer = embedded
    questions = load_mc_questions(BUNDLED_DATA_DIR / "easy_mc.jsonl")[:8]
    answers = np.array([q.answer for q in questions])
    logits = letter_logits(model, tokenizer, questions)
    assert logits.shape == (8, 4) and np.isfinite(logits).all()
    options = option_logits(model, tokenizer, questions)
    assert options.shape == (8, 4) and (options < 0).all()
    assert (options.argmax(1) == answers).mean() >= 0.5  # the model knows many of these answers
    confidence = p_true(model, tokenizer, questions, logits.argmax(1))
    assert confidence.shape == (8,) and ((confidence > 0) & (confidence < 1)).all()


# ------------------------------------------------------------------------------------ split, ECE spread


@pytest.mark.parametrize(
    "answers",
    [np.arange(40) % 4, np.array([0, 1, 1, 2, 2, 3]), np.array([0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 3]), np.zeros(9, int)],
    ids=["cycling letters", "six questions", "uneven letters", "one letter"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_by_answer_keeps_each_letters_share_within_one_question(answers, seed):
    fit, held = split_by_answer(answers, seed=seed)
    assert sorted([*fit, *held]) == list(range(len(answers)))  # every question once
    assert abs(len(fit) - len(held)) <= 1
    for letter in np.unique(answers):
        assert abs(np.sum(answers[fit] == letter) - np.sum(answers[held] == letter)) <= 1


def test_split_by_answer_is_seeded_and_not_every_second_question():
    answers = np.arange(40) % 4
    fit, held = split_by_answer(answers, seed=0)
    assert np.array_equal(fit, split_by_answer(answers, seed=0)[0])
    assert not np.array_equal(fit, split_by_answer(answers, seed=1)[0])
    assert set(answers[fit]) == set(answers[held]) == {0, 1, 2, 3}  # the old even/odd split gave {0, 2} and {1, 3}
    with pytest.raises(ValueError, match="at least 2 questions"):
        split_by_answer([1])


def test_calibrated_floor_is_near_zero_for_a_large_sample_and_clearly_positive_at_n_40():
    rng = np.random.default_rng(0)
    assert calibrated_ece_floor(rng.uniform(0.25, 0.95, 20_000)) < 0.01
    floor_40 = calibrated_ece_floor(rng.uniform(0.25, 0.95, 40))
    assert 0.1 < floor_40 < 0.2  # about 0.14: what a perfectly calibrated predictor shows from chance alone
    assert calibrated_ece_floor(np.full(40, 0.5)) == pytest.approx(0.063, abs=0.01)  # E|Binomial(40, ½)/40 − ½|
    assert calibrated_ece_floor(np.ones(10)) == 0.0  # certain and calibrated: always right, no noise


def test_calibrated_floor_matches_averaging_the_ece_of_simulated_outcomes():
    confidences = np.random.default_rng(1).uniform(0.3, 0.9, 25)
    rng = np.random.default_rng(7)
    direct = np.mean([expected_calibration_error(confidences, rng.uniform(size=25) < confidences) for _ in range(3000)])
    assert calibrated_ece_floor(confidences, simulations=3000) == pytest.approx(direct, abs=0.005)


def test_ece_interval_contains_the_estimate_and_agrees_with_scipy():
    confidences, correct = random_answers(n=40)
    ece = expected_calibration_error(confidences, correct)
    low, high = ece_interval(confidences, correct)
    assert low <= ece <= high and high - low > 0.05  # 40 answers: a wide interval
    reference = bootstrap(
        (confidences, correct),
        expected_calibration_error,
        paired=True,
        vectorized=False,
        method="percentile",
        n_resamples=2000,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert (low, high) == pytest.approx((reference.low, reference.high), abs=0.02)
    many = random_answers(n=4000)
    low_many, high_many = ece_interval(*many, resamples=300)
    assert high_many - low_many < (high - low) / 3  # more answers, a narrower interval
    assert ece_interval(confidences, correct) == (low, high)  # seeded


def test_describe_ece_prints_estimate_interval_and_floor():
    confidences, correct = random_answers(n=40)
    text = describe_ece(confidences, correct)
    ece, (low, high) = expected_calibration_error(confidences, correct), ece_interval(confidences, correct)
    floor = calibrated_ece_floor(confidences)
    assert text == (
        f"{ece:.3f} [95% CI {low:.3f}, {high:.3f}]; a perfectly calibrated predictor at this n would show ≈ {floor:.3f}"
    )


# ------------------------------------------------------------------------------------------- data


EASY_MC_CYCLING = "a2a389b"
"""The last commit whose ``data/easy_mc.jsonl`` had the right letters cycling A, B, C, D (before the shuffle)."""


def test_easy_mc_letters_no_longer_cycle_and_answers_name_the_same_option():
    shown = subprocess.run(
        ["git", "show", f"{EASY_MC_CYCLING}:data/easy_mc.jsonl"], cwd=REPOSITORY_ROOT, capture_output=True, text=True
    )
    if shown.returncode != 0:
        pytest.skip(f"no git history to compare with ({shown.stderr.strip()})")
    before = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["answer"] for r in before] == [i % 4 for i in range(40)]  # it did cycle
    after = load_mc_questions(BUNDLED_DATA_DIR / "easy_mc.jsonl")
    assert len(after) == len(before) == 40
    letters = np.array([q.answer for q in after])
    assert not np.array_equal(letters, np.arange(40) % 4)
    assert not any(np.array_equal(letters, (np.arange(40) + shift) % 4) for shift in range(4))  # no cycle
    assert np.bincount(letters).tolist() == [10, 10, 10, 10]
    for old, new in zip(before, after, strict=True):
        assert new.question == old["question"] and sorted(new.options) == sorted(old["options"])
        assert new.options[new.answer] == old["options"][old["answer"]]


def test_truthfulqa_sample_gives_four_option_questions(monkeypatch):
    monkeypatch.delenv("PLAYBOOK_DATA_DIR", raising=False)
    questions = truthfulqa_mc_questions(load_truthfulqa(source="sample"))
    assert len(questions) == 8 and all(len(q.options) == 4 for q in questions)


def test_truthfulqa_mc_questions_names_the_problem_when_none_has_enough_options():
    short = {"question": "q", "mc1_choices": ["right", "w1", "w2"], "mc1_labels": [1, 0, 0]}
    with pytest.raises(ValueError, match=r"none of the 2 questions has 4 MC1 choices.*most any has is 3"):
        truthfulqa_mc_questions([short, short])
    assert len(truthfulqa_mc_questions([short, short], options=3)) == 2


# ------------------------------------------------------------------------- diagram, K-way NLL


def test_bins_know_their_centre_and_width_and_the_diagram_draws_bars_on_them():
    bins = calibration_bins([0.05, 0.12, 0.95], [0, 1, 1], n_bins=10)
    assert bins.index.tolist() == [0, 1, 9]
    assert bins.centre == pytest.approx([0.05, 0.15, 0.95]) and bins.width == pytest.approx([0.1, 0.1, 0.1])
    assert bins.confidence == pytest.approx([0.05, 0.12, 0.95])  # the mean confidence stays where it is
    figure = reliability_diagram([0.05, 0.12, 0.95], [0, 1, 1], accuracy_interval=([0, 0.5, 0.9], [0.1, 1, 1]))
    accuracy_bars = figure.axes[0].patches[:3]
    assert [bar.get_x() for bar in accuracy_bars] == pytest.approx([0.0, 0.1, 0.9])  # bin edges: no overlap
    assert [bar.get_width() for bar in accuracy_bars] == pytest.approx([0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="one low and one high per non-empty bin"):
        reliability_diagram([0.05, 0.95], [0, 1], accuracy_interval=([0], [1]))


def test_option_nll_is_the_k_way_cross_entropy_the_temperature_minimises():
    assert option_nll([[0.0, 0.0, 0.0, 0.0]], [2]) == pytest.approx(np.log(4))
    assert option_nll([[2.0, 0.0]], [0], temperature=2.0) == pytest.approx(np.log(1 + np.exp(-1)))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 4)) * 3
    labels = np.array([rng.choice(4, p=row) for row in apply_temperature(logits, 2.0)])  # truly T = 2
    fitted = fit_temperature(logits, labels)
    assert 1.5 < fitted < 2.5
    assert option_nll(logits, labels, fitted) <= min(
        option_nll(logits, labels, t) for t in (fitted * 0.9, fitted * 1.1)
    )
    with pytest.raises(ValueError, match="temperature must be positive"):
        option_nll(logits, labels, 0.0)


# -------------------------------------------------------------------------- next-token calibration


def token_table(rows):
    return pd.DataFrame(rows, columns=["document", "confidence", "correct"])


def test_grouped_ece_equals_the_token_ece_and_identical_documents_leave_no_spread():
    same = token_table([(0, 0.25, 0), (0, 0.75, 1), (1, 0.25, 0), (1, 0.75, 1)])
    assert grouped_ece_interval(same) == pytest.approx((0.25, 0.25, 0.25))  # every resample: the same tokens
    mixed = token_table([(0, 0.9, 1), (0, 0.9, 1), (1, 0.9, 0), (2, 0.3, 0), (2, 0.35, 1)])
    ece, low, high = grouped_ece_interval(mixed, resamples=500)
    assert ece == pytest.approx(expected_calibration_error(mixed["confidence"], mixed["correct"]))
    assert low < ece < high
    low_bins, high_bins = grouped_bin_accuracy_interval(mixed, resamples=500)
    # bins (0.2, 0.3], (0.3, 0.4] and (0.8, 0.9]: the first two hold one token each of document 2, so a resample
    # that draws it gives 0 or 1; resamples without document 2 leave them empty and are left out
    assert low_bins.tolist() == [0.0, 1.0, 0.0] and high_bins.tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="single document"):
        grouped_ece_interval(token_table([(0, 0.5, 1), (0, 0.5, 0)]))


def test_grouped_ece_difference_is_paired_by_document_and_worded_by_its_interval():
    sure = token_table([(0, 0.9, 1), (1, 0.9, 1), (2, 0.9, 1)])
    certain = sure.assign(confidence=1.0)
    result = grouped_ece_difference(sure, certain, resamples=200)
    assert (result.difference, result.low, result.high) == pytest.approx((0.1, 0.1, 0.1))
    assert "less calibrated than" in result.describe("PPO", "SFT") and "+0.1000" in result.describe("PPO", "SFT")
    same = grouped_ece_difference(sure, sure, resamples=200)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert "inside the noise" in same.describe("PPO", "SFT")
    with pytest.raises(ValueError, match="same texts"):
        grouped_ece_difference(sure, sure.iloc[:2])


def test_ece_difference_pairs_two_confidences_in_the_same_predictions():
    correct = np.tile([1, 1, 0, 1], 50)  # right on 150 of 200
    over = np.full(200, 0.95)  # 95% sure at 75% accuracy: ECE 0.2
    matched = np.full(200, 0.75)  # the same picks at their accuracy: ECE 0
    result = ece_difference(over, matched, correct, units="pairs", resamples=300)
    assert result.difference == pytest.approx(0.2)
    assert result.documents == 200 and 0 < result.low < result.difference
    text = result.describe("raw", "scaled")
    assert "over 200 pairs" in text and "raw is less calibrated than scaled" in text
    same = ece_difference(over, over, correct, resamples=50)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    assert "inside the noise at this many predictions" in same.describe("raw", "raw")
    with pytest.raises(ValueError, match="confidences has 199 values"):
        ece_difference(over, matched[:199], correct)


def test_ece_difference_of_one_prediction_has_no_interval_and_says_so():
    # notebook 05 on the bundled sample data judges a single held-out pair
    alone = ece_difference([0.9], [0.6], [1], units="pairs")
    assert alone.difference == pytest.approx(0.1 - 0.4) and alone.documents == 1
    assert math.isnan(alone.low) and math.isnan(alone.high)
    assert alone.describe("raw", "rescaled") == (
        "ECE raw − rescaled = -0.3000 from 1 pair: too few to resample for an interval, so this difference cannot be "
        "told from noise."
    )


@pytest.mark.slow
def test_next_token_predictions_match_a_plain_forward_pass(embedded):
    from playbook.calibration import next_token_predictions, reply_tokens
    from playbook.sft import loss_mask

    model, tokenizer = embedded
    conversations = [
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello there!"}],
        [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}],
    ]
    replies = reply_tokens(tokenizer, conversations)
    table = next_token_predictions(model, tokenizer, replies, batch_size=1)
    for document, conversation in enumerate(conversations):
        ids, mask = loss_mask(tokenizer, conversation, None)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].float().cpu()
            probabilities = torch.softmax(logits, -1)
        scored = np.flatnonzero(mask[1:])  # positions whose next token is a reply token
        rows = table[table["document"] == document]
        assert len(rows) == sum(mask) - mask[0]
        assert rows["confidence"].to_numpy() == pytest.approx(probabilities[scored].max(-1).values.numpy(), abs=1e-5)
        expected = (probabilities[scored].argmax(-1).numpy() == np.array(ids[1:])[scored]).astype(int)
        assert rows["correct"].tolist() == expected.tolist()
    assert table["document"].tolist() == sorted(table["document"])


def test_describe_ece_of_one_item_says_there_is_no_interval():
    # confidence 0.8 in a right answer: |0.8 − 1| = 0.2 in its one bin
    assert describe_ece([0.8], [True]) == "0.200 (from 1 item: too few to resample for an interval)"


def test_option_logits_are_each_options_mean_token_log_probability(tiny_causal_lm, tokenizer):
    from playbook.calibration import ANSWER_PREFIX, option_logits

    questions = [
        MCQuestion("Capital of France?", ("Paris", "a town in the far north"), 0),
        MCQuestion("2+2?", ("4", "5"), 0),
    ]

    def by_hand(question: MCQuestion, option: str) -> float:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question.question}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer(prompt + ANSWER_PREFIX, add_special_tokens=False)["input_ids"]
        option_ids = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_probs = tiny_causal_lm(input_ids=torch.tensor([prompt_ids + option_ids])).logits[0].log_softmax(-1)
        predicting = log_probs[len(prompt_ids) - 1 : -1]  # the positions before each option token
        return predicting.gather(-1, torch.tensor(option_ids)[:, None]).mean().item()

    scores = option_logits(tiny_causal_lm, tokenizer, questions, batch_size=3)  # options of different lengths padded
    expected = [[by_hand(q, option) for option in q.options] for q in questions]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
