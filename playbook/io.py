"""Small shared pieces every topic module uses: the chat ``Messages`` type, reading JSONL files, writing a file
whole or not at all, a text's fingerprint, and where the repository's notebooks are."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

Messages = list[dict[str, str]]
"""A chat conversation: ``[{"role": "user" | "assistant" | "system", "content": "..."}, ...]``."""

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPOSITORY_ROOT / "notebooks"


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a hidden file beside ``path`` (named by this process), then rename it to ``path``: a reader
    sees the old file or the complete new one, never a half-written one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(partial)
    os.replace(partial, path)


def text_key(text: str) -> str:
    """A short fingerprint of a text (SHA-256 of it, stripped): a recorded file names its questions or prompts by it,
    so it holds none of a data set's text and matches them in any order (local copy, Hub, bundled sample)."""
    return hashlib.sha256(text.strip().encode()).hexdigest()[:16]


def course_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in course order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line of a JSONL file (gzipped when it ends in ``.gz``).

    Raises ``ValueError`` naming ``file:line`` for a line that is not a JSON object or not UTF-8 text, and naming
    the file for a gzip stream that is cut short or not gzip at all.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    line_number = 0
    try:
        with opener(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg}).") from error
                if not isinstance(record, dict):
                    raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}.")
                yield line_number, record
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path}:{line_number}: not UTF-8 text ({error.reason} at byte {error.start} of the line); "
            "re-save the file as UTF-8."
        ) from error
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path}: the gzip data is damaged or cut short after line {line_number} ({error}); "
            "download or copy the file again."
        ) from error


def read_text(path: str | Path) -> str:
    """The whole of a UTF-8 text file; a file that is not UTF-8 raises ``ValueError`` naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}:{line_number}: not UTF-8 text ({error.reason} at byte {error.start} of the file); "
            "re-save the file as UTF-8."
        ) from error


def read_json(path: str | Path) -> object:
    """The document in a UTF-8 JSON file; bad bytes or bad JSON raise ``ValueError`` naming ``file:line``."""
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from error


def check_folder_setting(folder: Path, variable: str) -> None:
    """Raise, naming ``variable``, when ``folder`` is a file or lies below one, so a mistyped path fails where it is
    read rather than deep inside a trainer's first save. A folder that does not exist yet is fine (it is made when
    something is saved), and one that cannot be written is not refused: it may hold models to read."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "this is a file" if existing == folder else f"{existing} is a file"
        raise ValueError(f"{variable}={folder}: {where}, not a folder; point it at a folder, or unset it.")
