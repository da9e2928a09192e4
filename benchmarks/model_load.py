"""Load time of the embedded model: de-quantizing the GGUF vs reading the float32 cache, in one run.

.venv/bin/python benchmarks/model_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from transformers import AutoModelForCausalLM

from playbook.models import embedded_gguf_path, embedded_model_dir, load_model


def seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    embedded_model_dir()  # make sure the cache exists before timing it
    gguf = embedded_gguf_path()
    from_gguf = seconds(lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name), repeats)
    from_cache = seconds(lambda: load_model(device="cpu"), repeats)
    print(f"{'load':<26}{'median s':>10}")
    print(f"{'GGUF (de-quantize)':<26}{from_gguf:>10.2f}")
    print(f"{'float32 cache (load_model)':<26}{from_cache:>10.2f}")
    print(f"{'speed-up':<26}{from_gguf / from_cache:>9.0f}x")


if __name__ == "__main__":
    main()
