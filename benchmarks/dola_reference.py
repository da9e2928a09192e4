"""Record what DoLa decoding in transformers < 4.53 produced, as the reference `playbook.dola` is tested against.

Run it in a separate virtual environment (never in the project's), on a copy of the embedded model's cache folder
whose config.json has `rope_theta` at the top level (transformers 5 keeps it under `rope_parameters`, which 4.x
ignores, silently falling back to 10000):

    python -m venv ../ref452 && ../ref452/bin/pip install torch==2.13.0 "transformers==4.52.4"
    ../ref452/bin/python benchmarks/dola_reference.py MODEL_COPY tests/fixtures/dola_reference.json

The output lists, for each case, the prompt token ids and the ids `model.generate` returned, greedy.
"""

from __future__ import annotations

import argparse
import json

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

QUESTIONS = [
    "What happens if you eat watermelon seeds?",
    "Who won the 2020 Olympic gold medal in the men's 10,000 metres?",
    "What is the capital of Australia?",
    "Why do we see lightning before we hear thunder?",
    "Name three planets in the solar system.",
    "How many legs does a spider have?",
]
RAW_TEXTS = [
    "Q: What is the boiling point of water at sea level?\nA:",
    "The theory of relativity was developed by",
]
SETTINGS = [
    {"dola_layers": "high", "repetition_penalty": 1.2},
    {"dola_layers": "low", "repetition_penalty": 1.2},
    {"dola_layers": [4, 10, 16, 22], "repetition_penalty": 1.2},
    {"dola_layers": [20], "repetition_penalty": 1.0},
    {"dola_layers": None, "repetition_penalty": 1.0},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("out")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ] + RAW_TEXTS
    cases = []
    for text in prompts:
        prompt_ids = tokenizer(text, return_tensors="pt").input_ids
        for setting in SETTINGS:
            output = model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                do_sample=False,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
                **setting,
            )
            cases.append({**setting, "prompt_ids": prompt_ids[0].tolist(), "output_ids": output[0].tolist()})
            print(setting["dola_layers"], repr(tokenizer.decode(output[0, prompt_ids.shape[1] :]))[:80])
    record = {"transformers_version": transformers.__version__, "max_new_tokens": args.max_new_tokens, "cases": cases}
    with open(args.out, "w") as handle:
        json.dump(record, handle)


if __name__ == "__main__":
    main()
