"""Held-out accuracy of notebook 05's frozen-head reward model by what the head reads and what it is trained on.

    PLAYBOOK_DATA_DIR=../shared/data .venv/bin/python benchmarks/reward_features.py [--layers 6 12 18 24 30]

Notebook 05's method fits a Bradley–Terry head (L2-regularised logistic regression on φ(chosen) − φ(rejected)) on
φ = the final norm of layer 18's output at the reply's last token. This script reads every candidate feature in one
pass per conversation and fits the same head (``choose_l2`` + ``fit_bradley_terry_head``) on:

- the layer read: the last token after layer L (6 … 30), as a reward model cut at L reads it;
- pooling: the last token, or the mean over the reply's tokens (the same final norm applied);
- several layers at once: the last-token features of some layers side by side;
- the training data: the course split's harmless-base training pairs, or those plus helpful-base's.

Every row is evaluated on the same held-out harmless-base pairs (``hh_rlhf_split("cpu")["test"]``, which no model
of the course trains on), with a Wilson interval and an exact McNemar test against notebook 05's setting (layer 18,
last token, harmless only) on the same pairs. Runs on any device (``pick_device``); a GPU reads the features in
seconds, this 2-core CPU in about 20 minutes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from common import course_training_pairs

from playbook.config import get_profile
from playbook.data import hh_rlhf_split, load_hh_rlhf
from playbook.models import load_model
from playbook.reward import choose_l2, encode_conversation, fit_bradley_terry_head, give_distinct_pad_token
from playbook.stats import mcnemar_exact, proportion_interval
from playbook.tensors import pad_sequences

BASELINE = ("last", (18,), "harmless")


def reply_token_counts(dataset, tokenizer, side: str) -> list[int]:
    """Tokens of each pair's ``side`` reply, up to and including its ``<|im_end|>``: the conversation's length minus
    the prompt's with the assistant header (both untruncated)."""
    counts = []
    for row in dataset:
        whole = encode_conversation(tokenizer, row["prompt"] + row[side], 10**9)
        prompt = tokenizer.apply_chat_template(
            row["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False
        )
        counts.append(max(1, len(whole) - len(list(prompt))))
    return counts


@torch.no_grad()
def read_features(model, tokenizer, dataset, side: str, layers, max_length: int, batch_size: int) -> dict:
    """``{("last" | "mean", layer): tensor[pairs, hidden]}`` for the ``side`` conversations of ``dataset``."""
    encoded = [encode_conversation(tokenizer, row["prompt"] + row[side], max_length) for row in dataset]
    replies = reply_token_counts(dataset, tokenizer, side)
    device = next(model.parameters()).device
    top = model.config.num_hidden_layers
    out = {
        (pool, layer): torch.zeros(len(encoded), model.config.hidden_size)
        for pool in ("last", "mean")
        for layer in layers
    }
    for first in range(0, len(encoded), batch_size):
        ids, mask = pad_sequences(encoded[first : first + batch_size], tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        lengths = mask.sum(1)
        positions = torch.arange(ids.shape[1], device=device)
        reply_len = torch.tensor(replies[first : first + batch_size], device=device).clamp(max=lengths)
        in_reply = (positions[None] >= (lengths - reply_len)[:, None]) & (positions[None] < lengths[:, None])
        rows = torch.arange(len(ids), device=device)
        for layer in layers:  # padding is on the right (pad_sequences), so the last real token is lengths - 1
            normed = hidden.last_hidden_state if layer == top else model.base_model.norm(hidden.hidden_states[layer])
            out["last", layer][first : first + len(ids)] = normed[rows, lengths - 1].float().cpu()
            weights = in_reply.float() / in_reply.sum(1, keepdim=True)
            out["mean", layer][first : first + len(ids)] = torch.einsum("bt,bth->bh", weights, normed.float()).cpu()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12, 18, 24, 30], help="layers to read")
    parser.add_argument("--max-length", type=int, help="tokens kept per conversation (default: the cpu profile's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--helpful", type=int, help="helpful-base pairs added to the training data (default: all)")
    parser.add_argument("--limit", type=int, help="only the first N pairs of each set (a quick check of the script)")
    args = parser.parse_args()
    profile = get_profile("cpu")
    max_length = args.max_length or profile.rm_max_length
    if 18 not in args.layers:
        parser.error("--layers: include 18, notebook 05's layer, the baseline every row is compared with")
    course_training_pairs()  # stops with what to do when only the bundled sample is found
    split = hh_rlhf_split(profile)
    helpful = load_hh_rlhf("helpful-base", "test")
    if args.helpful is not None:
        helpful = helpful.select(range(min(args.helpful, len(helpful))))
    sets = {"harmless": split["train"], "helpful": helpful, "test": split["test"]}
    if args.limit:
        sets = {name: data.select(range(min(args.limit, len(data)))) for name, data in sets.items()}
    model, tokenizer = load_model(task="reward")
    give_distinct_pad_token(tokenizer, model)
    start = time.perf_counter()
    features = {
        (name, side): read_features(model, tokenizer, data, side, args.layers, max_length, args.batch_size)
        for name, data in sets.items()
        for side in ("chosen", "rejected")
    }
    seconds = time.perf_counter() - start

    def stacked(name: str, side: str, pool: str, layers: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([features[name, side][pool, layer] for layer in layers], dim=1)

    rows, correct = [], {}
    settings = [("last", (layer,)) for layer in args.layers] + [("mean", (layer,)) for layer in args.layers]
    settings += [("last", (12, 18, 24)), ("last", tuple(args.layers))]
    for data, names in {"harmless": ["harmless"], "harmless + helpful": ["harmless", "helpful"]}.items():
        for pool, layers in settings:
            chosen = torch.cat([stacked(n, "chosen", pool, layers) for n in names])
            rejected = torch.cat([stacked(n, "rejected", pool, layers) for n in names])
            l2 = choose_l2(chosen, rejected)
            weight, history = fit_bradley_terry_head(chosen, rejected, l2=l2)
            margins = (stacked("test", "chosen", pool, layers) - stacked("test", "rejected", pool, layers)) @ weight
            key = (pool, layers, data)
            correct[key] = (margins > 0).numpy()
            low, high = proportion_interval(int(correct[key].sum()), len(margins))
            rows.append(
                {
                    "data": data,
                    "training pairs": len(chosen),
                    "pooling": pool,
                    "layers": "+".join(map(str, layers)),
                    "l2": l2,
                    "train acc": history["accuracy"].iloc[-1],
                    "held-out acc": correct[key].mean(),
                    "95% interval": f"[{low:.3f}, {high:.3f}]",
                    "key": key,
                }
            )
    baseline = correct[BASELINE]
    for row in rows:
        test = mcnemar_exact(baseline, correct[row.pop("key")])
        row["vs notebook 05 (better, worse, McNemar p)"] = f"{test.only_after}, {test.only_before}, {test.p_value:.3f}"
    print(
        f"features of {len(sets['harmless'])} harmless + {len(sets['helpful'])} helpful training pairs and "
        f"{len(sets['test'])} held-out pairs, {max_length} tokens, read in {seconds:.0f} s"
    )
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).round(3).to_string(index=False))
    print(
        f"standard error of one held-out accuracy near 0.63 on {len(sets['test'])} pairs: "
        f"±{np.sqrt(0.63 * 0.37 / len(sets['test'])):.3f}"
    )


if __name__ == "__main__":
    main()
