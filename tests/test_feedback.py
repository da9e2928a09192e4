import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from playbook import annotation
from playbook.annotation import (
    AnnotationItem,
    AnnotationStore,
    AnnotationStoreBusy,
    annotation_widget,
    describe_form,
    feedback_from_answer,
    label_agreement,
    pairwise_choice,
)
from playbook.feedback import (
    BinaryFeedback,
    CorrectiveFeedback,
    PairwiseFeedback,
    RankingFeedback,
    correction_to_pair,
    correction_to_sft,
    from_record,
    pairs_without_preference,
    preference_pairs,
    ranking_to_pairs,
    repeated_pairs,
    to_preference_row,
    to_record,
    to_training_sets,
    to_unpaired_row,
)

USER = [{"role": "user", "content": "Q?"}]


def test_ranking_of_k_gives_k_choose_2_pairs_best_first():
    ranking = RankingFeedback("Q?", ["c", "a", "d", "b"], [3, 1, 4, 2])
    pairs = ranking_to_pairs(ranking)
    assert len(pairs) == 4 * 3 // 2
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("b", "c"),
        ("b", "d"),
        ("c", "d"),
    ]


def test_ties_give_no_pair_and_a_ranking_of_one_gives_none():
    assert [(p.chosen, p.rejected) for p in ranking_to_pairs(RankingFeedback("Q?", ["a", "b", "c"], [1, 1, 2]))] == [
        ("a", "c"),
        ("b", "c"),
    ]
    assert ranking_to_pairs(RankingFeedback("Q?", ["only"], [1])) == []


def test_trl_formats():
    pair = PairwiseFeedback("Q?", "good", "bad")
    assert to_preference_row(pair) == {
        "prompt": USER,
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    assert to_unpaired_row(BinaryFeedback("Q?", "meh", False)) == {
        "prompt": USER,
        "completion": [{"role": "assistant", "content": "meh"}],
        "label": False,
    }
    correction = CorrectiveFeedback("Q?", "Paris is in Italy.", "Paris is in France.")
    assert correction_to_sft(correction) == {
        "prompt": USER,
        "completion": [{"role": "assistant", "content": "Paris is in France."}],
    }
    assert correction_to_pair(correction) == PairwiseFeedback("Q?", "Paris is in France.", "Paris is in Italy.")


def test_training_sets_from_a_mix_drop_exact_repeats_but_keep_disagreement():
    records = [
        PairwiseFeedback("Q?", "a", "b"),
        PairwiseFeedback("Q?", "a", "b"),  # the same label twice
        PairwiseFeedback("Q?", "b", "a"),  # another annotator disagrees
        RankingFeedback("Q?", ["x", "y", "z"], [1, 2, 3]),
        BinaryFeedback("Q?", "a", True),
        CorrectiveFeedback("Q?", "wrong", "right"),
    ]
    sets = to_training_sets(records)
    assert sorted(sets) == ["preference", "sft", "unpaired"]
    assert len(sets["preference"]) == 2 + 3 + 1
    assert len(sets["unpaired"]) == 1 and len(sets["sft"]) == 1
    assert set(to_training_sets([BinaryFeedback("Q?", "a", True)])) == {"unpaired"}


def test_a_tie_or_both_bad_gives_no_pair_and_is_counted():
    records = [
        PairwiseFeedback("Q?", "a", "b", strength="clearly better"),
        PairwiseFeedback("Q?", "c", "d", strength="tie"),
        PairwiseFeedback("Q?", "e", "f", strength="both bad"),
        PairwiseFeedback("Q?", "g", "h"),  # no strength given: still a preference
    ]
    assert [(p.chosen, p.rejected) for p in preference_pairs(records)] == [("a", "b"), ("g", "h")]
    assert pairs_without_preference(records) == {"tie": 1, "both bad": 1}
    assert len(to_training_sets(records)["preference"]) == 2
    assert to_training_sets(records[1:3]) == {}
    with pytest.raises(ValueError, match="prefers neither reply"):
        to_preference_row(records[1])


def test_repeated_pairs_name_the_kinds_that_gave_them():
    records = [
        PairwiseFeedback("Q?", "x", "y", strength="slightly better"),
        RankingFeedback("Q?", ["x", "y", "z"], [1, 2, 3]),  # x > y again, plus x > z and y > z
        CorrectiveFeedback("Q?", "z", "x"),  # x > z a third time
    ]
    repeats = [((p.chosen, p.rejected), kinds) for p, kinds in repeated_pairs(records)]
    assert repeats == [(("x", "y"), ["pairwise", "ranking"]), (("x", "z"), ["ranking", "corrective"])]
    assert len(preference_pairs(records)) == 5 and len(to_training_sets(records)["preference"]) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PairwiseFeedback("Q?", "same", "same"), "same text"),
        (lambda: PairwiseFeedback("Q?", "", "b"), "chosen: must be non-empty"),
        (lambda: PairwiseFeedback("", "a", "b"), "prompt"),
        (lambda: PairwiseFeedback([{"role": "assistant", "content": "hi"}], "a", "b"), "last message must be"),
        (lambda: BinaryFeedback("Q?", "a", "yes"), "accepted: must be True or False"),
        (lambda: RankingFeedback("Q?", ["a", "a"], [1, 2]), "'a' appears more than once"),
        (lambda: RankingFeedback("Q?", ["a", "b"], [1]), "1 ranks for 2 responses"),
        (lambda: RankingFeedback("Q?", ["a", "b"], [0, 1]), "whole numbers from 1"),
        (lambda: RankingFeedback("Q?", [], []), "at least one response"),
        (lambda: CorrectiveFeedback("Q?", "same ", "same"), "identical to the response"),
        (lambda: CorrectiveFeedback("Q?", "x", "  "), "correction: must be non-empty"),
        (lambda: PairwiseFeedback("Q?", "a", "b", strength="much better"), "strength: 'much better' is not one of"),
    ],
)
def test_bad_feedback_is_rejected_with_the_field_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "feedback",
    [
        BinaryFeedback("Q?", "a", True),
        PairwiseFeedback(USER, "a", "b"),
        PairwiseFeedback(USER, "a", "b", strength="slightly better"),
        PairwiseFeedback(USER, "a", "b", strength="both bad"),
        RankingFeedback("Q?", ["a", "b"], [2, 1]),
        CorrectiveFeedback("Q?", "a", "b"),
    ],
)
def test_record_round_trip_through_json(feedback):
    assert from_record(json.loads(json.dumps(to_record(feedback)))) == feedback


