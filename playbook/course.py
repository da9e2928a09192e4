"""Execute the course notebooks headless, in order: ``python -m playbook.course`` (what ``make course`` runs).

Executed copies go to ``--out`` (default ``build/notebooks``); ``--in-place`` writes the outputs back into
``notebooks/`` instead, which is how maintainers refresh the committed outputs. The first failing cell stops
the run with the notebook's name, the cell and its error, and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm.auto import tqdm

from playbook.io import NOTEBOOK_DIR, course_notebooks


def execute_notebook(path: Path, destination: Path, *, timeout: int = 3600) -> float:
    """Run every cell of ``path`` with the notebooks folder as working directory, save to ``destination``.

    Returns the wall time in seconds. Raises ``CellExecutionError`` on the first failing cell (the partly
    executed notebook is still saved to ``destination`` so the error can be read there).
    """
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    start = time.perf_counter()
    bar = tqdm(total=len(cells), desc=path.stem, unit="cell", leave=False)
    try:
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
                    bar.update()
    finally:
        bar.close()
        destination.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, destination)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/notebooks"), help="folder for executed copies")
    parser.add_argument("--in-place", action="store_true", help="write outputs back into notebooks/")
    parser.add_argument("names", nargs="*", help="run only notebooks whose file name contains one of these")
    args = parser.parse_args(argv)

    notebooks = [p for p in course_notebooks() if not args.names or any(n in p.name for n in args.names)]
    if not notebooks:
        parser.error(f"no notebook in {NOTEBOOK_DIR} matches {args.names}")
    timings = []
    for path in tqdm(notebooks, desc="course", unit="notebook"):
        destination = path if args.in_place else args.out / path.name
        try:
            timings.append((path.name, execute_notebook(path, destination)))
        except CellExecutionError as error:
            print(f"\nFAILED: {path.name} (partial output in {destination})\n{error}", file=sys.stderr)
            return 1
    width = max(len(name) for name, _ in timings)
    for name, seconds in timings:
        print(f"{name:<{width}}  {seconds:7.1f} s")
    print(f"{'total':<{width}}  {sum(s for _, s in timings):7.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
