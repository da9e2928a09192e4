import math

import pytest
import torch

from playbook.tensors import entropy_from_logits, logprobs_from_logits, pad_sequences, positions_from_mask


def test_pad_sequences_on_either_side():
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="no sequences"):
        pad_sequences([], pad_id=0)


def test_logprobs_and_entropy_at_a_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    # at temperature 2 the probabilities become ∝ sqrt(p): 0.4142, 0.2929, 0.2929
    weights = torch.tensor([0.5, 0.25, 0.25]).sqrt()
    probabilities = weights / weights.sum()
    got = logprobs_from_logits(logits, torch.tensor([0]), temperature=2.0)
    assert got.item() == pytest.approx(math.log(probabilities[0].item()), abs=1e-6)
    expected_entropy = -(probabilities * probabilities.log()).sum().item()
    assert entropy_from_logits(logits, temperature=2.0).item() == pytest.approx(expected_entropy, abs=1e-6)


def test_positions_from_mask_start_at_each_rows_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
