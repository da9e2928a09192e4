"""The project's own wiring: environment.yml matches pyproject.toml, the course runner, notebooks' hygiene."""

import json
import re
import tomllib

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from conftest import REPO
from playbook.course import execute_notebook
from playbook.environment import display_path, environment_report, interleaved_seconds
from playbook.io import course_notebooks, write_atomically

CONDA_NAMES = {"torch": "pytorch"}


def requirement_name_and_spec(requirement: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", requirement.strip()).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = dict(requirement_name_and_spec(r) for r in pyproject["project"]["dependencies"])
    wanted = {CONDA_NAMES.get(name, name): spec for name, spec in wanted.items()}
    text = (REPO / "environment.yml").read_text()
    lines = text.splitlines()
    section = text.split("dependencies:\n", 1)[1].splitlines()
    listed = [m.group(1) for line in section if (m := re.match(r"^  - ([A-Za-z0-9_.\-]+[<>=,.0-9]*)$", line))]
    conda = dict(requirement_name_and_spec(r) for r in listed)
    conda.pop("python"), conda.pop("pip")
    assert conda == wanted
    assert "      - -e .[dev]" in lines  # the dev extras come from the same pyproject


def test_course_notebooks_are_numbered_in_order():
    names = [p.name for p in course_notebooks()]
    assert names and names == sorted(names) and names[0] == "00_setup.ipynb"


def test_notebooks_hold_no_machine_paths_or_installs():
    for path in course_notebooks():
        text = path.read_text()
        assert not re.search(r'"/(root|home|tmp|work|Users)/', text), f"{path.name} holds an absolute path"
        sources = ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
        assert not any(re.search(r"^\s*[!%]pip", s, re.M) for s in sources), f"{path.name} installs packages"


def test_runner_stops_on_failing_cell_and_keeps_partial_output(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("print('before')"), nbformat.v4.new_code_cell("1 / 0")]
    source = tmp_path / "01_broken.ipynb"
    nbformat.write(notebook, source)
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        execute_notebook(source, tmp_path / "out" / "01_broken.ipynb")
    saved = nbformat.read(tmp_path / "out" / "01_broken.ipynb", as_version=4)
    assert saved.cells[0].outputs[0]["text"] == "before\n"


def test_environment_report_names_versions_and_shows_paths_without_the_home_folder(monkeypatch, tmp_path):
    from pathlib import Path

    report = dict(zip(*environment_report().to_dict("list").values(), strict=True))
    assert report["transformers"].startswith("5.") and report["profile"] in {"smoke", "cpu", "gpu"}
    assert display_path(Path.home() / ".cache" / "x") == "~/.cache/x"
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "data") == "data"
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path / "nowhere"))
    report = dict(zip(*environment_report().to_dict("list").values(), strict=True))
    assert report["data dir (PLAYBOOK_DATA_DIR)"] == "nowhere (missing)"


def test_interleaved_seconds_lets_the_actions_take_turns_and_times_each(monkeypatch):
    import playbook.environment

    clock, calls = [0.0], []

    def action(name: str, seconds: float):
        def run():
            calls.append(name)
            clock[0] += seconds

        return run

    monkeypatch.setattr(playbook.environment.time, "perf_counter", lambda: clock[0])
    times = interleaved_seconds({"fast": action("fast", 1.0), "slow": action("slow", 3.0)}, rounds=3)
    assert calls == ["fast", "slow"] * 4  # one untimed warm-up call each, then three rounds in turn
    assert times.to_dict("list") == {"fast": [1.0, 1.0, 1.0], "slow": [3.0, 3.0, 3.0]}
    assert (times["slow"] / times["fast"]).tolist() == [3.0, 3.0, 3.0]
    calls.clear()
    interleaved_seconds({"fast": action("fast", 1.0)}, rounds=2, warmup=False)
    assert calls == ["fast", "fast"]
    with pytest.raises(ValueError, match="rounds"):
        interleaved_seconds({"fast": action("fast", 1.0)}, rounds=0)


def test_headline_comparison_reports_changed_outputs_only(tmp_path):
    from playbook.reproduce import compare_headlines

    def notebook(text: str, timing: str):
        headline = nbformat.v4.new_code_cell("print(result)", metadata={"tags": ["headline"]})
        headline.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        other = nbformat.v4.new_code_cell("print(seconds)")
        other.outputs = [nbformat.v4.new_output("stream", name="stdout", text=timing)]
        return nbformat.v4.new_notebook(cells=[headline, other])

    for name, text, timing in (("a", "accuracy 0.637\n", "12 s\n"), ("b", "accuracy 0.637\n", "14 s\n")):
        nbformat.write(notebook(text, timing), tmp_path / f"{name}.ipynb")
    nbformat.write(notebook("accuracy 0.641\n", "12 s\n"), tmp_path / "c.ipynb")
    assert compare_headlines(tmp_path / "a.ipynb", tmp_path / "b.ipynb") == []  # timings differ: not a headline
    (problem,) = compare_headlines(tmp_path / "a.ipynb", tmp_path / "c.ipynb")
    assert "cell 0" in problem and "-accuracy 0.637" in problem and "+accuracy 0.641" in problem


