"""What learners and instructors see, checked in a real browser: Debian's chromium driven by Playwright.

One JupyterLab server on 127.0.0.1 (a free port, a token) serves, from a temporary folder, a copy of a committed
notebook and a two-cell notebook that shows notebook 02's annotation widget on fixed replies (the widget is what the
browser checks; nbval runs notebook 02 itself, model and all). ``PLAYBOOK_RUNS`` points into that folder too, so
nothing is written into the checkout's ``runs/`` or ``notebooks/``.
Screenshots go to ``build/browser/`` for a person to look at. Without ``/usr/bin/chromium`` (``apt-get install
chromium``) or the ``playwright`` package the test is skipped, and says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import REPO
from playbook.io import NOTEBOOK_DIR
from playbook.slides import build_slides

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = REPO / "build" / "browser"
ANNOTATION_NOTEBOOK = "annotation_widget.ipynb"
ANNOTATION_CELLS = [
    """from playbook.annotation import AnnotationItem, AnnotationStore, annotation_widget, describe_form
from playbook.config import runs_dir

items = [
    AnnotationItem("helpful-1", "What is the capital of Japan?", ["The capital of Japan is Tokyo.", "Kyoto."]),
    AnnotationItem("honest-1", "What number am I thinking of?", ["Seven!", "I can't know that."]),
]
store = AnnotationStore(runs_dir() / "my_labels.jsonl")""",
    """print(describe_form("pairwise"))
annotation_widget(items, store, kind="pairwise")""",
]
VIEWED_NOTEBOOK = "03_hh_rlhf.ipynb"  # committed with the outputs of the course runner
IDLE_KERNEL = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
FROZEN_BAR_TEXT = ("0%|", "| 0/")

if not CHROMIUM.exists():
    pytest.skip(
        f"browser test skipped: no Debian chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True
    )
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="browser test skipped: no playwright"
).sync_playwright


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lab_request(base: str, token: str, path: str, method: str = "GET") -> dict | list:
    request = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read()
    return json.loads(body) if body else {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[dict]:
    """A JupyterLab server on copies of the notebooks; stopped (kernels included) by its process id afterwards."""
    root = tmp_path_factory.mktemp("lab")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in ANNOTATION_CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / ANNOTATION_NOTEBOOK)
    viewed = Path(shutil.copy(NOTEBOOK_DIR / VIEWED_NOTEBOOK, root))
    settings = root / ".jupyter" / "lab" / "user-settings"
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "get notified about Jupyter news?" toast
    token, port = os.urandom(12).hex(), free_port()
    environment = os.environ | {
        "PLAYBOOK_RUNS": str(root / "runs"),
        "PLAYBOOK_PROFILE": "smoke",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "JUPYTER_CONFIG_DIR": str(root / ".jupyter"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(root / ".jupyter" / "lab" / "workspaces"),
    }
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1"]
    command += [f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    server = subprocess.Popen(
        command + ["--LabApp.news_url="],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=(root / "server.log").open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                lab_request(base, token, "/api/status")
                break
            except OSError:
                assert server.poll() is None, (root / "server.log").read_text()
                time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "viewed": viewed.name}
    finally:
        if server.poll() is None:
            for kernel in lab_request(base, token, "/api/kernels"):
                lab_request(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"chromium-profile-{os.getpid()}"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900}
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def open_notebook(browser, lab: dict, name: str):
    page = browser.new_page()
    workspace = Path(name).stem  # a fresh workspace per notebook: only this notebook open, its kernel the current one
    page.goto(f"{lab['base']}/lab/workspaces/{workspace}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(f"{IDLE_KERNEL}, .jp-Dialog", timeout=120_000)
    if page.locator(".jp-Dialog").count():  # Lab may ask which kernel to start: the notebook's own
        page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True).click()
    page.wait_for_selector(IDLE_KERNEL, timeout=120_000)
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=120_000)  # the status bar: kernel connected
    return page


def test_a_committed_notebook_opens_unmodified_and_without_frozen_progress_bars(browser, lab):
    page = open_notebook(browser, lab, lab["viewed"])
    time.sleep(2)  # Lab rewrites a foreign kernelspec just after the kernel connects
    page.screenshot(path=SCREENSHOTS / "committed_notebook.png")
    outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
    assert outputs, "no outputs rendered"
    assert not [text for text in outputs if any(bar in text for bar in FROZEN_BAR_TEXT)]
    assert page.locator(".jp-mod-dirty").count() == 0, "opening the notebook marked it modified"
    page.close()


def test_the_annotation_widget_saves_a_click_and_says_so(browser, lab):
    page = open_notebook(browser, lab, ANNOTATION_NOTEBOOK)
    page.get_by_role("menuitem", name="Run").click()
    page.get_by_text("Run All Cells", exact=True).click()
    choice = page.get_by_role("button", name="A slightly better", exact=True)
    label_file = lab["root"] / "runs" / "smoke" / "my_labels.jsonl"
    try:
        choice.wait_for(timeout=240_000)  # Run All: the kernel imports the playbook first
        choice.click()
        confirmation = page.get_by_text("Saved the pairwise label for")
        confirmation.wait_for(timeout=10_000)
        confirmation.scroll_into_view_if_needed()
        saved = confirmation.inner_text()
        (label,) = [json.loads(line) for line in label_file.read_text().splitlines()]
        page.get_by_role("button", name="Undo last label").click()
        taken_back = page.get_by_text("Took back the label for")
        taken_back.wait_for(timeout=10_000)
    finally:
        page.screenshot(path=SCREENSHOTS / "annotation_widget.png")
    assert label["item_id"] in saved and label["feedback"]["strength"] == "slightly better"
    assert "1 label in" in saved and "my_labels.jsonl" in saved
    assert label["item_id"] in taken_back.inner_text() and "0 labels in" in taken_back.inner_text()
    lines = [json.loads(line) for line in label_file.read_text().splitlines()]
    assert lines[0] == label and lines[1]["undo"] == label["item_id"] and len(lines) == 2  # appended, not rewritten
    assert page.get_by_text("Run live, the form shows one item at a time").count() >= 1  # the printed description
    page.close()


def test_a_slide_deck_opens_and_advances_with_no_network(browser, tmp_path):
    (deck,) = build_slides(tmp_path, [NOTEBOOK_DIR / "03_hh_rlhf.ipynb"])
    page = browser.new_page()
    fetched = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.on("request", lambda request: fetched.append(request.url))
    page.goto(deck.as_uri())
    page.wait_for_function("window.Reveal && Reveal.isReady()", timeout=10_000)
    assert page.title().startswith("03 ·")
    page.screenshot(path=SCREENSHOTS / "slides_first.png")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("Reveal.getIndices().h === 1", timeout=5_000)
    page.screenshot(path=SCREENSHOTS / "slides_second.png")
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    page.close()
