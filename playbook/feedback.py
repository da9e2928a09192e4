"""The four kinds of human feedback, and how each becomes something a trainer can learn from.

- :class:`BinaryFeedback`, "this response is good / bad": an unpaired example (``prompt``/``completion``/
  ``label``, the format KTO trains on);
- :class:`PairwiseFeedback`, "A is better than B" (optionally how much better), or "a tie" / "both are bad": a
  preference pair (``prompt``/``chosen``/``rejected``, for reward models and DPO), except that a tie or "both bad"
  prefers neither reply and so gives no pair;
- :class:`RankingFeedback`, "B > A > C": K·(K−1)/2 preference pairs, minus ties (as in InstructGPT);
- :class:`CorrectiveFeedback`, "here is what it should have said": an SFT example, and a
  (correction ≻ original) pair.

Prompts are chat messages (a plain string is taken as one user message); responses are strings. Every record
checks itself when made, so bad feedback fails where it is created, with the field named.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from datasets import Dataset

from playbook.io import Messages

logger = logging.getLogger(__name__)
PREFERENCE_STRENGTHS = ("slightly better", "clearly better")
"""How much better the chosen reply is, as an annotator says it (Anthropic's HH interface asked for a strength)."""
NO_PREFERENCE = ("tie", "both bad")
"""Pairwise verdicts that prefer neither reply: they say something about the pair, but give no preference pair."""


def as_messages(prompt: str | Messages) -> tuple[dict[str, str], ...]:
    """A prompt as an immutable tuple of messages; a string becomes one user message. Rejects empty prompts."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if not messages or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
        raise ValueError("prompt: give a non-empty string or a list of {'role', 'content'} messages.")
    if messages[-1]["role"] != "user" or not str(messages[-1]["content"]).strip():
        raise ValueError("prompt: the last message must be a non-empty user message.")
    return tuple({"role": m["role"], "content": m["content"]} for m in messages)


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: must be non-empty text, got {value!r}.")
    return value


def _assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


@dataclass(frozen=True)
class BinaryFeedback:
    """A thumbs up or down on one response."""

    kind: ClassVar[str] = "binary"
    prompt: tuple[dict[str, str], ...]
    response: str
    accepted: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_messages(self.prompt))
        _text(self.response, "response")
        if not isinstance(self.accepted, bool):
            raise ValueError(f"accepted: must be True or False, got {self.accepted!r}.")


@dataclass(frozen=True)
class PairwiseFeedback:
    """A verdict on two responses to the same prompt: ``chosen`` preferred over ``rejected``, by ``strength``.

    ``strength`` is one of :data:`PREFERENCE_STRENGTHS`, or ``None`` when the annotator only said which is better
    (label files written before strengths existed load that way). It is one of :data:`NO_PREFERENCE` when the
    annotator preferred neither: then ``chosen`` and ``rejected`` are just the two responses in the order shown,
    and :attr:`prefers` is ``False``.
    """

    kind: ClassVar[str] = "pairwise"
    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    strength: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_messages(self.prompt))
        _text(self.chosen, "chosen")
        _text(self.rejected, "rejected")
        if self.chosen == self.rejected:
            raise ValueError("chosen and rejected are the same text: a pair needs two different responses.")
        if self.strength is not None and self.strength not in PREFERENCE_STRENGTHS + NO_PREFERENCE:
            raise ValueError(
                f"strength: {self.strength!r} is not one of {list(PREFERENCE_STRENGTHS + NO_PREFERENCE)} (or None)."
            )

    @property
    def prefers(self) -> bool:
        """Whether this verdict prefers one response: ``False`` for a tie or "both bad"."""
        return self.strength not in NO_PREFERENCE


@dataclass(frozen=True)
class RankingFeedback:
    """K responses ordered by preference: ``ranks[i]`` is the place of ``responses[i]`` (1 = best, equal = tie)."""

    kind: ClassVar[str] = "ranking"
    prompt: tuple[dict[str, str], ...]
    responses: tuple[str, ...]
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_messages(self.prompt))
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "ranks", tuple(self.ranks))
        if not self.responses:
            raise ValueError("responses: a ranking needs at least one response.")
        for index, response in enumerate(self.responses):
            _text(response, f"responses[{index}]")
        if len(self.ranks) != len(self.responses):
            raise ValueError(f"ranks: {len(self.ranks)} ranks for {len(self.responses)} responses.")
        if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in self.ranks):
            raise ValueError(f"ranks: must be whole numbers from 1 (best), got {self.ranks}.")
        duplicates = [r for r, n in Counter(self.responses).items() if n > 1]
        if duplicates:
            raise ValueError(f"responses: {duplicates[0]!r} appears more than once; rank each response once.")


@dataclass(frozen=True)
class CorrectiveFeedback:
    """A person's improved version of a response."""

    kind: ClassVar[str] = "corrective"
    prompt: tuple[dict[str, str], ...]
    response: str
    correction: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_messages(self.prompt))
        _text(self.response, "response")
        _text(self.correction, "correction")
        if self.correction.strip() == self.response.strip():
            raise ValueError("correction: identical to the response; there is nothing to learn from it.")


Feedback = BinaryFeedback | PairwiseFeedback | RankingFeedback | CorrectiveFeedback
KINDS: dict[str, type] = {
    cls.kind: cls for cls in (BinaryFeedback, PairwiseFeedback, RankingFeedback, CorrectiveFeedback)
}


# ----------------------------------------------------------------------------------- conversions


