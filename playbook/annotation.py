"""Collecting human feedback: a crash-safe label store and an ipywidgets annotation tool on top of it.

:class:`AnnotationStore` appends each label to a JSONL file the moment it is given (flushed and fsynced), so a
crash loses at most the label being written. Reopening the file resumes where the annotator stopped: items that
already have a label of a kind are not offered or recorded again. A line torn by a crash at the end of the file
is moved to a ``.torn`` file beside it (never silently deleted) and the store carries on; damage anywhere else
stops with the file and line named, because guessing could lose a person's work. :meth:`AnnotationStore.undo_last`
takes a label back by appending a retraction line, so undoing is as crash-safe as labelling.

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
UNDO = "undo"  # key of a retraction line: {"undo": item_id, "kind": kind, "time": ...}


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
                if UNDO in entry:
                    self._labels.remove(self._last_label(entry[UNDO], entry["kind"]))
                    continue
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

    def undo_last(self) -> tuple[str, Feedback] | None:
        """Take back the most recent label by appending a retraction line; returns it (``None`` if there is none)."""
        if not self._labels:
            return None
        item_id, feedback = self._labels[-1]
        self._append({UNDO: item_id, "kind": feedback.kind, "time": time.time()})
        return self._labels.pop()

    def _last_label(self, item_id: str, kind: str) -> tuple[str, Feedback] | None:
        return next((label for label in reversed(self._labels) if label[0] == item_id and label[1].kind == kind), None)

    def _append(self, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

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

    Resumes with the first item that has no label of ``kind`` in ``store``. After every click it says what was
    saved and where, or what went wrong (a read-only folder, an invalid ranking); "Undo last label" takes back
    the latest label given in this form. Where no live widget can be shown (a notebook saved by a headless run,
    GitHub), its output falls back to a text and a static picture of the form's first screen.
    """
    import ipywidgets as widgets

    from playbook.environment import display_path

    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}.")
    queue = store.pending(items, kind)
    given: list[AnnotationItem] = []  # labelled in this form, latest last: what undo can take back
    header, body, status = widgets.HTML(), widgets.HTML(), widgets.HTML()
    controls = widgets.HBox()
    text = widgets.Textarea(layout=widgets.Layout(width="100%", height="6em"))
    undo = widgets.Button(description="Undo last label", icon="undo", disabled=True)

    def saved() -> str:
        count = len(store.labels)
        return f"{count} label{'' if count == 1 else 's'} in {display_path(store.path)}"

    def report(message: str, colour: str) -> None:
        status.value = f"<span style='color:{colour}'>{_escape(message)}</span>"

    def submit(answer: object) -> None:
        item = queue[0]
        try:
            feedback = feedback_from_answer(item, kind, answer)
            store.record(item.item_id, feedback)
        except (ValueError, OSError) as error:
            report(f"Not saved: {error}", ERROR_COLOUR)
            return
        if on_label:
            on_label(item, feedback)
        given.append(queue.pop(0))
        show()
        report(f"Saved the {kind} label for {item.item_id}; {saved()}.", OK_COLOUR)

    def take_back(_) -> None:
        try:
            store.undo_last()
        except OSError as error:
            report(f"Not undone: {error}", ERROR_COLOUR)
            return
        item = given.pop()
        queue.insert(0, item)
        show()
        report(f"Took back the label for {item.item_id}; {saved()}.", OK_COLOUR)

    undo.on_click(take_back)

    def button(label: str, answer: Callable[[], object]) -> widgets.Button:
        b = widgets.Button(description=label)
        b.on_click(lambda _: submit(answer()))
        return b

    def show() -> None:
        undo.disabled = not given
        status.value = ""
        header.value, body.value = _item_html(items, queue, kind)
        if not queue:
            controls.children = ()
        elif kind == "binary":
            controls.children = (button("Accept A", lambda: True), button("Reject A", lambda: False))
        elif kind == "pairwise":
            controls.children = (button("A is better", lambda: "A"), button("B is better", lambda: "B"))
        else:
            text.value = queue[0].responses[0] if kind == "corrective" else ""
            text.placeholder = "letters, best first: B A C" if kind == "ranking" else ""
            controls.children = (text, button("Submit", lambda: text.value))

    class AnnotationForm(widgets.VBox):
        def _repr_mimebundle_(self, **kwargs) -> dict:
            bundle = super()._repr_mimebundle_(**kwargs)
            bundle["text/plain"] = (
                f"Annotation form ({kind}): {len(queue)} of {len(items)} items to label, saved to "
                f"{store.path.name}. Run the cell in JupyterLab to label them."
            )
            bundle["text/html"] = _preview_html(*_item_html(items, queue, kind), kind, store.path.name)
            return bundle

    show()
    return AnnotationForm([header, body, controls, undo, status])


OK_COLOUR, ERROR_COLOUR = "#176f2c", "#b00020"
_BUTTONS = {"binary": ["Accept A", "Reject A"], "pairwise": ["A is better", "B is better"]}


def _item_html(items: list[AnnotationItem], queue: list[AnnotationItem], kind: str) -> tuple[str, str]:
    """The form's heading and the responses to compare, as HTML, for the first item still in ``queue``."""
    if not queue:
        return f"<b>All {len(items)} items labelled.</b>", ""
    item, done = queue[0], len(items) - len(queue)
    header = f"<b>Item {done + 1} of {len(items)}</b> ({item.item_id}): {_escape(item.prompt_text())}"
    shown = item.responses[: {"binary": 1, "corrective": 1, "pairwise": 2}.get(kind, len(item.responses))]
    return header, "".join(f"<p><b>{LETTERS[i]}</b>: {_escape(r)}</p>" for i, r in enumerate(shown))


def _preview_html(header: str, body: str, kind: str, file_name: str) -> str:
    """A static picture of the form: what running the cell shows, for readers of a saved notebook."""
    buttons = "".join(
        f"<span style='border:1px solid #999;border-radius:3px;padding:2px 10px;margin-right:6px'>{label}</span>"
        for label in _BUTTONS.get(kind, ["Submit"])
    )
    return (
        "<div style='border:1px dashed #999;padding:8px;max-width:48em'>"
        f"<div style='color:#555;font-size:90%'>Preview: run this cell to label; each label is saved to {file_name}"
        " at once.</div>"
        f"<div>{header}</div>{body}<div style='margin:6px 0'>{buttons}</div></div>"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")