# ----------------------------------------------------------------------------------- the store

ITEMS = [
    AnnotationItem(f"item-{i}", f"Question {i}?", [f"answer {i}a", f"answer {i}b", f"answer {i}c"]) for i in range(3)
]


def test_answers_become_feedback():
    item = ITEMS[0]
    assert feedback_from_answer(item, "pairwise", "b") == PairwiseFeedback("Question 0?", "answer 0b", "answer 0a")
    assert feedback_from_answer(item, "ranking", "C A B").ranks == (2, 3, 1)
    assert feedback_from_answer(item, "binary", False).accepted is False
    assert feedback_from_answer(item, "corrective", "better").correction == "better"
    with pytest.raises(ValueError, match="exactly once"):
        feedback_from_answer(item, "ranking", "A A B")
    with pytest.raises(ValueError, match="'D' is not one of the response letters"):
        feedback_from_answer(item, "ranking", "A B D")
    with pytest.raises(ValueError, match="'C' is not one of"):
        feedback_from_answer(item, "pairwise", "C")


def test_pairwise_answers_carry_a_strength_or_no_preference():
    item = ITEMS[0]
    clearly_b = feedback_from_answer(item, "pairwise", "B clearly")
    assert clearly_b == PairwiseFeedback("Question 0?", "answer 0b", "answer 0a", strength="clearly better")
    assert feedback_from_answer(item, "pairwise", "a slightly better").strength == "slightly better"
    tie = feedback_from_answer(item, "pairwise", "Tie")
    assert (tie.chosen, tie.rejected, tie.strength, tie.prefers) == ("answer 0a", "answer 0b", "tie", False)
    assert [pairwise_choice(item, f) for f in (clearly_b, tie, feedback_from_answer(item, "pairwise", "both bad"))] == [
        "B",
        "tie",
        "both bad",
    ]
    with pytest.raises(ValueError, match="'A much' is not a letter"):
        feedback_from_answer(item, "pairwise", "A much")


