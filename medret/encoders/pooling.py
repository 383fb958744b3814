"""Pool token vectors into one vector per text."""
from __future__ import annotations

from typing import TYPE_CHECKING

from medret.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def pool(last_hidden_state: "torch.Tensor", attention_mask: "torch.Tensor", method: str) -> "torch.Tensor":
    """Pool ``last_hidden_state`` (batch, seq, dim) to (batch, dim) in float32.

    * ``cls``: the first token's vector (BERT's [CLS]), as MedCPT and SPECTER use it.
    * ``mean``: the average over the non-padding tokens (``attention_mask`` 1), as Contriever and e5 use it.
      The sum is taken in float32 so fp16 activations do not overflow.
    """
    if method == "cls":
        return last_hidden_state[:, 0].float()
    if method == "mean":
        mask = attention_mask.unsqueeze(-1).float()
        summed = (last_hidden_state.float() * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1.0)
        return summed / counts
    raise ConfigError(f"pooling={method!r} is invalid: use 'cls' or 'mean'")


def l2_normalize(x: "torch.Tensor", eps: float = 1e-12) -> "torch.Tensor":
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)
