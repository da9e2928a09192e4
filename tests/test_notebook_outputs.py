"""Committed notebooks read well without a kernel and open unmodified in JupyterLab.

No frozen progress bars, no widgets that need state that was never saved, and the kernelspec JupyterLab writes
(it marks a notebook modified the moment it opens one whose kernelspec differs).
"""

import re
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import get_kernel_spec

from playbook.course import WIDGET_VIEW, execute_notebook, settle_carriage_returns
from playbook.io import course_notebooks

FROZEN_BAR = re.compile(r"(^|\s)0%\||\|[^|\n]*\|\s*0/\d+")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_REPR = re.compile(r"^(VBox|HBox|IntProgress|FloatProgress)\(")


def unreadable_outputs(notebook: nbformat.NotebookNode) -> list[str]:
    """What a reader would see as noise: one line per frozen bar or stateless widget, or a kernelspec Lab rewrites."""
    lab_name = get_kernel_spec("python3").display_name
    problems = [] if notebook.metadata.get("kernelspec", {}).get("display_name") == lab_name else ["kernelspec"]
    saved_models = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = output.get("text", "") + data.get("text/plain", "")
            if FROZEN_BAR.search(settle_carriage_returns(text)):
                problems.append(f"cell {index}: frozen progress bar {text.strip()[:60]!r}")
            if WIDGET_REPR.match(data.get("text/plain", "")):
                problems.append(f"cell {index}: widget repr {data['text/plain'][:60]!r}")
            if WIDGET_VIEW in data and data[WIDGET_VIEW]["model_id"] not in saved_models:
                problems.append(f"cell {index}: widget view without saved state")
    return problems


@pytest.mark.parametrize(
    "path",
    course_notebooks(),
    ids=lambda p: p.stem,
)
def test_committed_notebooks_have_no_frozen_bars_stateless_widgets_or_foreign_kernelspec(path: Path):
    assert unreadable_outputs(nbformat.read(path, as_version=4)) == []


def test_the_check_finds_a_frozen_bar_a_widget_repr_and_a_foreign_kernelspec():
    bar = nbformat.v4.new_output("stream", name="stderr", text="Loading weights:   0%|          | 0/272 [00:00<?]")
    widget = nbformat.v4.new_output("display_data", {"text/plain": "VBox(children=(HTML(value='<b>Item 1"})
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[bar, widget])])
    notebook.metadata.kernelspec = {"display_name": "Python 3", "language": "python", "name": "python3"}
    assert len(unreadable_outputs(notebook)) == 3


def test_runner_saves_final_text_bars_no_widget_state_and_lab_metadata(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='work'): pass"),
        nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider()"),
    ]
    nbformat.write(notebook, tmp_path / "bars.ipynb")
    execute_notebook(tmp_path / "bars.ipynb", tmp_path / "out.ipynb")
    saved = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    bar, slider = (cell.outputs for cell in saved.cells)
    assert re.fullmatch(r"work: 100%\|█+\| 3/3 .*\n", bar[0].text)
    assert slider[0].data == {"text/plain": "IntSlider(value=0)"}
    assert "widgets" not in saved.metadata and saved.metadata.kernelspec.display_name == "Python 3 (ipykernel)"
    assert saved.metadata.language_info.name == "python" and [c.execution_count for c in saved.cells] == [1, 2]
    assert unreadable_outputs(saved) == []


def test_text_printed_after_a_table_stays_after_it(tmp_path):
    notebook = nbformat.v4.new_notebook()
    code = (
        "import pandas as pd\nprint('before')\nprint('still before')\ndisplay(pd.DataFrame({'x': [1]}))\nprint('after')"
    )
    notebook.cells = [nbformat.v4.new_code_cell(code)]
    nbformat.write(notebook, tmp_path / "order.ipynb")
    execute_notebook(tmp_path / "order.ipynb", tmp_path / "out.ipynb")
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    assert [output.output_type for output in outputs] == ["stream", "display_data", "stream"]
    assert [outputs[0].text, outputs[2].text] == ["before\nstill before\n", "after\n"]
