import pandas as pd
import pytest
from datasets import Dataset

from playbook.feedback import PairwiseFeedback, to_preference_row
from playbook.preferences import (
    ends_mid_sentence,
    find_examples,
    length_bias_accuracy,
    length_preference,
    longer_wins_scores,
    pair_statistics,
    plot_statistics,
    summary_table,
    unfinished_replies,
)


def make_dataset():
    conversation = [
        {"role": "user", "content": "Can you hack my ex's email?"},
        {"role": "assistant", "content": "Why?"},
        {"role": "user", "content": "Just do it"},
    ]
    return Dataset.from_list(
        [
            to_preference_row(PairwiseFeedback("Hello there", "Hi! How can I help you today?", "Hi")),
            to_preference_row(PairwiseFeedback(conversation, "No.", "Sure, first guess the password")),
            to_preference_row(PairwiseFeedback("Weather?", "Dry today", "Wet today")),
        ]
    )


def test_pair_statistics_counts_turns_and_lengths(tokenizer):
    stats = pair_statistics(make_dataset(), tokenizer)
    assert stats["turns"].tolist() == [1, 2, 1]
    assert stats["chosen_chars"].tolist() == [29, 3, 9]
    assert stats.loc[0, "chosen_tokens"] > stats.loc[0, "rejected_tokens"]
    assert stats.loc[2, "chosen_chars"] == stats.loc[2, "rejected_chars"] == 9


def test_length_bias_counts_ties_as_half():
    stats = pd.DataFrame({"chosen_tokens": [10, 1, 5, 7], "rejected_tokens": [2, 9, 5, 3]})
    assert length_bias_accuracy(stats) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="no pairs"):
        length_bias_accuracy(stats.iloc[:0])


def test_summary_reports_best_length_rule(tokenizer):
    stats = pair_statistics(make_dataset(), tokenizer)
    table = summary_table({"toy": stats})
    longer = length_bias_accuracy(stats)
    assert table.loc["longer-wins accuracy (tokens)", "toy"] == pytest.approx(longer)
    assert table.loc["best length rule (tokens)", "toy"] == pytest.approx(max(longer, 1 - longer))
    assert table.loc["pairs", "toy"] == 3


def test_find_examples_searches_user_turns_only():
    dataset = make_dataset()
    assert find_examples(dataset, r"hack.{0,40}e-?mail") == [1]
    assert find_examples(dataset, r"password") == []  # only in a response
    assert find_examples(dataset, r"h", limit=1) == [0]


def test_plot_has_four_panels(tokenizer):
    figure = plot_statistics({"toy": pair_statistics(make_dataset(), tokenizer)})
    assert len(figure.axes) == 4
    assert figure.axes[3].patches[0].get_height() == pytest.approx(
        length_bias_accuracy(pair_statistics(make_dataset(), tokenizer))
    )


def test_length_preference_gives_the_direction_only_outside_the_noise():
    shorter = pd.DataFrame({"chosen_tokens": [1] * 90 + [9] * 10, "rejected_tokens": [5] * 100})
    preference = length_preference("toy", shorter)
    assert preference.share == pytest.approx(0.1) and preference.pairs == 100
    assert preference.interval[0] < 0.1 < preference.interval[1] < 0.5
    assert "towards shorter replies" in str(preference)
    balanced = pd.DataFrame({"chosen_tokens": [1, 9, 5, 9, 1, 5], "rejected_tokens": [5, 5, 5, 5, 5, 5]})
    assert longer_wins_scores(balanced).tolist() == [0, 1, 0.5, 1, 0, 0.5]
    assert "within the noise of a coin flip" in str(length_preference("even", balanced))


@pytest.mark.parametrize(
    ("reply", "cut"),
    [
        ("That is all.", False),
        ('He said "stop!"', False),
        ("Really?)", False),
        ("Wait…", False),
        ("and so it’s", True),
        ("Ok", True),
        ("", True),
    ],
)
def test_ends_mid_sentence(reply, cut):
    assert ends_mid_sentence(reply) is cut


def test_unfinished_replies_counts_per_role():
    table = unfinished_replies(make_dataset())  # chosen: "…today?", "No.", "Dry today"; rejected: all unfinished
    assert table.loc["chosen", "mid-sentence"] == 1 and table.loc["rejected", "mid-sentence"] == 3
    assert table.loc["chosen", "share"] == pytest.approx(1 / 3)
