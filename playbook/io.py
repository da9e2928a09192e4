"""Small shared pieces every topic module uses: the chat ``Messages`` type, reading JSONL files, and where the
repository's notebooks are."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

Messages = list[dict[str, str]]
"""A chat conversation: ``[{"role": "user" | "assistant" | "system", "content": "..."}, ...]``."""

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPOSITORY_ROOT / "notebooks"


def course_notebooks(folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in course order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for every non-blank line of a JSONL file (gzipped when it ends in ``.gz``).

    Raises ``ValueError`` naming ``file:line`` for a line that is not a JSON object.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error.msg}).") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}.")
            yield line_number, record
