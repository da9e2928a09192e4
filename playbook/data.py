"""Data loaders for the course: Anthropic hh-rlhf, TruthfulQA and SelfAware.

Each loader looks in three places, in order (``source="auto"``):

1. ``local``: the folder named by ``PLAYBOOK_DATA_DIR`` (layout of ``shared/data``: ``hh-rlhf/``,
   ``truthfulqa/``, ``selfaware/``);
2. ``hub``: the Hugging Face Hub, when the machine is online;
3. ``sample``: a small sample shipped in the repository's ``data/`` folder (written for this course, or for
   TruthfulQA its first 8 questions), so that every notebook runs on a machine with neither.

Pass ``source=`` to insist on one of them. hh-rlhf comes back in TRL's conversational preference format
(``prompt`` / ``chosen`` / ``rejected`` message lists), which ``RewardTrainer`` and ``DPOTrainer`` accept as is.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from datasets import Dataset, DatasetDict

from playbook.config import Profile, get_profile
from playbook.io import Messages, read_json, read_jsonl, read_text

DATA_DIR_ENV = "PLAYBOOK_DATA_DIR"
BUNDLED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
Source = Literal["auto", "local", "hub", "sample"]

logger = logging.getLogger(__name__)
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}
HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
"""The hh-rlhf folders that hold preference pairs (``red-team-attempts`` holds single transcripts)."""
HH_SPLITS = ("train", "test")


class DataNotFound(FileNotFoundError):
    """No source could provide the requested data set."""


# --------------------------------------------------------------------------------------------- hh-rlhf


def parse_hh_transcript(text: str, *, where: str = "transcript") -> Messages:
    """Split an hh-rlhf transcript (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) into chat messages.

    ``where`` names the text in error messages (for example ``"file.jsonl.gz:12 (chosen)"``).
    """
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a transcript string, got {type(text).__name__}.")
    pieces = _TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise ValueError(
            f"{where}: not an hh-rlhf transcript; it must start with '\\n\\nHuman: ' (starts with {text[:40]!r})."
        )
    if pieces[1] != "Human":
        raise ValueError(
            f"{where}: the transcript opens with an {pieces[1]} turn, so its prompt would be empty; an hh-rlhf "
            "transcript must start with '\\n\\nHuman: '."
        )
    return [
        {"role": _ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True)
    ]


@dataclass
class HHLoadReport:
    """What reading an hh-rlhf file kept and dropped, and why."""

    source: str
    read: int = 0
    kept: int = 0
    dropped_identical: int = 0
    dropped_empty_response: int = 0
    dropped_prompt_mismatch: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items())

    @property
    def shared_prompt(self) -> int:
        """Pairs read whose chosen and rejected transcripts differ only in the last (assistant) turn."""
        return self.read - self.dropped_prompt_mismatch


def hh_load_report(dataset: Dataset) -> HHLoadReport:
    """The :class:`HHLoadReport` that :func:`load_hh_rlhf` stored with ``dataset``."""
    try:
        return HHLoadReport(**json.loads(dataset.info.description))
    except (TypeError, ValueError) as error:
        raise ValueError("this dataset carries no hh-rlhf load report; load it with load_hh_rlhf().") from error


def hh_pair_from_record(record: dict, *, where: str) -> dict[str, Messages]:
    """One raw ``{"chosen", "rejected"}`` record as ``{"prompt", "chosen", "rejected"}`` message lists.

    Raises ``ValueError`` naming ``where`` for a missing field or a transcript that does not end in an
    Assistant turn. The prompt is taken from the chosen transcript.
    """
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; hh-rlhf records have 'chosen' and 'rejected'.")
    pair = {}
    for key in ("chosen", "rejected"):
        messages = parse_hh_transcript(record[key], where=f"{where} ({key})")
        if messages[-1]["role"] != "assistant":
            raise ValueError(
                f"{where} ({key}): the transcript ends with a Human turn; a preference pair must end with "
                "the Assistant response being compared."
            )
        pair[key] = messages
    return {"prompt": pair["chosen"][:-1], "chosen": pair["chosen"][-1:], "rejected": pair["rejected"][-1:]}


def read_hh_rlhf(path: str | os.PathLike) -> tuple[list[dict[str, Messages]], HHLoadReport]:
    """Read an hh-rlhf JSONL (optionally gzipped) file into preference pairs, with a report of what was dropped."""
    path = Path(path)
    return hh_pairs(((f"{path}:{n}", record) for n, record in read_jsonl(path)), source=str(path))


def hh_pairs(records: Iterable[tuple[str, dict]], *, source: str) -> tuple[list[dict[str, Messages]], HHLoadReport]:
    """Turn ``(where, record)`` items into preference pairs, counting what is dropped and why.

    Dropped: pairs whose two responses are identical (nothing to learn), pairs with an empty response, and
    pairs whose chosen and rejected transcripts differ before the last turn (no shared prompt).
    """
    report = HHLoadReport(source=source)
    pairs = []
    for where, record in records:
        report.read += 1
        pair = hh_pair_from_record(record, where=where)
        responses = (pair["chosen"][0]["content"], pair["rejected"][0]["content"])
        if responses[0] == responses[1]:
            report.dropped_identical += 1
        elif not all(responses):
            report.dropped_empty_response += 1
        elif parse_hh_transcript(record["rejected"])[:-1] != pair["prompt"]:
            report.dropped_prompt_mismatch += 1
        else:
            pairs.append(pair)
    report.kept = len(pairs)
    return pairs, report


def load_hh_rlhf(subset: str = "harmless-base", split: str = "train", source: Source = "auto") -> Dataset:
    """Anthropic's hh-rlhf preference pairs as a ``Dataset`` with ``prompt``, ``chosen`` and ``rejected``.

    ``subset`` is one of :data:`HH_SUBSETS`, ``split`` one of :data:`HH_SPLITS`; anything else raises
    ``ValueError`` listing them. :func:`hh_load_report` gives the counts of pairs read, kept and dropped.
    """
    if subset not in HH_SUBSETS:
        raise ValueError(f"subset={subset!r} is not an hh-rlhf subset; use one of {list(HH_SUBSETS)}.")
    if split not in HH_SPLITS:
        raise ValueError(f"split={split!r} is not an hh-rlhf split; use one of {list(HH_SPLITS)}.")

    def local() -> Path | None:
        folder = _local_dir("hh-rlhf")
        if folder is None:
            return None
        for name in (f"{subset}-{split}.jsonl.gz", f"{subset}-{split}.jsonl", f"{subset}/{split}.jsonl.gz"):
            if (folder / name).is_file():
                return folder / name
        return None

    def hub() -> list[dict]:
        from datasets import load_dataset

        return list(load_dataset("Anthropic/hh-rlhf", data_dir=subset, split=split))

    found, kind = _find(f"hh-rlhf {subset}/{split}", "hh-rlhf", source, local, hub)
    if kind == "hub":
        origin = f"hub:Anthropic/hh-rlhf/{subset}/{split}"
        pairs, report = hh_pairs(((f"{origin}[{i}]", r) for i, r in enumerate(found)), source=origin)
    else:
        pairs, report = read_hh_rlhf(found)
        report.source = f"{kind}:{found.parent.name}/{found.name}"
    if not pairs:
        raise ValueError(f"{report.source}: no usable preference pairs ({report}).")
    dataset = Dataset.from_list(pairs)
    dataset.info.description = json.dumps(asdict(report))
    return dataset


# ----------------------------------------------------------------------------------------- TruthfulQA


def _split_answers(cell: str) -> list[str]:
    return [a.strip() for a in cell.split(";") if a.strip()]


def read_truthfulqa(csv_path: str | os.PathLike, mc_path: str | os.PathLike) -> list[dict]:
    """Join TruthfulQA's generation CSV with its multiple-choice targets (``mc_task.json``) on the question.

    Each row: ``question``, ``category``, ``type``, ``best_answer``, ``correct_answers``, ``incorrect_answers``,
    ``mc1_choices``/``mc1_labels`` (exactly one label is 1) and ``mc2_choices``/``mc2_labels``.
    """
    csv_path, mc_path = Path(csv_path), Path(mc_path)
    mc_records = read_json(mc_path)
    if not isinstance(mc_records, list):
        raise ValueError(f"{mc_path}: expected a JSON list of questions with their MC targets.")
    targets = {}
    for index, record in enumerate(mc_records):
        if not {"question", "mc1_targets", "mc2_targets"} <= set(record):
            raise ValueError(f"{mc_path}[{index}]: needs 'question', 'mc1_targets' and 'mc2_targets'.")
        targets[record["question"].strip()] = record
    rows = []
    with io.StringIO(read_text(csv_path), newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers"}
        if not required <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path}:1: missing column(s) {sorted(required - set(reader.fieldnames or ()))}.")
        for row in reader:
            question = row["Question"].strip()
            if question not in targets:
                raise ValueError(f"{csv_path}:{reader.line_num}: question {question!r} has no entry in {mc_path}.")
            mc = targets[question]
            rows.append(
                {
                    "question": question,
                    "category": row["Category"],
                    "type": row["Type"],
                    "best_answer": row["Best Answer"].strip(),
                    "correct_answers": _split_answers(row["Correct Answers"]),
                    "incorrect_answers": _split_answers(row["Incorrect Answers"]),
                    "mc1_choices": list(mc["mc1_targets"]),
                    "mc1_labels": [int(v) for v in mc["mc1_targets"].values()],
                    "mc2_choices": list(mc["mc2_targets"]),
                    "mc2_labels": [int(v) for v in mc["mc2_targets"].values()],
                }
            )
    return rows


def load_truthfulqa(source: Source = "auto") -> Dataset:
    """TruthfulQA (Lin et al. 2021): 817 questions that many people answer wrongly, with MC1/MC2 targets."""

    def local() -> Path | None:
        folder = _local_dir("truthfulqa")
        if folder and (folder / "TruthfulQA.csv").is_file() and (folder / "mc_task.json").is_file():
            return folder
        return None

    def hub() -> list[dict]:
        from datasets import load_dataset

        generation = load_dataset("truthfulqa/truthful_qa", "generation", split="validation")
        choices = {
            r["question"].strip(): r for r in load_dataset("truthfulqa/truthful_qa", "multiple_choice")["validation"]
        }
        rows = []
        for r in generation:
            mc = choices[r["question"].strip()]
            rows.append(
                {
                    "question": r["question"].strip(),
                    "category": r["category"],
                    "type": r["type"],
                    "best_answer": r["best_answer"],
                    "correct_answers": r["correct_answers"],
                    "incorrect_answers": r["incorrect_answers"],
                    "mc1_choices": mc["mc1_targets"]["choices"],
                    "mc1_labels": mc["mc1_targets"]["labels"],
                    "mc2_choices": mc["mc2_targets"]["choices"],
                    "mc2_labels": mc["mc2_targets"]["labels"],
                }
            )
        return rows

    found, kind = _find("TruthfulQA", "truthfulqa", source, local, hub)
    if kind == "hub":
        return Dataset.from_list(found)
    return Dataset.from_list(read_truthfulqa(found / "TruthfulQA.csv", found / "mc_task.json"))


# ------------------------------------------------------------------------------------------ SelfAware


def read_selfaware(path: str | os.PathLike) -> list[dict]:
    """SelfAware records as ``question``, ``answers`` (list, empty when unanswerable), ``answerable``, ``source``."""
    path = Path(path)
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("example"), list):
        raise ValueError(f"{path}: expected a JSON object whose 'example' field lists the questions.")
    if not document["example"]:
        raise ValueError(f"{path}: the 'example' list is empty; point to the full SelfAware.json.")
    rows = []
    for index, record in enumerate(document["example"]):
        where = f"{path}: example[{index}]"
        if not isinstance(record, dict) or not {"question", "answerable"} <= set(record):
            raise ValueError(f"{where} needs 'question' and 'answerable'.")
        if not isinstance(record["question"], str) or not record["question"].strip():
            raise ValueError(f"{where}: 'question' must be non-empty text, got {record['question']!r}.")
        if not isinstance(record["answerable"], bool):
            raise ValueError(
                f"{where}: 'answerable' must be JSON true or false, got {record['answerable']!r}; fix the record."
            )
        rows.append(
            {
                "question": record["question"].strip(),
                "answers": [str(a) for a in (record.get("answer") or [])],
                "answerable": record["answerable"],
                "source": record.get("source", ""),
            }
        )
    return rows


def load_selfaware(source: Source = "auto") -> Dataset:
    """SelfAware (Yin et al. 2023): 2,337 answerable and 1,032 unanswerable questions.

    SelfAware has no official copy on the Hub, so ``auto`` goes from the local folder to the bundled sample.
    """

    def local() -> Path | None:
        folder = _local_dir("selfaware")
        return folder / "SelfAware.json" if folder and (folder / "SelfAware.json").is_file() else None

    found, _ = _find("SelfAware", "selfaware", source, local, hub=None)
    return Dataset.from_list(read_selfaware(found))


# ------------------------------------------------------------------------------------------- sources


def data_dir() -> Path | None:
    """The folder named by ``PLAYBOOK_DATA_DIR``, if set."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def _local_dir(name: str) -> Path | None:
    root = data_dir()
    if root is not None and not root.is_dir():  # a typo would otherwise train on the bundled sample
        raise DataNotFound(
            f"{DATA_DIR_ENV}={root}: no such folder. Point it at a folder laid out like shared/data (see "
            "data/README.md), or unset it to use the Hub or the small bundled sample."
        )
    return root / name if root is not None and (root / name).is_dir() else None


