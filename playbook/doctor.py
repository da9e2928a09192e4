"""Pre-flight check for a workshop machine: `make doctor`, or `python -m playbook.doctor`.

Reports Python and library versions, the device, free memory and disk, whether the embedded model and the data
sets are present and load, and how long each notebook should take here. The estimate comes from three timed
micro-steps (generation, scoring, a training step), compared with the same micro-steps on the 2-core machine the
committed notebooks were run on, whose per-notebook times are read from the notebooks' own execution records.
Exits non-zero when something the course needs is missing, with a one-line fix for each failing item.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch

from playbook.config import get_profile
from playbook.environment import median_seconds
from playbook.io import NOTEBOOK_DIR, course_notebooks
from playbook.models import REINSTALL_COMMAND, EmbeddedModelMissing, cache_root, embedded_cache_dir, pick_device

REQUIRED_LIBRARIES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "gguf", "safetensors")
MIN_PYTHON = (3, 11)  # pyproject.toml: requires-python = ">=3.11"
MIN_FREE_MEMORY_GIB = 4.0
MIN_FREE_DISK_GIB = 2.0

REFERENCE_MACHINE = "2-core x86-64 CPU, 24 GiB, no GPU (where the committed notebooks were run)"
REFERENCE_MICRO_SECONDS = {"generate": 1.61, "score": 1.71, "train": 1.45}
"""`micro_benchmarks()` on the reference machine (median of 3), measured with `python -m playbook.doctor --micro`."""


@dataclass(frozen=True)
class Check:
    """One line of the report. `status` is ok, warn (the course runs, with less) or FAIL (it does not)."""

    item: str
    status: str
    detail: str
    fix: str = ""


def _free_memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**30


def system_checks() -> list[Check]:
    """Python, libraries, device, memory and disk."""
    checks = []
    python = ".".join(map(str, sys.version_info[:3]))
    checks.append(
        Check("python", "ok", python)
        if sys.version_info >= MIN_PYTHON
        else Check("python", "FAIL", python, f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    )
    for name in REQUIRED_LIBRARIES:
        try:
            checks.append(Check(name, "ok", version(name)))
        except PackageNotFoundError:
            checks.append(Check(name, "FAIL", "missing", "make setup (or: pip install -e .)"))
    checks.append(Check("device", "ok", str(pick_device())))
    memory = _free_memory_gib()
    checks.append(
        Check("free memory", "ok", f"{memory:.1f} GiB")
        if memory >= MIN_FREE_MEMORY_GIB
        else Check("free memory", "warn", f"{memory:.1f} GiB", "close other programs: the cpu profile wants ~4 GiB")
    )
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(folder).free / 2**30
    checks.append(
        Check("free disk", "ok", f"{disk:.1f} GiB")
        if disk >= MIN_FREE_DISK_GIB
        else Check("free disk", "FAIL", f"{disk:.1f} GiB", "free 2 GiB for the model cache and runs/")
    )
    return checks


def model_check() -> tuple[Check, object | None]:
    """Whether the embedded model is installed and loads; returns the check and `(model, tokenizer)` if it did."""
    try:
        cache = embedded_cache_dir()
    except EmbeddedModelMissing as error:
        return Check("embedded model", "FAIL", str(error).splitlines()[0], error.fix), None
    from playbook.models import load_model

    started = time.perf_counter()
    try:
        loaded = load_model(device="cpu")
    except Exception as error:  # a broken cache or wheel: report it, don't crash the report
        return Check(
            "embedded model",
            "FAIL",
            f"does not load: {error}",
            f"move {cache} aside (or delete it) so it is converted again; if that fails too: {REINSTALL_COMMAND}",
        ), None
    return Check("embedded model", "ok", f"loads in {time.perf_counter() - started:.1f} s"), loaded


def data_checks() -> list[Check]:
    """Each real data set: found locally (ok) or only the bundled sample (warn: the notebooks run, on less data)."""
    from playbook.data import load_hh_rlhf, load_selfaware, load_truthfulqa

    fix = "put the data sets in a folder and set PLAYBOOK_DATA_DIR to it (see data/README.md)"
    checks = []
    for name, load in (
        ("hh-rlhf", lambda: load_hh_rlhf("harmless-base", source="local")),
        ("TruthfulQA", lambda: load_truthfulqa(source="local")),
        ("SelfAware", lambda: load_selfaware(source="local")),
    ):
        try:
            rows = len(load())
            checks.append(Check(f"data: {name}", "ok", f"{rows:,} rows"))
        except (FileNotFoundError, ValueError) as error:
            checks.append(Check(f"data: {name}", "warn", f"bundled sample only ({str(error).splitlines()[0]})", fix))
    return checks


def micro_benchmarks(model, tokenizer) -> dict[str, float]:
    """Seconds for three small steps that stand for the course's work: 16 greedy tokens for 4 prompts
    (generate), a forward pass over 8 × 128 tokens (score) and a training step of the top 6 layers on
    4 × 128 tokens (train). Each is the median of the profile's ``timing_repeats`` runs after one warm-up run; the
    smoke profile times a single cold run (its numbers only show that the steps run)."""
    repeats = get_profile().timing_repeats
    warmup = repeats > 1
    torch.manual_seed(0)
    prompts = torch.randint(100, 1000, (4, 32))
    tokens = torch.randint(100, 1000, (8, 128))
    generate = median_seconds(
        lambda: model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        ),
        repeats,
        warmup=warmup,
    )

    def score():
        with torch.no_grad():
            model(tokens)

    layers = model.base_model.layers
    trainable = [p for layer in layers[-6:] for p in layer.parameters()]

    def train():
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)
        loss = model(tokens[:4], labels=tokens[:4]).loss
        loss.backward()
        for p in trainable:
            p.grad = None
            p.requires_grad_(False)

    return {
        "generate": generate,
        "score": median_seconds(score, repeats, warmup=warmup),
        "train": median_seconds(train, repeats, warmup=warmup),
    }


def notebook_seconds(notebook: Path) -> float | None:
    """How long a committed notebook's cells took to run, summed from the times nbclient recorded per cell."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    total, timed = 0.0, False
    for cell in cells:
        execution = cell.get("metadata", {}).get("execution", {})
        if "iopub.status.busy" in execution and "iopub.status.idle" in execution:
            busy, idle = (
                datetime.fromisoformat(execution[key].replace("Z", "+00:00"))
                for key in ("iopub.status.busy", "iopub.status.idle")
            )
            total += (idle - busy).total_seconds()
            timed = True
    return total if timed else None


