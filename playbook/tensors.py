"""Tensor helpers every trainer and evaluator shares: padding token-id lists into a batch, statistics over the
valid (unpadded) entries of a batch, and log-probabilities and entropies from logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, *, side: Literal["left", "right"] = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one ``[batch, longest]`` batch and its attention mask (1 on real tokens).

    ``side="left"`` puts the padding in front, so every row ends at the last position (what generation needs);
    ``"right"`` puts it behind (what scoring whole sequences needs).
    """
    if not sequences:
        raise ValueError("pad_sequences: no sequences to pad.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        ids[row, span] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, as ``generate`` numbers them: 0 at each row's first real token (padding
    gets 0 too; it is masked out)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over everything, or along ``dim``); 0 where nothing is valid."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries (with Bessel's correction by default)."""
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased and count > 1:
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Standardise ``values`` with the mean and variance of the valid entries; invalid entries become 0."""
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under ``logits / temperature`` (``[..., vocab]``), gathered for each token."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(log_probs, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of the distribution given by ``logits / temperature`` at each position."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)