_SAMPLES = {
    "hh-rlhf": "hh_rlhf_sample.jsonl",
    "TruthfulQA": "truthfulqa_sample",
    "SelfAware": "selfaware_sample.json",
}


def _sample_path(label: str) -> Path:
    key = "hh-rlhf" if label.startswith("hh-rlhf") else label
    return BUNDLED_DATA_DIR / _SAMPLES[key]


@functools.cache
def hub_available() -> bool:
    """Whether the Hugging Face Hub can be used: not switched off by ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
    and reachable within two seconds (one connection attempt per process, so offline machines fail fast)."""
    if any(
        os.environ.get(v, "0").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
    except OSError:
        return False
    return True


def _not_found_locally(label: str, folder: str) -> DataNotFound:
    """The error for data missing under ``PLAYBOOK_DATA_DIR``, listing what the data set's folder does hold."""
    root = data_dir()
    if root is None:
        return DataNotFound(
            f"{label}: not found under {DATA_DIR_ENV}=(unset); set {DATA_DIR_ENV} to a folder laid out like "
            "shared/data, or pass source='sample' for the small bundled sample."
        )
    present = _local_dir(folder)
    holds = ", ".join(sorted(p.name for p in present.iterdir())) if present else ""
    return DataNotFound(
        f"{label}: not found under {DATA_DIR_ENV}={root}; {root / folder} holds {holds or 'nothing'}. Ask for one "
        "of those, add the missing file, or pass source='sample' for the small bundled sample."
    )


def _find(
    label: str,
    folder: str,
    source: Source,
    local: Callable[[], Path | None],
    hub: Callable[[], list[dict]] | None,
) -> tuple[Path | list[dict], str]:
    """Try local, hub and sample in order (or just the one asked for); return what was found and from where.

    ``folder`` is the data set's folder under ``PLAYBOOK_DATA_DIR``. When that folder exists but lacks what was
    asked for, ``auto`` raises (listing what it holds) instead of quietly using the small sample.
    """
    if source not in ("auto", "local", "hub", "sample"):
        raise ValueError(f"source={source!r}: use 'auto', 'local', 'hub' or 'sample'.")
    if source in ("auto", "local"):
        found = local()
        if found is not None:
            return found, "local"
        if source == "local":
            raise _not_found_locally(label, folder)
    if source in ("auto", "hub"):
        if hub is None:
            if source == "hub":
                raise DataNotFound(f"{label}: there is no Hub copy this course knows of.")
        elif source == "hub" or hub_available():
            try:
                return hub(), "hub"
            except Exception as error:  # offline, blocked or renamed: all mean "not from the Hub"
                if source == "hub":
                    raise DataNotFound(f"{label}: could not load it from the Hub ({error}).") from error
    sample = _sample_path(label)
    if source == "auto":
        if _local_dir(folder) is not None:
            raise _not_found_locally(label, folder)
        logger.warning(
            "%s: using the small bundled sample data/%s; set %s to the real data (see data/README.md).",
            label,
            sample.name,
            DATA_DIR_ENV,
        )
    return sample, "sample"


def hh_rlhf_split(profile: Profile | str | None = None, subset: str = "harmless-base") -> DatasetDict:
    """The course's deterministic split of hh-rlhf ``subset``: ``"test"`` holds at most ``profile.hh_eval_pairs``
    pairs (a quarter of them at most, so the bundled sample splits too) that no model ever trains on, and
    ``"train"`` the first ``profile.hh_train_pairs`` of the rest. Notebooks 04-07, the pipeline and the benchmarks
    all use it, so a held-out pair is held out everywhere."""
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    pairs = load_hh_rlhf(subset)
    split = pairs.train_test_split(test_size=min(profile.hh_eval_pairs, len(pairs) // 4), seed=0)
    train = split["train"].select(range(min(profile.hh_train_pairs, len(split["train"]))))
    return DatasetDict({"train": train, "test": split["test"]})
