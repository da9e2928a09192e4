"""Load time of the embedded model: de-quantizing the GGUF vs reading the float32 cache, in one run.

.venv/bin/python benchmarks/model_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse

from transformers import AutoModelForCausalLM

from playbook.environment import median_seconds
from playbook.models import embedded_gguf_path, embedded_model_dir, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    embedded_model_dir()  # make sure the cache exists before timing it
    gguf = embedded_gguf_path()
    from_gguf = median_seconds(
        lambda: AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name), repeats, warmup=False
    )
    from_cache = median_seconds(lambda: load_model(device="cpu"), repeats, warmup=False)
    print(f"{'load':<26}{'median s':>10}")
    print(f"{'GGUF (de-quantize)':<26}{from_gguf:>10.2f}")
    print(f"{'float32 cache (load_model)':<26}{from_cache:>10.2f}")
    print(f"{'speed-up':<26}{from_gguf / from_cache:>9.0f}x")


if __name__ == "__main__":
    main()
