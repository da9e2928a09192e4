import importlib.util
import math

import numpy as np
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
    "05.3": (lambda margins, shorter: (sum(m > 0 for m in margins) + 0.5 * margins.count(0)) / len(margins), "pooled"),
    "00.1": (lambda params, dtype: params * 4, "bfloat16 takes 2 bytes"),
    "00.3": (
        lambda weights: [
            min(weights)
            + int((w - min(weights)) / ((max(weights) - min(weights)) / 15)) * ((max(weights) - min(weights)) / 15)
            for w in weights
        ],
        "truncates",
    ),
    "01.1": (lambda results: {p: sum(ok for q, ok in results if q == p) for p, _ in results}, "divide"),
    "02.1": (lambda ratings: [(a, b) for a in ratings for b in ratings if ratings[a] >= ratings[b] and a != b], "ties"),
    "02.2": (lambda ranking: list(zip(ranking.split(), ranking.split()[1:], strict=False)), "not only neighbours"),
    "03.1": (lambda pairs: sum(len(c) > len(r) for c, r in pairs) / len(pairs), "half a win"),
    "05.1": (lambda c, r: 1 / (1 + math.exp(c - r)), "sign is flipped"),
    "06.1": (
        lambda score, logprobs, ref_logprobs, beta: [
            beta * (a - b) for a, b in zip(logprobs, ref_logprobs, strict=True)
        ],
        "negative",
    ),
    "06.2": (
        lambda rewards, values, gamma, lam: [
            r + gamma * v_next - v for r, v_next, v in zip(rewards, [*values[1:], 0.0], values, strict=True)
        ],
        "one-step errors",
    ),
    "07.1": (lambda c, r, beta: -math.log(1 / (1 + math.exp(-(c - r)))), "β is missing"),
    "07.2": (lambda rewards: [x - sum(rewards) / len(rewards) for x in rewards], "leave it out"),
    "08.1": (lambda n: math.log(n) if n > 1 else 0.0, "subtract (n − 1)/n"),
    "08.2": (lambda scores: sum(max(a, b) for a in scores for b in scores) / len(scores) ** 2, "without replacement"),
    "09.1": (lambda true_positives, false_positives, false_negatives: 0.675, "harmonic mean"),
    "09.2": (lambda text: (1996, 12, 9) if "12.09" in text else None, "swapped"),
    "09.3": (lambda lp, ok, t: (((lp < t) & ~ok).sum() / len(lp), ((lp < t) & ok).sum() / len(lp)), "within its class"),
    "10.1": (lambda probs, alpha: probs >= alpha, "relative"),
    "10.2": (lambda final, premature, alpha: final - premature, "must score −inf"),
    "11.1": (lambda confidences, correct: 0.3, "Expected ECE"),
    "11.2": (
        lambda confidences, correct, resamples, seed: __import__("playbook.calibration").calibration.ece_interval(
            np.random.default_rng(seed).permutation(confidences), correct, resamples=resamples, seed=seed
        ),
        "same rows",
    ),
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
    check("03.2", SOLUTIONS["03.2"])
    assert "03.2: correct" in capsys.readouterr().out
    with pytest.raises(KeyError, match="No exercise '99.9'"):
        review("99.9", None)


def _gae_bootstrapping_past_the_end(rewards, values, gamma, lam):
    advantages, following = [0.0, 0.0, 0.0], 0.0
    for t in reversed(range(3)):
        delta = rewards[t] + gamma * [*values[1:], values[-1]][t] - values[t]  # wrong: a value after the end
        following = delta + gamma * lam * following
        advantages[t] = following
    return advantages


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (
            lambda rewards, values, gamma, lam: [
                sum(gamma**k * r for k, r in enumerate(rewards[t:])) - values[t] for t in range(3)
            ],
            "λ = 1",
        ),
        (_gae_bootstrapping_past_the_end, "the value after it is 0"),
        (lambda rewards, values, gamma, lam: [0.0, 0.0, rewards[2]], "expected"),
    ],
)
def test_gae_exercise_names_the_mistake(wrong, hint):
    feedback = review("06.2", wrong)
    assert not feedback.correct and hint in feedback.message
