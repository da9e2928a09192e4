"""Time per generated token of greedy decoding vs DoLa ('high' and 'low') on the embedded model, in one run.

.venv/bin/python benchmarks/dola_speed.py [--tokens 48] [--repeats 5]

Every decoder is forced to generate exactly --tokens new tokens (no early stop at EOS), from the same prompts.
Greedy is `model.generate` of the installed transformers, with DoLa's repetition penalty of 1.2. The decoders take
turns: each repeat times greedy, DoLa high and DoLa low once each, back to back, so a machine that speeds up or slows
down during the run (this one moves by up to 2x within a day) shifts all three alike. The table gives each decoder's
median over --repeats, and each DoLa's ratio to greedy within a repeat: the median and the range over the repeats.

A second table splits one decoding step (the last position of the first prompt) into the pieces DoLa adds: the output
head's product for greedy's one row against DoLa's 1 + L rows (as DoLa takes it, against oneDNN's packed copy of
the weight, and as a plain product, the same numbers up to rounding), and the contrast (layer divergence,
plausibility filter; subnormals flushed to zero, as DoLa runs it). The head's extra rows are arithmetic DoLa cannot
skip: every candidate layer's full distribution enters the divergence. Their cost over one greedy token is the floor
of DoLa's ratio on this machine.
"""

from __future__ import annotations

import argparse

import torch

from playbook.dola import (
    _final_and_early_exit_logits,
    _layers_for,
    contrast,
    dola_generate,
)
from playbook.environment import interleaved_seconds, median_seconds
from playbook.models import load_model

PROMPTS = [
    "What happens if you eat watermelon seeds?",
    "Who won the 2020 Olympic gold medal in the men's 10,000 metres?",
    "Why do we see lightning before we hear thunder?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(device="cpu")
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, return_tensors="pt")
        for p in PROMPTS
    ]
    prompts = [p["input_ids"] if not torch.is_tensor(p) else p for p in prompts]
    no_stop = {"max_new_tokens": args.tokens, "eos_token_id": -1}

    decoders = {
        "greedy (model.generate)": lambda ids: model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            repetition_penalty=1.2,  # as DoLa's default: the two decoders differ only by the layer contrast
            pad_token_id=tokenizer.pad_token_id,
            min_new_tokens=args.tokens,
            max_new_tokens=args.tokens,
        ),
        "DoLa high": lambda ids: dola_generate(model, ids, dola_layers="high", **no_stop),
        "DoLa low": lambda ids: dola_generate(model, ids, dola_layers="low", **no_stop),
    }

    def on_every_prompt(decode):
        return lambda: [decode(ids) for ids in prompts]

    # one untimed warm-up call each (lazy initialisation, cold caches), then the decoders take turns
    per_token = interleaved_seconds({name: on_every_prompt(decode) for name, decode in decoders.items()}, args.repeats)
    per_token /= len(prompts) * args.tokens
    greedy = per_token["greedy (model.generate)"]
    print(f"{'decoder':<26}{'ms/token':>10}{'vs greedy, per repeat: median [range]':>40}")
    for name, values in per_token.items():
        ratios = values / greedy
        spread = f"{ratios.median():.2f}x [{ratios.min():.2f}, {ratios.max():.2f}]"
        print(f"{name:<26}{1000 * values.median():>10.1f}{spread:>40}")
    greedy_seconds = greedy.median()
    step_pieces(model, prompts[0], args.repeats * 5, greedy_seconds)


@torch.no_grad()
def step_pieces(model, prompt: torch.Tensor, repeats: int, greedy_seconds: float) -> None:
    """Time the pieces of one DoLa step on the last position of `prompt` and print them beside a greedy token."""
    layers = _layers_for(model, "high")
    outputs = model.base_model(input_ids=prompt, output_hidden_states=True)
    head = model.get_output_embeddings()
    last = outputs.last_hidden_state[:, -1:, :]
    final, premature = _final_and_early_exit_logits(model, outputs.last_hidden_state, outputs.hidden_states, layers)
    rows = torch.stack([outputs.last_hidden_state[0, -1]] + [outputs.hidden_states[layer][0, -1] for layer in layers])

    seconds = {
        "head, 1 row (greedy)": median_seconds(lambda: head(last), repeats),
        f"head, {1 + len(layers)} rows, packed (DoLa)": median_seconds(
            lambda: _final_and_early_exit_logits(model, outputs.last_hidden_state, outputs.hidden_states, layers),
            repeats,
        ),
        f"head, {1 + len(layers)} rows, plain product": median_seconds(lambda: (head.weight @ rows.T).T, repeats),
        "contrast (DoLa high)": median_seconds(lambda: contrast(final, premature, layers), repeats),
    }
    print(f"\none step, median of {repeats} calls   ms")
    for name, value in seconds.items():
        print(f"{name:<34}{1000 * value:>6.1f}")
    extra_rows = seconds[f"head, {1 + len(layers)} rows, packed (DoLa)"] - seconds["head, 1 row (greedy)"]
    print(
        f"the head's {len(layers)} extra rows alone: +{1000 * extra_rows:.1f} ms per token, "
        f"{(greedy_seconds + extra_rows) / greedy_seconds:.2f}x greedy before any DoLa arithmetic"
    )


if __name__ == "__main__":
    main()