def test_reproduce_names_the_settings_that_differ_from_the_committed_run(monkeypatch, tmp_path):
    from playbook.reproduce import settings_that_differ

    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PLAYBOOK_PROFILE", "cpu")
    assert settings_that_differ() == []
    monkeypatch.delenv("PLAYBOOK_DATA_DIR")
    monkeypatch.setenv("PLAYBOOK_PROFILE", "smoke")
    data, profile = settings_that_differ()
    assert data.startswith("PLAYBOOK_DATA_DIR is unset") and "bundled samples" in data
    assert profile == (
        "This run's profile is 'smoke' and the committed outputs come from 'cpu': set PLAYBOOK_PROFILE=cpu."
    )


def test_doctor_asks_for_the_python_that_pyproject_requires():
    from playbook.doctor import MIN_PYTHON

    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == ">=" + ".".join(map(str, MIN_PYTHON))


@pytest.mark.slow
def test_notebook_03_reproduces_its_committed_headlines(shared_data, tmp_path, monkeypatch):
    from playbook.reproduce import main as reproduce

    monkeypatch.setenv("PLAYBOOK_PROFILE", "cpu")  # the profile the committed outputs were made in
    assert reproduce(["03_hh_rlhf", "--out", str(tmp_path)]) == 0


# The course's order (number -> topic), the one place a renumbering is written down; the tests below hold every
# "notebook NN", "NN_topic" and exercise id in the notebooks, the README, the package and the benchmarks to it.
COURSE = {
    "00": "setup",
    "01": "alignment_hhh",
    "02": "feedback_types",
    "03": "hh_rlhf",
    "04": "sft",
    "05": "reward_model",
    "06": "ppo_rlhf",
    "07": "beyond_ppo",
    "08": "evaluation",
    "09": "hallucination",
    "10": "dola",
    "11": "calibration",
}
# What a sentence names when it says whose model it means: each must point at the notebook that makes it.
MEANT = {
    "05": (r"notebook (\d\d)'s reward model", r"reward model (?:of|from|that) notebook (\d\d)"),
    "04": (r"notebook (\d\d)'s SFT model", r"SFT model (?:of|from) notebook (\d\d)"),
    "06": (
        r"notebook (\d\d)'s PPO",
        r"PPO[- ](?:trained )?policy (?:of|from) notebook (\d\d)",
        r"PPO \(notebook (\d\d)\)",
    ),
}
NOTEBOOK_MENTION = re.compile(r"[Nn]otebooks? ((?:\d\d(?:, | and | or |[-–]))*\d\d)\b")
FILE_MENTION = re.compile(r"\b(\d\d)_([a-z][a-z_]*[a-z])\b")


def course_texts() -> dict[str, str]:
    """Every text a learner or contributor reads that can name a notebook: notebook cells (not outputs), READMEs,
    the package, the benchmarks, the solutions and the tests."""
    texts = {}
    for path in course_notebooks():
        cells = nbformat.read(path, as_version=4).cells
        texts[path.name] = "\n".join(cell.source for cell in cells)
    for pattern in (
        "*.md",
        "data/README.md",
        "playbook/*.py",
        "benchmarks/*.py",
        "benchmarks/README.md",
        "solutions/*.py",
        "solutions/*.md",
        "tests/*.py",
    ):
        for path in REPO.glob(pattern):
            texts[str(path.relative_to(REPO))] = path.read_text()
    return texts


def test_the_notebook_files_are_the_course_table():
    assert {path.stem for path in course_notebooks()} == {f"{number}_{topic}" for number, topic in COURSE.items()}


def test_every_notebook_a_text_mentions_exists_and_file_names_match_their_number():
    wrong = []
    for name, text in course_texts().items():
        for mention in NOTEBOOK_MENTION.finditer(text):
            numbers = re.findall(r"\d\d", mention.group(1))
            wrong += [f"{name}: {mention.group(0)!r}" for number in numbers if number not in COURSE]
        for number, topic in FILE_MENTION.findall(text):
            if topic in COURSE.values() and COURSE.get(number) != topic:
                wrong.append(f"{name}: {number}_{topic} (the course has {topic} in its own number)")
    assert wrong == []


def test_a_mention_of_whose_model_points_at_the_notebook_that_trains_it():
    wrong = []
    for name, text in course_texts().items():
        for number, patterns in MEANT.items():
            for pattern in patterns:
                for found in re.finditer(pattern, text):
                    if found.group(1) != number:
                        wrong.append(f"{name}: {found.group(0)!r} should say notebook {number}")
    assert wrong == []


def test_each_notebook_checks_its_own_exercises():
    for path in course_notebooks():
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        ids = re.findall(r"check\(\"(\d\d)\.\d\"", source)
        assert ids and set(ids) == {path.name[:2]}, path.name


def test_write_atomically_publishes_the_whole_file_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "scores.csv"
    write_atomically(target, lambda partial: partial.write_text("a,b\n1,2\n"))
    assert target.read_text() == "a,b\n1,2\n"

    def fails_half_way(partial):
        partial.write_text("a,b\n")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fails_half_way)
    assert target.read_text() == "a,b\n1,2\n"
