"""Learner log-probs of sampled tokens: the learner side of every parity check and of the mismatch correction."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel,
    prompt_ids_BP: torch.Tensor,
    prompt_mask_BP: torch.Tensor,
    completion_ids_BT: torch.Tensor,
    completion_mask_BT: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(completion token | prefix) for each completion position, [B, T] fp32 (0 where masked).

    Prompts are left-padded and completions right-padded (TRL's layout); the model must ignore padded positions.
    """
    input_ids = torch.cat([prompt_ids_BP, completion_ids_BT], dim=1)
    attention_mask = torch.cat([prompt_mask_BP, completion_mask_BT], dim=1)
    T = completion_ids_BT.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=T + 1).logits[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, completion_ids_BT.unsqueeze(-1)).squeeze(-1) * completion_mask_BT
