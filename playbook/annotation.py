"""Collecting human feedback: a crash-safe label store and an ipywidgets annotation tool on top of it.

:class:`AnnotationStore` appends each label to a JSONL file the moment it is given (flushed and fsynced), so a
crash loses at most the label being written. Reopening the file resumes where the annotator stopped: items that
already have a label of a kind are not offered or recorded again. A line torn by a crash at the end of the file
is moved to a ``.torn-<time>`` file beside it (never silently deleted, never overwritten) and the store carries
on; damage anywhere else stops with the file and line named, because guessing could lose a person's work.
:meth:`AnnotationStore.undo_last` takes a label back by appending a retraction line, so undoing is as crash-safe as
labelling.

One store writes to a file at a time: the store holds an operating-system lock on ``<file>.lock`` while it is
open, so a second annotator or process on the same file gets a clear error instead of labelling the same items
again. When a file does hold several labels of one kind for one item (written before it was locked, or merged
from two files), the last one counts; the earlier ones stay in the file, and their number is reported.

The widget is a thin layer: every button calls :func:`feedback_from_answer` and :meth:`AnnotationStore.record`,
which tests and headless notebooks call directly.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everywhere but Windows
    msvcrt = None

from playbook.feedback import (
    KINDS,
    NO_PREFERENCE,
    PREFERENCE_STRENGTHS,
    BinaryFeedback,
    CorrectiveFeedback,
    Feedback,
    Messages,
    PairwiseFeedback,
    RankingFeedback,
    from_record,
    to_record,
)
from playbook.stats import proportion_interval

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
UNDO = "undo"  # key of a retraction line: {"undo": item_id, "kind": kind, "time": ...}
logger = logging.getLogger(__name__)


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

    ``binary``: ``True``/``False`` about response A. ``pairwise``: the letter of the better of A and B, optionally
    with how much (``"A"``, ``"B slightly"``, ``"A clearly better"``), or ``"tie"`` / ``"both bad"`` (no preference).
    ``ranking``: letters best first (``"B A C"`` or ``["B", "A", "C"]``; every response exactly once).
    ``corrective``: the improved text for response A.
    """
    responses = item.responses
    if kind == "binary":
        return BinaryFeedback(item.prompt, responses[0], answer)
    if kind == "pairwise":
        return _pairwise_from_answer(item, str(answer))
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


def _pairwise_from_answer(item: AnnotationItem, answer: str) -> PairwiseFeedback:
    words = " ".join(answer.split())
    if words.lower() in NO_PREFERENCE:  # prefers neither: the two responses in the order shown
        return PairwiseFeedback(item.prompt, item.responses[0], item.responses[1], strength=words.lower())
    letter, _, how = words.partition(" ")
    how = how.lower().removesuffix(" better")
    strength = f"{how} better" if how else None
    if strength is not None and strength not in PREFERENCE_STRENGTHS:
        allowed = [f"A {s}" for s in PREFERENCE_STRENGTHS] + list(NO_PREFERENCE)
        raise ValueError(f"answer: {answer!r} is not a letter, one of {allowed}, or the same with B.")
    better = _index(letter, len(item.responses[:2]))
    return PairwiseFeedback(item.prompt, item.responses[better], item.responses[1 - better], strength=strength)


def pairwise_choice(item: AnnotationItem, feedback: PairwiseFeedback) -> str:
    """What a pairwise label chose, in the widget's terms: ``"A"``, ``"B"``, ``"tie"`` or ``"both bad"`` (the
    strength left out, so that labels with and without one compare)."""
    if not feedback.prefers:
        return feedback.strength
    return LETTERS[item.responses.index(feedback.chosen)]


def _index(letter: str, count: int) -> int:
    letter = letter.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:count]:
        raise ValueError(f"answer: {letter!r} is not one of the response letters {list(LETTERS[:count])}.")
    return LETTERS.index(letter)


MIN_LABELS_FOR_AGREEMENT = 10
"""Fewer common labels than this give no agreement figure: kappa on a handful of labels swings by ±0.5 with one
label changed."""


