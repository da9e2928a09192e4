"""Run the frozen lower layers of a decoder once, and the trainable upper layers as often as needed.

On a CPU only the top few decoder layers of a policy train; the layers below never change. So a rollout runs the
frozen layers once, keeps the hidden states where the trainable layers start, and every later pass (log-probs,
values, every PPO epoch) starts from there. Another model that shares those lower layers weight for weight (the
frozen reference, or a value model built on the same backbone) starts from the same hidden states.

The pieces work on Llama-style backbones (``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``) and call the
decoder layers the way the backbone's own forward pass does (same causal mask and rotary positions), so the
numbers are exactly those of a full forward pass (``tests/test_frozen_layers.py``). They rely on transformers'
internals (``create_causal_mask``): that test is the one to read when a transformers release breaks them.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_causal_mask


def train_top_layers(model: PreTrainedModel, layers: int | None) -> None:
    """Freeze everything but the top ``layers`` decoder layers, the final norm and any classification head.

    Gradients then stop at the lowest trainable layer, so a backward pass costs a fraction of a full one; with
    ``None`` every weight trains. (Tied input and output embeddings stay frozen with the embeddings.)
    """
    if layers is None:
        return
    backbone = model.base_model
    if not 0 < layers <= len(backbone.layers):
        raise ValueError(f"trainable layers={layers}: choose 1 to {len(backbone.layers)}, or None for every layer.")
    model.requires_grad_(False)
    for module in [*backbone.layers[len(backbone.layers) - layers :], backbone.norm, getattr(model, "score", None)]:
        if module is not None:
            module.requires_grad_(True)


def first_trainable_layer(model: PreTrainedModel) -> int:
    """Index of the lowest decoder layer with a trainable weight (the layer count if none trains)."""
    layers = model.base_model.layers
    return next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), len(layers))


def shared_lower_layers(model: PreTrainedModel, other: PreTrainedModel, limit: int) -> int | None:
    """How many of ``model``'s bottom decoder layers (at most ``limit``) are ``other``'s, weight for weight.

    ``None`` when even the input embeddings differ: then ``model`` cannot start from ``other``'s hidden states.
    """

    def same(a: nn.Module, b: nn.Module) -> bool:
        ours, theirs = list(a.parameters()), list(b.parameters())
        return len(ours) == len(theirs) and all(
            x.shape == y.shape and torch.equal(x, y.to(x.device)) for x, y in zip(ours, theirs, strict=True)
        )

    ours, theirs = model.base_model, other.base_model
    if not same(ours.embed_tokens, theirs.embed_tokens):
        return None
    depth = 0
    while depth < min(limit, len(ours.layers), len(theirs.layers)) and same(ours.layers[depth], theirs.layers[depth]):
        depth += 1
    return depth


def shared_trunk_depth(model: PreTrainedModel, other: PreTrainedModel) -> int | None:
    """How many bottom decoder layers two models can run once for both: those they share weight for weight
    (:func:`shared_lower_layers`), if both are Llama-style and on one device; ``None`` when there are none."""
    backbones = (model.base_model, other.base_model)
    if not all(hasattr(b, name) for b in backbones for name in ("embed_tokens", "layers", "rotary_emb", "norm")):
        return None
    if model.device != other.device:
        return None
    return shared_lower_layers(model, other, len(model.base_model.layers)) or None


def run_decoder_layers(
    backbone: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    start: int = 0,
    stop: int | None = None,
) -> torch.Tensor:
    """Decoder layers ``start:stop`` of a Llama-style backbone applied to ``hidden``, the input of layer ``start``:
    the same causal mask and rotary positions as the backbone's own forward pass."""
    # no cache; passed by position, since transformers 5.24 renamed that argument from past_key_values to cache
    mask = create_causal_mask(backbone.config, hidden, attention_mask, None, position_ids=position_ids)
    rotary = backbone.rotary_emb(hidden, position_ids=position_ids)
    for layer in backbone.layers[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
    return hidden


def next_token_logits_from_layer(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    start: int,
    where: torch.Tensor,
) -> torch.Tensor:
    """``model``'s next-token logits from ``hidden``, the input of its decoder layer ``start``, at the positions
    ``where`` marks (``[batch, length - 1]``: position t predicts token t + 1), one row per marked position in reading
    order (as :func:`playbook.models.next_token_logits_at`, from a layer instead of the token ids)."""
    backbone = model.base_model
    hidden = backbone.norm(run_decoder_layers(backbone, hidden, attention_mask, position_ids, start))
    return model.get_output_embeddings()(hidden[:, :-1][where])


class UpperLayers(nn.Module):
    """A model from decoder layer ``start`` up: hidden states at that layer in, head outputs of the last ``keep``
    positions out (next-token logits for a language model, one value each for a classification model)."""

    def __init__(self, model: PreTrainedModel, start: int) -> None:
        super().__init__()
        self.model, self.start = model, start

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, keep: int
    ) -> torch.Tensor:
        backbone = self.model.base_model
        hidden = run_decoder_layers(backbone, hidden, attention_mask, position_ids, self.start)
        head = getattr(self.model, "score", None) or self.model.get_output_embeddings()
        return head(backbone.norm(hidden)[:, -keep:])


class SharedTrunk:
    """One pass through ``trunk``'s frozen lower layers, captured where each model's own layers start.

    ``starts`` maps a model's name to the decoder layer it starts from (it shares ``trunk``'s layers below), or to
    ``None`` when it shares nothing and starts from its own embeddings (``models`` then holds it).
    """

    def __init__(
        self, trunk: PreTrainedModel, starts: dict[str, int | None], models: dict[str, PreTrainedModel]
    ) -> None:
        missing = [name for name, start in starts.items() if start is None and name not in models]
        if missing:
            raise ValueError(f"SharedTrunk: models {missing} share no layers and need their own model in `models`.")
        self.trunk, self.starts, self.models = trunk, starts, models

    @torch.no_grad()
    def __call__(
        self, ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        backbone = self.trunk.base_model
        hidden, depth, captured = backbone.embed_tokens(ids), 0, {}
        for name, start in sorted(((n, s) for n, s in self.starts.items() if s is not None), key=lambda x: x[1]):
            hidden = run_decoder_layers(backbone, hidden, attention_mask, position_ids, depth, start)
            captured[name], depth = hidden, start
        for name in (n for n, s in self.starts.items() if s is None):
            captured[name] = self.models[name].base_model.embed_tokens(ids)
        return captured
