"""Guard for every pytest run of the project (unit tests and the notebooks under nbval): nothing a learner trained
under ``runs/`` is touched. Runs write to ``build/test-runs`` unless ``PLAYBOOK_RUNS`` says otherwise, and the
session fails if the repository's ``runs/`` folder changed while it ran."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent
LEARNER_RUNS = REPOSITORY / "runs"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under ``folder`` (empty when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file()
    }


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PLAYBOOK_RUNS", str(REPOSITORY / "build" / "test-runs"))  # inherited by notebook kernels
    config.stash[RUNS_BEFORE] = snapshot(LEARNER_RUNS)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before, after = session.config.stash[RUNS_BEFORE], snapshot(LEARNER_RUNS)
    if before != after:
        changed = sorted(set(before) ^ set(after) | {k for k in before if k in after and before[k] != after[k]})
        print(f"\nFAILED: this test run changed the learner's {LEARNER_RUNS}: {changed[:10]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


RUNS_BEFORE = pytest.StashKey[dict[str, tuple[int, int]]]()
