"""Do the committed notebooks reproduce? Re-run some headless and compare their headline outputs with the committed
ones: ``python -m playbook.reproduce 03 05``.

A cell tagged ``headline`` prints a result the course states (a count, an accuracy, a reward): its text output must
come out the same in a fresh run of the same profile. Timings and other outputs that vary between runs are not
tagged. The fresh copies go to ``build/reproduce/``; nothing in ``notebooks/`` changes.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import nbformat

from playbook.config import PROFILE_ENV, get_profile
from playbook.course import execute_notebook
from playbook.data import DATA_DIR_ENV, data_dir
from playbook.io import NOTEBOOK_DIR, REPOSITORY_ROOT, course_notebooks

HEADLINE_TAG = "headline"


def headline_texts(notebook: nbformat.NotebookNode) -> dict[int, str]:
    """The text output (streams and ``text/plain`` results) of each cell tagged ``headline``, by cell index."""
    texts = {}
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or HEADLINE_TAG not in cell.metadata.get("tags", []):
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream" and output.name == "stdout":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data") and "text/plain" in output.data:
                parts.append(output.data["text/plain"])
        texts[index] = "".join(parts)
    return texts


def compare_headlines(committed: Path, fresh: Path) -> list[str]:
    """One message per headline cell whose output differs between the two notebooks (empty when they agree)."""
    before = headline_texts(nbformat.read(committed, as_version=4))
    after = headline_texts(nbformat.read(fresh, as_version=4))
    if not before:
        return [f"{committed.name}: no cell is tagged {HEADLINE_TAG!r}"]
    problems = []
    for index, text in before.items():
        if after.get(index) != text:
            diff = difflib.unified_diff(
                text.splitlines(), after.get(index, "").splitlines(), "committed", "fresh", lineterm=""
            )
            problems.append(f"{committed.name} cell {index}:\n" + "\n".join(diff))
    return problems


COMMITTED_PROFILE = "cpu"  # the profile of the committed outputs (`make refresh-notebooks` on a CPU machine)


def settings_that_differ() -> list[str]:
    """What in this run's settings differs from the committed run's, each a reason its numbers may not reproduce."""
    reasons = []
    if data_dir() is None:
        reasons.append(
            f"{DATA_DIR_ENV} is unset, so the notebooks read the Hub when online, else the small bundled samples; the "
            f"committed outputs come from the course's data folder: set {DATA_DIR_ENV} to it (data/README.md), as the "
            "Makefile does when ../shared/data exists."
        )
    profile = get_profile().name
    if profile != COMMITTED_PROFILE:
        reasons.append(
            f"This run's profile is {profile!r} and the committed outputs come from {COMMITTED_PROFILE!r}: set "
            f"{PROFILE_ENV}={COMMITTED_PROFILE}."
        )
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="notebooks whose file name contains one of these (e.g. 03 05)")
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT / "build" / "reproduce")
    args = parser.parse_args(argv)
    notebooks = [p for p in course_notebooks() if any(n in p.name for n in args.names)]
    if not notebooks:
        parser.error(f"no notebook in {NOTEBOOK_DIR} matches {args.names}")
    problems = []
    for path in notebooks:
        fresh = args.out / path.name
        seconds = execute_notebook(path, fresh)
        found = compare_headlines(path, fresh)
        print(f"{path.name}: {'reproduces' if not found else 'DIFFERS'} ({seconds:.0f} s)")
        problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        for reason in settings_that_differ():
            print(f"Note: {reason}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