def notebook_estimates(micro: dict[str, float], notebooks: Path | None = None) -> pd.DataFrame:
    """Estimated minutes per notebook in the cpu profile on this machine: the reference machine's recorded time
    scaled by how much slower or faster the micro-steps ran here (median of the three ratios)."""
    speed = statistics.median(micro[k] / REFERENCE_MICRO_SECONDS[k] for k in REFERENCE_MICRO_SECONDS)
    rows = []
    for notebook in course_notebooks(notebooks or NOTEBOOK_DIR):
        reference = notebook_seconds(notebook)
        rows.append(
            {
                "notebook": notebook.stem,
                "reference minutes": None if reference is None else round(reference / 60, 1),
                "estimated minutes here": None if reference is None else round(reference * speed / 60, 1),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["speed"] = speed
    return table


def doctor(*, estimate: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Run every check; returns the check table and (if the model loaded and `estimate`) the timing table."""
    checks = system_checks()
    model_status, loaded = model_check()
    checks.append(model_status)
    checks += data_checks()
    checks.append(Check("profile", "ok", get_profile().name))
    table = pd.DataFrame([c.__dict__ for c in checks])
    timings = notebook_estimates(micro_benchmarks(*loaded)) if loaded is not None and estimate else None
    return table, timings


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Pre-flight check for Alignment Playbook.")
    parser.add_argument("--no-estimate", action="store_true", help="skip the timed micro-steps")
    parser.add_argument("--micro", action="store_true", help="print the micro-step timings only")
    args = parser.parse_args(argv)
    if args.micro:
        status, loaded = model_check()
        if loaded is None:
            print(f"{status.item}: {status.detail}. Fix: {status.fix}")
            return 1
        print(json.dumps({k: round(v, 3) for k, v in micro_benchmarks(*loaded).items()}))
        return 0
    checks, timings = doctor(estimate=not args.no_estimate)
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(checks.to_string(index=False))
        if timings is not None:
            speed = timings.attrs["speed"]
            print(f"\nNotebook times, cpu profile: reference = {REFERENCE_MACHINE}; this machine runs the")
            print(f"micro-steps at {speed:.2f}x the reference's time.")
            print(timings.to_string(index=False))
    failing = checks[checks["status"] == "FAIL"]
    for row in failing.itertuples():
        print(f"FAIL {row.item}: {row.fix}")
    return 1 if len(failing) else 0


if __name__ == "__main__":
    sys.exit(main())