@dataclass(frozen=True)
class Agreement:
    """How two annotators' labels of the same items compare: ``labels`` items both labelled, ``agreed`` of them
    alike, and Cohen's kappa (``None`` with too few labels, or when kappa is undefined: both gave the same one
    answer throughout)."""

    labels: int
    agreed: int
    kappa: float | None
    minimum: int = MIN_LABELS_FOR_AGREEMENT

    def summary(self) -> str:
        """One sentence with the numbers, or what is missing for them."""
        if self.labels < self.minimum:
            return (
                f"{self.labels} item(s) labelled by both: too few for an agreement figure (at least {self.minimum}); "
                "label more and run this cell again."
            )
        low, high = proportion_interval(self.agreed, self.labels)
        share = f"same answer on {self.agreed} of {self.labels} items ({self.agreed / self.labels:.0%}, 95% Wilson "
        share += f"interval {low:.0%} to {high:.0%})"
        if self.kappa is None:
            return f"{share}; Cohen's kappa is undefined: both gave the same answer to every item."
        return f"{share}; Cohen's kappa = {self.kappa:.2f} (0: chance-level agreement, 1: perfect)."


def label_agreement(mine: dict[str, str], theirs: dict[str, str], minimum: int = MIN_LABELS_FOR_AGREEMENT) -> Agreement:
    """Agreement between two annotators' answers ``{item_id: answer}`` on the items both labelled, with Cohen's kappa
    (``sklearn.metrics.cohen_kappa_score``): the share of agreement beyond what two annotators who answer at random,
    each as often as they do, would reach."""
    from sklearn.metrics import cohen_kappa_score

    common = [item_id for item_id in mine if item_id in theirs]
    first, second = [mine[i] for i in common], [theirs[i] for i in common]
    agreed = sum(a == b for a, b in zip(first, second, strict=True))
    kappa = None
    if len(common) >= minimum and len(set(first) | set(second)) > 1:  # one answer throughout: kappa is 0/0
        kappa = float(cohen_kappa_score(first, second))
    return Agreement(len(common), agreed, kappa, minimum)


class AnnotationStoreBusy(RuntimeError):
    """Another annotator or process has the label file open."""


_HELD_LOCKS: dict[Path, tuple[IO, weakref.ref]] = {}
"""The label files this process has locked: the open lock file and the store that uses it."""


def _take_lock(store: AnnotationStore) -> None:
    """Lock ``store.path`` for ``store``; a newer store on the same file in this process takes the lock over (re-running
    a notebook cell), and the older one can no longer record. Raises :class:`AnnotationStoreBusy` when another
    process holds it."""
    key = store.path.resolve()
    owner = weakref.ref(store)
    if key in _HELD_LOCKS:
        handle, previous = _HELD_LOCKS[key]
        if previous() is not None:
            previous()._replaced_by_newer_store = True
    else:
        handle = _lock_file(store.path.with_name(f"{store.path.name}.lock"), store.path)
    _HELD_LOCKS[key] = (handle, owner)
    weakref.finalize(store, _release_lock, key, owner)


def _release_lock(key: Path, owner: weakref.ref) -> None:
    handle, current = _HELD_LOCKS.get(key, (None, None))
    if current is owner:
        del _HELD_LOCKS[key]
        handle.close()  # closing the file releases the operating-system lock


def _lock_file(lock_path: Path, label_path: Path) -> IO:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+b")
    try:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        elif msvcrt is not None:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            logger.warning(
                "%s: this system offers no file lock; if two processes label into it, the last label of each item "
                "and kind counts.",
                label_path,
            )
    except OSError as error:
        handle.close()
        raise AnnotationStoreBusy(
            f"{label_path} is open in another annotator or process (it holds {lock_path.name}). Finish there and "
            "close it (or restart that notebook's kernel), or label into a different file."
        ) from error
    return handle


def _last_label_per_item_and_kind(labels: list[tuple[str, Feedback]]) -> list[tuple[str, Feedback]]:
    """Keep only the last label of each (item, kind), in the order the kept labels were given."""
    last = {(item_id, feedback.kind): index for index, (item_id, feedback) in enumerate(labels)}
    return [label for index, label in enumerate(labels) if last[(label[0], label[1].kind)] == index]