def ranking_to_pairs(ranking: RankingFeedback) -> list[PairwiseFeedback]:
    """Every pair of differently ranked responses, better one first: K·(K−1)/2 pairs when there are no ties."""
    order = sorted(range(len(ranking.responses)), key=lambda i: (ranking.ranks[i], i))
    return [
        PairwiseFeedback(ranking.prompt, ranking.responses[better], ranking.responses[worse])
        for better, worse in itertools.combinations(order, 2)
        if ranking.ranks[better] < ranking.ranks[worse]
    ]


def correction_to_pair(correction: CorrectiveFeedback) -> PairwiseFeedback:
    """The correction preferred over the original response."""
    return PairwiseFeedback(correction.prompt, correction.correction, correction.response)


def correction_to_sft(correction: CorrectiveFeedback) -> dict[str, Messages]:
    """A supervised fine-tuning example in TRL's conversational prompt-completion format."""
    return {"prompt": list(correction.prompt), "completion": _assistant(correction.correction)}


def to_preference_row(pair: PairwiseFeedback) -> dict[str, Messages]:
    """A pair in TRL's conversational preference format (``prompt``/``chosen``/``rejected``)."""
    if not pair.prefers:
        raise ValueError(f"pair: a {pair.strength!r} verdict prefers neither reply, so it is no preference pair.")
    return {"prompt": list(pair.prompt), "chosen": _assistant(pair.chosen), "rejected": _assistant(pair.rejected)}


def to_unpaired_row(binary: BinaryFeedback) -> dict[str, Any]:
    """A thumbs up/down in TRL's unpaired preference format (``prompt``/``completion``/``label``)."""
    return {"prompt": list(binary.prompt), "completion": _assistant(binary.response), "label": binary.accepted}


def preference_pairs(records: list[Feedback]) -> list[PairwiseFeedback]:
    """All pairwise preferences the records imply: pairs as given, rankings expanded, corrections as pairs.

    A tie or "both bad" gives no pair: a reward model learns "chosen beats rejected", and such a verdict says
    neither does (:func:`pairs_without_preference` counts them).
    """
    pairs: list[PairwiseFeedback] = []
    for record in records:
        if isinstance(record, PairwiseFeedback):
            if record.prefers:
                pairs.append(record)
        elif isinstance(record, RankingFeedback):
            pairs += ranking_to_pairs(record)
        elif isinstance(record, CorrectiveFeedback):
            pairs.append(correction_to_pair(record))
    return pairs


def pairs_without_preference(records: list[Feedback]) -> Counter[str]:
    """How many pairwise verdicts were a tie or "both bad" (these give no preference pair)."""
    return Counter(r.strength for r in records if isinstance(r, PairwiseFeedback) and not r.prefers)


def repeated_pairs(records: list[Feedback]) -> list[tuple[PairwiseFeedback, list[str]]]:
    """Each preference pair that the records give more than once, with the kinds of feedback that gave it (in
    order): what :func:`to_training_sets` keeps only once. Pairs compare by prompt, chosen and rejected text; the
    strength of a pairwise label does not make it a different pair."""
    sources: dict[str, list[str]] = {}
    first: dict[str, PairwiseFeedback] = {}
    for record in records:
        for pair in preference_pairs([record]):
            key = repr(to_preference_row(pair))  # the key _unique drops repeats by
            sources.setdefault(key, []).append(record.kind)
            first.setdefault(key, pair)
    return [(first[key], kinds) for key, kinds in sources.items() if len(kinds) > 1]


def to_training_sets(records: list[Feedback]) -> dict[str, Dataset]:
    """The datasets a trainer consumes, from any mix of feedback; exact repeats are kept once.

    ``preference`` (reward model, DPO), ``unpaired`` (KTO, from binary feedback) and ``sft`` (from corrections);
    a set is left out when no record feeds it. Contradicting pairs (A ≻ B and B ≻ A) are both kept: people
    disagree, and the reward model should see that. A tie or "both bad" gives no row (logged with its count).
    """
    skipped = pairs_without_preference(records)
    if skipped:
        logger.info(
            "%d pairwise label(s) preferred neither reply (%s): no preference pair from them.",
            sum(skipped.values()),
            dict(skipped),
        )
    rows = {
        "preference": [to_preference_row(p) for p in preference_pairs(records)],
        "unpaired": [to_unpaired_row(r) for r in records if isinstance(r, BinaryFeedback)],
        "sft": [correction_to_sft(r) for r in records if isinstance(r, CorrectiveFeedback)],
    }
    return {name: Dataset.from_list(_unique(found)) for name, found in rows.items() if found}


def _unique(rows: list[dict]) -> list[dict]:
    seen, kept = set(), []
    for row in rows:
        key = repr(row)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


# --------------------------------------------------------------------------------- serialisation


def to_record(feedback: Feedback) -> dict[str, Any]:
    """A JSON-ready dict with a ``kind`` tag; :func:`from_record` reverses it. A pairwise label without a strength
    is written without the field, exactly as label files were before strengths existed."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(feedback).items()}
    if isinstance(feedback, PairwiseFeedback) and feedback.strength is None:
        del fields["strength"]
    return {"kind": feedback.kind, **fields}


def from_record(record: dict[str, Any]) -> Feedback:
    """The feedback object a :func:`to_record` dict describes."""
    kind = record.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}.")
    return KINDS[kind](**{k: v for k, v in record.items() if k != "kind"})
