"""Training objective: label-smoothed cross-entropy per target token, optionally with R-Drop
(Liang et al., 2021): each batch runs twice under different dropout masks, and the symmetric KL
between the two predicted distributions is added, which regularises small-data models."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, pad_id: int, smoothing: float) -> torch.Tensor:
    """logits (B, T, V), target (B, T) -> summed over non-pad tokens, in fp32."""
    return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=pad_id,
                           label_smoothing=smoothing, reduction="sum")


def symmetric_kl_sum(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(KL(a||b) + KL(b||a)) / 2 per token, summed where mask (B, T) is true."""
    lp_a, lp_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    kl = (F.kl_div(lp_b, lp_a, log_target=True, reduction="none")
          + F.kl_div(lp_a, lp_b, log_target=True, reduction="none")).sum(-1)
    return 0.5 * (kl * mask).sum()


def objective(module: torch.nn.Module, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, pad_id: int,
              smoothing: float, rdrop_alpha: float, amp: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, cross-entropy to report), both summed over the batch's target tokens.
    amp: the model runs under autocast to this dtype (the loss in fp32)."""
    autocast = torch.autocast(src.device.type, dtype=amp, enabled=amp is not None)
    if rdrop_alpha == 0:
        with autocast:
            logits = module(src, tgt_in)
        ce = cross_entropy_sum(logits, tgt_out, pad_id, smoothing)
        return ce, ce.detach()
    # One forward over the batch stacked twice: both passes see the same data, different dropout.
    with autocast:
        logits_a, logits_b = module(torch.cat([src, src]), torch.cat([tgt_in, tgt_in])).chunk(2)
    ce = 0.5 * (cross_entropy_sum(logits_a, tgt_out, pad_id, smoothing) + cross_entropy_sum(logits_b, tgt_out, pad_id, smoothing))
    kl = symmetric_kl_sum(logits_a, logits_b, tgt_out != pad_id)
    return ce + rdrop_alpha * kl, ce.detach()
