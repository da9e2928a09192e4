"""Collecting human feedback: a crash-safe label store and an ipywidgets annotation tool on top of it.

:class:`AnnotationStore` appends each label to a JSONL file the moment it is given (flushed and fsynced), so a
crash loses at most the label being written. Reopening the file resumes where the annotator stopped: items that
already have a label of a kind are not offered or recorded again. A line torn by a crash at the end of the file
is moved to a ``.torn`` file beside it (never silently deleted) and the store carries on; damage anywhere else
stops with the file and line named, because guessing could lose a person's work.

The widget is a thin layer: every button calls :func:`feedback_from_answer` and :meth:`AnnotationStore.record`,
which tests and headless notebooks call directly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from playbook.feedback import (
    KINDS,
    BinaryFeedback,
    CorrectiveFeedback,
    Feedback,
    Messages,
    PairwiseFeedback,
    RankingFeedback,
    from_record,
    to_record,
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class AnnotationItem:
    """Something to label: a prompt and two or more candidate responses, under a stable id."""

    item_id: str
    prompt: str | Messages
    responses: list[str] = field(default_factory=list)

    def prompt_text(self) -> str:
        """The last user message: what the annotator needs to read."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[-1]["content"]


def feedback_from_answer(item: AnnotationItem, kind: str, answer: object) -> Feedback:
    """Turn an annotator's answer into a feedback record.

    ``binary``: ``True``/``False`` about response A. ``pairwise``: the letter of the better of A and B.
    ``ranking``: letters best first (``"B A C"`` or ``["B", "A", "C"]``; every response exactly once).
    ``corrective``: the improved text for response A.
    """
    responses = item.responses
    if kind == "binary":
        return BinaryFeedback(item.prompt, responses[0], answer)
    if kind == "pairwise":
        better = _index(str(answer), len(responses[:2]))
        return PairwiseFeedback(item.prompt, responses[better], responses[1 - better])
    if kind == "ranking":
        letters = answer.split() if isinstance(answer, str) else list(answer)
        order = [_index(letter, len(responses)) for letter in letters]
        if sorted(order) != list(range(len(responses))):
            raise ValueError(f"ranking: name each of {LETTERS[: len(responses)]} exactly once, got {letters}.")
        ranks = [0] * len(responses)
        for place, index in enumerate(order, start=1):
            ranks[index] = place
        return RankingFeedback(item.prompt, responses, ranks)
    if kind == "corrective":
        return CorrectiveFeedback(item.prompt, responses[0], answer)
    raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}.")


def _index(letter: str, count: int) -> int:
    letter = letter.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:count]:
        raise ValueError(f"answer: {letter!r} is not one of the response letters {list(LETTERS[:count])}.")
    return LETTERS.index(letter)


class AnnotationStore:
    """Labels in a JSONL file, one ``{"item_id", "time", "feedback": {...}}`` line per label."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._labels: list[tuple[str, Feedback]] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        if tail.strip():  # a last line without its newline: the write was cut off
            torn = self.path.with_name(f"{self.path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
            torn.write_bytes(tail)
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete) + 1 if complete else 0)
                os.fsync(handle.fileno())
        for line_number, line in enumerate(complete.decode("utf-8").splitlines() if complete else [], start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._labels.append((entry["item_id"], from_record(entry["feedback"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{self.path}:{line_number}: damaged label ({error}); fix or remove it.") from error

    @property
    def labels(self) -> list[tuple[str, Feedback]]:
        """``(item_id, feedback)`` in the order they were given."""
        return list(self._labels)

    def feedback(self) -> list[Feedback]:
        return [feedback for _, feedback in self._labels]

    def has(self, item_id: str, kind: str) -> bool:
        return any(i == item_id and f.kind == kind for i, f in self._labels)

    def record(self, item_id: str, feedback: Feedback) -> bool:
        """Append one label durably; returns ``False`` (and writes nothing) if the item already has this kind."""
        if self.has(item_id, feedback.kind):
            return False
        line = json.dumps({"item_id": item_id, "time": time.time(), "feedback": to_record(feedback)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._labels.append((item_id, feedback))
        return True

    def pending(self, items: list[AnnotationItem], kind: str) -> list[AnnotationItem]:
        """The items that still lack a label of ``kind``, in their original order."""
        return [item for item in items if not self.has(item.item_id, kind)]


def annotation_widget(
    items: list[AnnotationItem],
    store: AnnotationStore,
    kind: str = "pairwise",
    on_label: Callable[[AnnotationItem, Feedback], None] | None = None,
):
    """An ipywidgets form that shows each unlabelled item and records the annotator's ``kind`` of feedback.

    Resumes with the first item that has no label of ``kind`` in ``store``. Returns the widget; in a headless
    run it is simply not displayed.
    """
    import ipywidgets as widgets

    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}.")
    queue = store.pending(items, kind)
    header, body, status = widgets.HTML(), widgets.HTML(), widgets.HTML()
    controls = widgets.HBox()
    text = widgets.Textarea(layout=widgets.Layout(width="100%", height="6em"))

    def submit(answer: object) -> None:
        try:
            feedback = feedback_from_answer(queue[0], kind, answer)
        except ValueError as error:
            status.value = f"<span style='color:#b00'>{error}</span>"
            return
        store.record(queue[0].item_id, feedback)
        if on_label:
            on_label(queue[0], feedback)
        queue.pop(0)
        show()

    def button(label: str, answer: Callable[[], object]) -> widgets.Button:
        b = widgets.Button(description=label)
        b.on_click(lambda _: submit(answer()))
        return b

    def show() -> None:
        done = len(items) - len(queue)
        if not queue:
            header.value, body.value, controls.children = f"<b>All {len(items)} items labelled.</b>", "", ()
            return
        item = queue[0]
        header.value = f"<b>Item {done + 1} of {len(items)}</b> ({item.item_id}): {_escape(item.prompt_text())}"
        shown = item.responses[: {"binary": 1, "corrective": 1, "pairwise": 2}.get(kind, len(item.responses))]
        body.value = "".join(f"<p><b>{LETTERS[i]}</b>: {_escape(r)}</p>" for i, r in enumerate(shown))
        status.value = ""
        if kind == "binary":
            controls.children = (button("Accept A", lambda: True), button("Reject A", lambda: False))
        elif kind == "pairwise":
            controls.children = (button("A is better", lambda: "A"), button("B is better", lambda: "B"))
        else:
            text.value = item.responses[0] if kind == "corrective" else ""
            text.placeholder = "letters, best first: B A C" if kind == "ranking" else ""
            controls.children = (text, button("Submit", lambda: text.value))

    show()
    return widgets.VBox([header, body, controls, status])


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")
