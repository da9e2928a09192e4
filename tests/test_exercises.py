import importlib.util
import math

import pytest

from conftest import REPO
from playbook.exercises import EXERCISES, check, exercises_for, review
from playbook.io import course_notebooks


def load_solutions():
    spec = importlib.util.spec_from_file_location("answers", REPO / "solutions" / "answers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SOLUTIONS


SOLUTIONS = load_solutions()


def test_every_exercise_has_a_solution_and_every_notebook_has_exercises():
    assert set(SOLUTIONS) == set(EXERCISES)
    notebooks = {path.stem for path in course_notebooks()}
    assert notebooks == {exercise.notebook for exercise in EXERCISES.values()}
    assert all(exercises_for(notebook) for notebook in notebooks)


@pytest.mark.parametrize("exercise", sorted(EXERCISES))
def test_the_solution_passes_its_checker(exercise):
    feedback = review(exercise, SOLUTIONS[exercise])
    assert feedback.correct, feedback.message


WRONG_ANSWERS = {
    "00.2": (
        lambda cuda_available, mps_available: "mps" if mps_available else "cuda" if cuda_available else "cpu",
        "CUDA comes first",
    ),
    "01.2": (lambda principle: "answer" if principle != "harmless" else "refuse", "admits it"),
    "04.1": (lambda tok, turns: [1] * len(tok.apply_chat_template(turns, return_dict=False)), "prompt is context"),
    "04.2": (lambda logprobs, mask: sum(-lp for lp, m in zip(logprobs, mask, strict=True) if m), "do not sum"),
    "03.2": (lambda transcript: transcript.split("\n\nAssistant:")[1].split("\n\n")[0].strip(), "first Assistant"),
    "05.2": (lambda margins: sum(m > 0 for m in margins) / len(margins), "half a win"),
    "00.1": (lambda params, dtype: params * 4, "bfloat16 takes 2 bytes"),
    "01.1": (lambda results: {p: sum(ok for q, ok in results if q == p) for p, _ in results}, "divide"),
    "02.1": (lambda ratings: [(a, b) for a in ratings for b in ratings if ratings[a] >= ratings[b] and a != b], "ties"),
    "02.2": (lambda k: k * (k - 1), "counted twice"),
    "03.1": (lambda pairs: sum(len(c) >= len(r) for c, r in pairs) / len(pairs), "strict"),
    "05.1": (lambda c, r: 1 / (1 + math.exp(c - r)), "sign is flipped"),
    "06.1": (
        lambda score, logprobs, ref_logprobs, beta: [
            beta * (a - b) for a, b in zip(logprobs, ref_logprobs, strict=True)
        ],
        "negative",
    ),
    "06.2": ("larger", "holds the policy closer"),
    "07.1": (lambda c, r, beta: -math.log(1 / (1 + math.exp(-(c - r)))), "β is missing"),
    "07.2": (lambda rewards: [x - sum(rewards) / len(rewards) for x in rewards], "leave it out"),
    "08.1": (lambda true_positives, false_positives, false_negatives: 0.675, "harmonic mean"),
    "08.2": (lambda text: (1996, 12, 9) if "12.09" in text else None, "swapped"),
    "09.1": (lambda probs, alpha: probs >= alpha, "relative"),
    "09.2": (lambda final, premature, alpha: final - premature, "must score −inf"),
    "10.1": (lambda confidences, correct: 0.3, "Expected ECE"),
    "10.2": ("below 1", "sharpens"),
}


@pytest.mark.parametrize("exercise", sorted(WRONG_ANSWERS))
def test_a_typical_mistake_gets_a_specific_hint(exercise):
    answer, hint = WRONG_ANSWERS[exercise]
    feedback = review(exercise, answer)
    assert not feedback.correct
    assert hint in feedback.message


def test_stubs_and_crashes_get_a_nudge_not_a_traceback(capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError

    assert "Not attempted yet" in review("07.1", stub).message
    assert "ZeroDivisionError" in review("07.2", lambda rewards: 1 / 0).message
    check("06.2", "smaller")
    assert "06.2: correct" in capsys.readouterr().out
    with pytest.raises(KeyError, match="No exercise '99.9'"):
        review("99.9", None)