def test_a_label_file_from_before_strengths_still_loads(tmp_path):
    path = tmp_path / "labels.jsonl"
    old = {"kind": "pairwise", "prompt": USER, "chosen": "answer 0b", "rejected": "answer 0a"}
    path.write_text(json.dumps({"item_id": "item-0", "time": 1.0, "feedback": old}) + "\n")
    store = AnnotationStore(path)
    assert store.labels == [("item-0", PairwiseFeedback("Q?", "answer 0b", "answer 0a"))]
    assert store.labels[0][1].strength is None and len(preference_pairs(store.feedback())) == 1
    assert to_record(PairwiseFeedback("Q?", "answer 0b", "answer 0a")) == old  # written the same way as before
    store.record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "tie"))
    assert json.loads(path.read_text().splitlines()[1])["feedback"]["strength"] == "tie"
    assert AnnotationStore(path).labels == store.labels


def test_agreement_needs_enough_labels_and_gives_cohens_kappa():
    few = label_agreement({"a": "A", "b": "B"}, {"a": "A", "b": "A", "c": "B"})
    assert (few.labels, few.agreed, few.kappa) == (2, 1, None) and "too few" in few.summary()
    mine = {f"i{n}": answer for n, answer in enumerate("AAAAABBBBB")}
    script = {f"i{n}": answer for n, answer in enumerate("AAAAABBBBA")}
    agreement = label_agreement(mine, script)
    assert (agreement.labels, agreement.agreed) == (10, 9) and agreement.kappa == pytest.approx(0.8)
    assert "9 of 10" in agreement.summary() and "kappa = 0.80" in agreement.summary()
    same = label_agreement({f"i{n}": "A" for n in range(10)}, {f"i{n}": "A" for n in range(10)})
    assert same.kappa is None and "undefined" in same.summary()


def test_store_appends_and_resumes_without_duplicates(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    assert store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    assert not store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "B"))  # already labelled
    assert store.record("item-0", feedback_from_answer(ITEMS[0], "binary", True))  # another kind is fine
    reopened = AnnotationStore(path)
    assert reopened.labels == store.labels
    assert [i.item_id for i in reopened.pending(ITEMS, "pairwise")] == ["item-1", "item-2"]
    assert len(path.read_text().splitlines()) == 2


def test_crash_mid_write_loses_nothing_complete_and_keeps_the_torn_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    store.record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "B"))
    with path.open("a") as handle:  # the process dies halfway through writing the third label
        handle.write('{"item_id": "item-2", "time": 1.0, "feedback": {"kind": "pairw')
    resumed = AnnotationStore(path)
    assert [item_id for item_id, _ in resumed.labels] == ["item-0", "item-1"]
    torn = list(tmp_path.glob("labels.jsonl.torn-*"))
    assert len(torn) == 1 and torn[0].read_text().startswith('{"item_id": "item-2"')
    assert resumed.record("item-2", feedback_from_answer(ITEMS[2], "pairwise", "A"))
    assert [json.loads(line)["item_id"] for line in path.read_text().splitlines()] == ["item-0", "item-1", "item-2"]


