"""flash-attn 2.8.3's ``bert_padding`` helpers (pure torch in the real package too), with the same signatures."""

import torch
import torch.nn.functional as F


def index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """tensor [N, ...] -> tensor[indices] (the real one is an autograd Function with the same result)."""
    return tensor[indices]


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """hidden_states [B, L, ...], attention_mask [B, L] (1 = token) ->
    (tokens [nnz, ...], indices [nnz], cu_seqlens [B + 1] int32, max_seqlen int, used_seqlens [B] int32)."""
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = seqlens_in_batch.max().item()
    cu_seqlens = F.pad(torch.cumsum(seqlens_in_batch, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return flat[indices], indices, cu_seqlens, max_seqlen_in_batch, used_seqlens_in_batch


def pad_input(hidden_states, indices, batch, seqlen):
    """tokens [nnz, ...] back to [batch, seqlen, ...] with zeros where there was padding."""
    output = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    output[indices] = hidden_states
    return output.view(batch, seqlen, *hidden_states.shape[1:])