def _write_new_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path``, or to ``<path>-2``, ``<path>-3``, ... when that exists: never overwrites."""
    candidate, number = path, 1
    while True:
        try:
            with candidate.open("xb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


class AnnotationStore:
    """Labels in a JSONL file, one ``{"item_id", "time", "feedback": {...}}`` line per label.

    ``replaced_labels`` counts the labels in the file that a later label of the same item and kind replaced.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._labels: list[tuple[str, Feedback]] = []
        self._replaced_by_newer_store = False
        _take_lock(self)
        if self.path.exists():
            self._load()
        kept = _last_label_per_item_and_kind(self._labels)
        self.replaced_labels = len(self._labels) - len(kept)
        if self.replaced_labels:
            logger.warning(
                "%s: %d label(s) were given again later for the same item and kind (two annotators or processes "
                "wrote to this file); the last label of each counts, the earlier ones stay in the file unused.",
                self.path,
                self.replaced_labels,
            )
        self._labels = kept

    def _load(self) -> None:
        data = self.path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        if tail.strip():  # a last line without its newline: the write was cut off
            _write_new_file(self.path.with_name(f"{self.path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}"), tail)
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete) + 1 if complete else 0)
                os.fsync(handle.fileno())
        for line_number, raw in enumerate(complete.split(b"\n") if complete else [], start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{self.path}:{line_number}: not UTF-8 text ({error.reason} at byte {error.start} of the line); "
                    "fix or remove that line."
                ) from error
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
        """Append one label durably; returns ``False`` (and writes nothing) if the item already has this kind.

        Raises ``RuntimeError`` once a newer store on the same file has been opened in this process: record there.
        """
        if self.has(item_id, feedback.kind):
            return False
        self._append({"item_id": item_id, "time": time.time(), "feedback": to_record(feedback)})
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
        """Write one line durably (flushed and fsynced). Raises ``RuntimeError`` once a newer store on the same file
        has been opened in this process: write there, so no label is given twice."""
        if self._replaced_by_newer_store:
            raise RuntimeError(
                f"{self.path}: a newer AnnotationStore was opened on this file in this process; record labels "
                "through that one (this one no longer writes, so no label is given twice)."
            )
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
        except (ValueError, OSError, RuntimeError) as error:
            report(f"Not saved: {error}", ERROR_COLOUR)
            return
        if on_label:
            on_label(item, feedback)
        given.append(queue.pop(0))
        show()
        report(f"Saved the {kind} label for {item.item_id}; {saved()}.", OK_COLOUR)

    def take_back(_) -> None:
        latest = store.labels[-1] if store.labels else None
        if latest is None or latest[0] != given[-1].item_id or latest[1].kind != kind:
            report(
                "Not undone: the latest label in the file was not given in this form; undo it where it was given.",
                ERROR_COLOUR,
            )
            return
        try:
            store.undo_last()
        except (OSError, RuntimeError) as error:
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
            controls.children = tuple(button(label, lambda a=answer: a) for label, answer in PAIRWISE_BUTTONS)
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
PAIRWISE_BUTTONS = (
    ("A clearly better", "A clearly"),
    ("A slightly better", "A slightly"),
    ("Tie", "tie"),
    ("Both bad", "both bad"),
    ("B slightly better", "B slightly"),
    ("B clearly better", "B clearly"),
)
"""The pairwise form's buttons and the answers they give: a choice with its strength, or no preference."""
_BUTTONS = {"binary": ["Accept A", "Reject A"], "pairwise": [label for label, _ in PAIRWISE_BUTTONS]}
_INPUTS = {
    "binary": "reply A and two buttons, " + " / ".join(_BUTTONS["binary"]),
    "pairwise": "replies A and B and six buttons, " + " / ".join(_BUTTONS["pairwise"]),
    "ranking": "all replies, a text box for their letters best first (e.g. B A C) and a Submit button",
    "corrective": "reply A in a text box to edit, and a Submit button",
}


def describe_form(kind: str) -> str:
    """In words, what :func:`annotation_widget` shows when its cell runs live: for a reader of a notebook saved by a
    headless run, where only a text and a static picture of the form remain."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {list(KINDS)}.")
    return (
        f"Run live, the form shows one item at a time: the prompt, {_INPUTS[kind]}. After each click a line under "
        "it says which label was saved and how many labels the file holds, and where; 'Undo last label' takes the "
        "latest label of this form back (a retraction line is appended: nothing in the file is rewritten)."
    )


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