def test_damage_inside_the_file_is_reported_not_dropped(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    path.write_text("not json\n" + path.read_text())
    with pytest.raises(ValueError, match=r"labels\.jsonl:1: damaged label"):
        AnnotationStore(path)


def test_widget_records_clicks_and_resumes(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    widget = annotation_widget(ITEMS, store, "pairwise")
    header, _, controls, _, _ = widget.children
    assert "Item 1 of 3" in header.value
    assert [b.description for b in controls.children] == [
        "A clearly better",
        "A slightly better",
        "Tie",
        "Both bad",
        "B slightly better",
        "B clearly better",
    ]
    controls.children[4].click()  # "B slightly better"
    slightly_b = PairwiseFeedback("Question 0?", "answer 0b", "answer 0a", strength="slightly better")
    assert store.labels[0] == ("item-0", slightly_b)
    assert "Item 2 of 3" in header.value
    resumed = annotation_widget(ITEMS, AnnotationStore(path), "pairwise")
    assert "Item 2 of 3" in resumed.children[0].value  # a new session starts at the first unlabelled item


def test_ranking_widget_shows_the_error_and_keeps_the_item(tmp_path):
    store = AnnotationStore(tmp_path / "labels.jsonl")
    widget = annotation_widget(ITEMS, store, "ranking")
    header, _, controls, _, status = widget.children
    text, submit = controls.children
    text.value = "A A"
    submit.click()
    assert "exactly once" in status.value and store.labels == [] and "Item 1 of 3" in header.value
    text.value = "C B A"
    submit.click()
    assert store.labels[0][1].ranks == (3, 2, 1) and "Item 2 of 3" in header.value


# ------------------------------------------------------------------------------ two writers, torn tails


HOLD_THE_STORE = (
    "import sys, time; from playbook.annotation import AnnotationStore; s = AnnotationStore(sys.argv[1]); "
    "print('ready', flush=True); time.sleep(120)"
)


@pytest.fixture
def other_process_holding(tmp_path):
    """Start a process that opens an AnnotationStore on a path and keeps it open; yields the path."""
    path = tmp_path / "labels.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_STORE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield path
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_on_the_same_file_is_refused_by_name(other_process_holding):
    with pytest.raises(AnnotationStoreBusy) as refused:
        AnnotationStore(other_process_holding)
    assert str(refused.value) == (
        f"{other_process_holding} is open in another annotator or process (it holds labels.jsonl.lock). Finish "
        "there and close it (or restart that notebook's kernel), or label into a different file."
    )


def test_the_lock_goes_with_the_store(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    del store
    gc.collect()
    other = subprocess.run(
        [sys.executable, "-c", HOLD_THE_STORE.replace("time.sleep(120)", "print(len(s.labels))"), str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert other.stdout.split() == ["ready", "1"], other.stderr


def test_a_newer_store_in_the_same_process_takes_over_and_the_older_one_stops_writing(tmp_path):
    path = tmp_path / "labels.jsonl"
    first = AnnotationStore(path)
    first.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    second = AnnotationStore(path)  # a notebook cell run again
    with pytest.raises(RuntimeError, match=r"labels\.jsonl: a newer AnnotationStore was opened on this file"):
        first.record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "A"))
    assert second.record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "B"))
    assert [json.loads(line)["item_id"] for line in path.read_text().splitlines()] == ["item-0", "item-1"]


def test_two_annotators_labels_resolve_to_the_last_per_item_and_kind(tmp_path, caplog):
    items = [AnnotationItem(f"item-{i}", f"Question {i}?", [f"first {i}", f"second {i}"]) for i in range(300)]
    lines = [
        json.dumps(
            {
                "item_id": item.item_id,
                "time": 0.0,
                "feedback": to_record(feedback_from_answer(item, "pairwise", answer)),
            }
        )
        for answer in ("A", "B")  # annotator one prefers A everywhere, annotator two (later) B
        for item in items
    ]
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="playbook.annotation"):
        store = AnnotationStore(path)
    assert store.replaced_labels == 300 and len(store.labels) == 300
    assert "300 label(s) were given again later for the same item and kind" in caplog.text
    assert "the last label of each counts, the earlier ones stay in the file unused" in caplog.text
    preference = to_training_sets(store.feedback())["preference"]
    assert len(preference) == 300
    assert {row["chosen"][0]["content"].split()[0] for row in preference} == {"second"}
    assert len(path.read_text().splitlines()) == 600  # nothing was deleted from the file


def test_torn_tails_within_one_second_are_both_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(annotation.time, "strftime", lambda pattern: "20260101-120000")
    path = tmp_path / "labels.jsonl"
    for number in (1, 2):
        with path.open("a") as handle:
            handle.write(f'{{"item_id": "torn-{number}"')
        AnnotationStore(path)
    torn = sorted(tmp_path.glob("labels.jsonl.torn-*"))
    assert [p.name for p in torn] == ["labels.jsonl.torn-20260101-120000", "labels.jsonl.torn-20260101-120000-2"]
    assert [p.read_text() for p in torn] == ['{"item_id": "torn-1"', '{"item_id": "torn-2"']


