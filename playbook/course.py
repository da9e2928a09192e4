"""Execute the course notebooks headless, in order: ``python -m playbook.course`` (what ``make course`` runs).

Executed copies go to ``--out`` (default ``build/notebooks``); ``--in-place`` writes the outputs back into
``notebooks/`` instead, which is how maintainers refresh the committed outputs. The first failing cell stops
the run with the notebook's name, the cell and its error, and a non-zero exit status.

The saved outputs are meant to be read without a kernel (JupyterLab, GitHub, nbviewer): progress bars are
written as plain text and kept in their final state, transformers' per-load bars are switched off, no widget
state is saved (and the widget views that would need it are dropped, leaving each widget's text or HTML
fallback), and the kernelspec is the one JupyterLab would write, so opening a notebook does not mark it modified.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import get_kernel_spec
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tqdm.auto import tqdm

from playbook.io import NOTEBOOK_DIR, course_notebooks

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Run in the kernel before the first cell (and outside its history): tqdm.auto's notebook widget bars, whose
# state a headless run cannot save, become text bars.
TEXT_PROGRESS_BARS = (
    "import tqdm.auto, tqdm.autonotebook, tqdm.std; "
    "tqdm.auto.tqdm = tqdm.autonotebook.tqdm = tqdm.std.tqdm; "
    "tqdm.auto.trange = tqdm.autonotebook.trange = tqdm.std.trange"
)


def settle_carriage_returns(text: str) -> str:
    """What a terminal would show: each line keeps only what was written after its last carriage return."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


def consecutive_streams_merged(outputs: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Outputs in the order the kernel sent them, with each run of same-named stream chunks joined into one.

    nbclient's own ``coalesce_streams`` joins *all* of a cell's stdout into its first chunk, which moves text
    printed after a table or figure above it; a progress bar's chunks still join here, so its carriage returns
    settle to its final state."""
    merged: list[nbformat.NotebookNode] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            output.output_type == "stream"
            and previous is not None
            and previous.output_type == "stream"
            and previous.name == output.name
        ):
            previous.text += output.text
        else:
            merged.append(output)
    return merged


def readable_outputs(notebook: nbformat.NotebookNode, kernel_spec: dict[str, str]) -> None:
    """Make an executed notebook read well without a kernel (see the module docstring); changes it in place."""
    notebook.metadata.pop("widgets", None)
    notebook.metadata["kernelspec"] = kernel_spec
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = consecutive_streams_merged(cell.outputs)
        for output in cell.outputs:
            if output.output_type == "stream":
                output.text = settle_carriage_returns(output.text)
            elif WIDGET_VIEW in output.get("data", {}):
                del output.data[WIDGET_VIEW]
        cell.outputs = [o for o in cell.outputs if o.output_type != "display_data" or o.data]
        cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or re.search(r"\S", o.text)]


def execute_notebook(path: Path, destination: Path, *, timeout: int = 3600) -> float:
    """Run every cell of ``path`` with the notebooks folder as working directory, save to ``destination``.

    Returns the wall time in seconds. Raises ``CellExecutionError`` on the first failing cell (the partly
    executed notebook is still saved to ``destination`` so the error can be read there).
    """
    notebook = nbformat.read(path, as_version=4)
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": path.parent}},
        extra_arguments=[f"--IPKernelApp.exec_lines={[TEXT_PROGRESS_BARS]!r}"],
        store_widget_state=False,
    )
    start = time.perf_counter()
    bar = tqdm(total=len(cells), desc=path.stem, unit="cell", leave=False)
    try:
        with client.setup_kernel():
            info = client.wait_for_reply(client.kc.kernel_info())
            notebook.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(notebook.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
                    bar.update()
    finally:
        bar.close()
        spec = get_kernel_spec("python3")
        readable_outputs(notebook, {"display_name": spec.display_name, "language": spec.language, "name": "python3"})
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
