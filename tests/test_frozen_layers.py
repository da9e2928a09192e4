"""The frozen-lower-layer cache gives exactly the numbers of full forward passes (it is built on transformers
internals, so this is the file that catches a release that changes them)."""

import pytest
import torch

from conftest import copies, value_model_like
from playbook.frozen_layers import (
    SharedTrunk,
    UpperLayers,
    first_trainable_layer,
    run_decoder_layers,
    shared_lower_layers,
    train_top_layers,
)


def left_padded_batch():
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[0, :3] = 0  # left padding
    return ids, attention, (attention.cumsum(1) - 1).clamp(min=0)


def test_train_top_layers_freezes_the_rest(tiny_causal_lm):
    train_top_layers(tiny_causal_lm, 1)
    trainable = {name for name, p in tiny_causal_lm.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.norm")) for name in trainable)
    assert first_trainable_layer(tiny_causal_lm) == 1
    with pytest.raises(ValueError, match=r"trainable layers=3: choose 1 to 2, or None"):
        train_top_layers(tiny_causal_lm, 3)


def test_shared_lower_layers_compare_weights(tiny_causal_lm):
    other, changed = copies(tiny_causal_lm, 2)
    assert shared_lower_layers(other, tiny_causal_lm, limit=2) == 2
    assert shared_lower_layers(other, tiny_causal_lm, limit=1) == 1
    assert shared_lower_layers(value_model_like(tiny_causal_lm), tiny_causal_lm, limit=2) == 2
    with torch.no_grad():
        changed.model.layers[1].mlp.up_proj.weight.add_(1e-3)
    assert shared_lower_layers(changed, tiny_causal_lm, limit=2) == 1
    with torch.no_grad():
        changed.model.embed_tokens.weight.add_(1e-3)
    assert shared_lower_layers(changed, tiny_causal_lm, limit=2) is None


def test_upper_layers_give_the_full_forward_pass(tiny_causal_lm):
    ids, attention, positions = left_padded_batch()
    with torch.no_grad():
        full = tiny_causal_lm(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        backbone = tiny_causal_lm.model
        hidden = run_decoder_layers(backbone, backbone.embed_tokens(ids), attention, positions, 0, 1)
        upper = UpperLayers(tiny_causal_lm, 1)(hidden, attention, positions, keep=4)
    torch.testing.assert_close(upper, full[:, -4:], rtol=0, atol=1e-6)


def test_shared_trunk_captures_each_models_start(tiny_causal_lm):
    ids, attention, positions = left_padded_batch()
    value = value_model_like(tiny_causal_lm)
    with torch.no_grad():
        value.model.embed_tokens.weight.add_(1.0)  # shares nothing: starts from its own embeddings
        trunk = SharedTrunk(tiny_causal_lm, {"policy": 1, "reference": 0, "value": None}, {"value": value})
        captured = trunk(ids, attention, positions)
        states = tiny_causal_lm.model(
            input_ids=ids, attention_mask=attention, position_ids=positions, output_hidden_states=True
        ).hidden_states
    torch.testing.assert_close(captured["reference"], states[0], rtol=0, atol=0)
    torch.testing.assert_close(captured["policy"], states[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(captured["value"], value.model.embed_tokens(ids), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"models \['value'\] share no layers"):
        SharedTrunk(tiny_causal_lm, {"value": None}, {})