def test_undo_appends_a_retraction_that_reopening_honours(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    store.record("item-0", feedback_from_answer(ITEMS[0], "pairwise", "A"))
    store.record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "B"))
    assert store.undo_last()[0] == "item-1"
    assert [i for i, _ in store.labels] == [i for i, _ in AnnotationStore(path).labels] == ["item-0"]
    assert len(path.read_text().splitlines()) == 3  # nothing is rewritten, only appended
    assert AnnotationStore(path).record("item-1", feedback_from_answer(ITEMS[1], "pairwise", "A"))
    assert AnnotationStore(tmp_path / "empty.jsonl").undo_last() is None


def test_widget_confirms_each_label_and_undoes_the_last(tmp_path):
    store = AnnotationStore(tmp_path / "labels.jsonl")
    widget = annotation_widget(ITEMS, store, "pairwise")
    header, _, controls, undo, status = widget.children
    assert undo.disabled
    controls.children[0].click()
    controls.children[0].click()
    assert "Saved the pairwise label for item-1; 2 labels in" in status.value and "labels.jsonl" in status.value
    undo.click()
    assert "Took back the label for item-1; 1 label in" in status.value and "Item 2 of 3" in header.value
    assert [i for i, _ in AnnotationStore(store.path).labels] == ["item-0"]


def test_widget_undo_leaves_a_label_given_elsewhere_alone(tmp_path):
    store = AnnotationStore(tmp_path / "labels.jsonl")
    widget = annotation_widget(ITEMS, store, "pairwise")
    _, _, controls, undo, status = widget.children
    controls.children[2].click()  # "Tie" on item-0
    store.record("item-0", feedback_from_answer(ITEMS[0], "binary", True))  # another form's label comes after it
    undo.click()
    assert "Not undone: the latest label in the file was not given in this form" in status.value
    assert [(i, f.kind) for i, f in store.labels] == [("item-0", "pairwise"), ("item-0", "binary")]


def test_widget_shows_a_failed_save_instead_of_nothing(tmp_path):
    store = AnnotationStore(tmp_path / "labels.jsonl")
    store.path.mkdir()  # the label file cannot be opened for appending
    widget = annotation_widget(ITEMS, store, "binary")
    header, _, controls, _, status = widget.children
    controls.children[0].click()
    assert "Not saved:" in status.value and "Item 1 of 3" in header.value and store.labels == []


def test_widget_falls_back_to_a_text_and_a_picture_without_a_kernel(tmp_path):
    bundle = annotation_widget(ITEMS, AnnotationStore(tmp_path / "labels.jsonl"))._repr_mimebundle_()
    assert bundle["text/plain"].startswith("Annotation form (pairwise): 3 of 3 items to label, saved to labels.jsonl")
    assert "Item 1 of 3" in bundle["text/html"] and "A slightly better" in bundle["text/html"]
    assert "Tie / Both bad" in describe_form("pairwise") and "Undo last label" in describe_form("ranking")
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_a_label_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    store.record(ITEMS[0].item_id, feedback_from_answer(ITEMS[0], "pairwise", "A"))
    del store
    with path.open("ab") as handle:
        handle.write(b'{"item_id": "b\xff"}\n')
    with pytest.raises(ValueError, match=r"labels.jsonl:2: not UTF-8 text .*fix or remove that line"):
        AnnotationStore(path)


def test_undo_survives_reopening_and_a_newer_store_takes_over(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = AnnotationStore(path)
    for item in ITEMS[:2]:
        store.record(item.item_id, feedback_from_answer(item, "pairwise", "A"))
    undone = store.undo_last()
    assert undone[0] == ITEMS[1].item_id and [i for i, _ in store.labels] == [ITEMS[0].item_id]
    newer = AnnotationStore(path)  # reopening replays the retraction line
    assert [i for i, _ in newer.labels] == [ITEMS[0].item_id]
    with pytest.raises(RuntimeError, match="a newer AnnotationStore was opened on this file"):
        store.undo_last()
    assert len(path.read_text().splitlines()) == 3  # two labels and one retraction: nothing deleted
