"""fastattn.nn.MultiheadAttention: torch's module, fastattn's attention kernels."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._convert import ConvertibleFromTorch


def _trailing_valid_lengths(key_padding_mask: Tensor) -> Tensor:
    # key_padding_mask: bool, True = key ignored
    """Per batch row, 1 + the index of the last key that may be attended.

    Keys beyond it are all padding, so the kernels skip their tiles; the mask
    itself still goes to the kernel for any padding before that point. This
    needs no data-dependent branch (no host sync, traceable).
    """
    s = key_padding_mask.shape[-1]
    valid = ~key_padding_mask
    positions = torch.arange(1, s + 1, device=key_padding_mask.device)
    return (valid * positions).amax(dim=-1).to(torch.int32)


def _as_allow_mask(mask: Tensor, query_dtype: torch.dtype) -> Tensor:
    """torch's MHA masks (bool: True = masked out; float: added) in fastattn's
    convention (bool: True = may attend; float: added)."""
    if mask.dtype == torch.bool:
        return ~mask
    if not mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool or floating point, got {mask.dtype}")
    return mask.to(query_dtype)


class MultiheadAttention(ConvertibleFromTorch, torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` running fastattn's attention.

    Same constructor, parameters, state_dict and forward signature. With
    ``need_weights=True`` the weights are computed by torch's own path (they
    require the full attention matrix anyway). Projections are sliced as
    views of one packed projection for self-attention, never copied.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        nested = isinstance(query, Tensor) and query.is_nested
        if not nested:
            self._check_inputs(query, key, value, key_padding_mask, attn_mask)
        # Head dims the kernels do not take (e.g. 8) go through torch's path,
        # so that swapping never breaks a model that runs under torch.
        if need_weights or nested or not _kernels_take_head_dim(self.head_dim):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._fast_forward(query, key, value, key_padding_mask, attn_mask, is_causal), None

    # ------------------------------------------------------------------
    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask) -> None:
        """torch's checks (which are asserts) as ValueError/TypeError naming
        the argument, before any projection runs."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if query.dim() not in (2, 3):
            raise ValueError(f"query must be 2-D (L, E) or 3-D, got shape {tuple(query.shape)}")
        for name, t, e in (("query", query, self.embed_dim), ("key", key, self.kdim),
                           ("value", value, self.vdim)):
            if t.dim() != query.dim():
                raise ValueError(f"{name} must have the rank of query ({query.dim()}), "
                                 f"got shape {tuple(t.shape)}")
            if t.shape[-1] != e:
                raise ValueError(f"{name} must have {e} features in its last dim, "
                                 f"got shape {tuple(t.shape)}")
        batched = query.dim() == 3
        b_dim = 0 if self.batch_first else 1
        n = query.shape[b_dim] if batched else None
        if batched and key.shape[b_dim] != n:
            raise ValueError(f"key must have the batch size of query ({n}), "
                             f"got shape {tuple(key.shape)}")
        if value.shape[:-1] != key.shape[:-1]:
            raise ValueError(f"value must match key in all but the last dim, "
                             f"got {tuple(value.shape)} and {tuple(key.shape)}")
        s = key.shape[1 - b_dim] if batched else key.shape[0]
        lq = query.shape[1 - b_dim] if batched else query.shape[0]
        if key_padding_mask is not None:
            expected = (n, s) if batched else (s,)
            if not isinstance(key_padding_mask, Tensor) or \
                    tuple(key_padding_mask.shape) != expected:
                raise ValueError(f"key_padding_mask must be a tensor of shape {expected}, "
                                 f"got {getattr(key_padding_mask, 'shape', key_padding_mask)}")
        if attn_mask is not None:
            allowed = [(lq, s)] + ([(n * self.num_heads, lq, s)] if batched else
                                   [(self.num_heads, lq, s)])
            if not isinstance(attn_mask, Tensor) or tuple(attn_mask.shape) not in allowed:
                raise ValueError(f"attn_mask must be a tensor of shape {allowed[0]} or "
                                 f"{allowed[1]}, got {getattr(attn_mask, 'shape', attn_mask)}")

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v in (N, L, E) from batch-first inputs."""
        e = self.embed_dim
        if self._qkv_same_embed_dim:
            w, b = self.in_proj_weight, self.in_proj_bias
            if query is key and key is value:
                qkv = F.linear(query, w, b)  # one GEMM; q/k/v are views of it
                return qkv[..., :e], qkv[..., e:2 * e], qkv[..., 2 * e:]
            bq, bkv = (b[:e], b[e:]) if b is not None else (None, None)
            q = F.linear(query, w[:e], bq)
            if key is value:
                kv = F.linear(key, w[e:], bkv)
                return q, kv[..., :e], kv[..., e:]
            bk, bv = (b[e:2 * e], b[2 * e:]) if b is not None else (None, None)
            return q, F.linear(key, w[e:2 * e], bk), F.linear(value, w[2 * e:], bv)
        b = self.in_proj_bias
        bq, bk, bv = (b[:e], b[e:2 * e], b[2 * e:]) if b is not None else (None, None, None)
        return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                F.linear(value, self.v_proj_weight, bv))

    def _batch_first(self, query: Tensor, key: Tensor, value: Tensor,
                     unbatched: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Views of the inputs as (N, L, E). Identity of the inputs is kept so
        that self-attention still takes the single packed projection."""
        if unbatched:
            def to_batch_first(t):
                return t.unsqueeze(0)
        elif not self.batch_first:
            def to_batch_first(t):
                return t.transpose(0, 1)
        else:
            return query, key, value
        same_kv = key is value
        same_qkv = query is key and same_kv
        query = to_batch_first(query)
        key = query if same_qkv else to_batch_first(key)
        value = key if same_kv else to_batch_first(value)
        return query, key, value

    def _fast_forward(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        from ..ops.attention import attention

        unbatched = query.dim() == 2
        if unbatched and key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
        query, key, value = self._batch_first(query, key, value, unbatched)

        n, lq, _ = query.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)

        # torch's is_causal hint (without a key padding mask) replaces
        # attn_mask by a top-left causal mask over all keys, bias_k and the
        # zero key included; anything else goes through the general mask path.
        causal_hint = is_causal and key_padding_mask is None
        mask = None
        if attn_mask is not None and not causal_hint:
            mask = _as_allow_mask(attn_mask, q.dtype)
            if mask.dim() == 3:  # (N * H, L, S)
                mask = mask.view(n, h, mask.shape[-2], mask.shape[-1])
        kpm = key_padding_mask
        if kpm is not None and kpm.dtype != torch.bool:
            if not kpm.is_floating_point():
                raise TypeError(f"key_padding_mask must be bool or floating point, got {kpm.dtype}")
            kpm = kpm.to(q.dtype)

        extra_keys = []
        if self.bias_k is not None:
            extra_keys.append((self.bias_k.expand(n, 1, -1), self.bias_v.expand(n, 1, -1)))
        if self.add_zero_attn:
            extra_keys.append((k.new_zeros(n, 1, k.shape[-1]), v.new_zeros(n, 1, v.shape[-1])))
        for extra_k, extra_v in extra_keys:
            # the appended key may be attended by every query, as in torch
            k, v = torch.cat([k, extra_k], dim=1), torch.cat([v, extra_v], dim=1)
            mask = _pad_allowed(mask)
            kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
        s = k.shape[1]

        causal = False
        if causal_hint:
            if s == lq:
                causal = True
            else:
                mask = torch.ones(lq, s, dtype=torch.bool, device=q.device).tril()

        kv_lengths = None
        if kpm is not None:
            valid = ~kpm if kpm.dtype == torch.bool else kpm != float("-inf")
            kv_lengths = _trailing_valid_lengths(~valid)
            kpm_allow = (~kpm if kpm.dtype == torch.bool else kpm).view(n, 1, 1, s)
            if mask is None:
                mask = kpm_allow
            elif mask.dtype == torch.bool and kpm_allow.dtype == torch.bool:
                mask = mask & kpm_allow
            else:
                mask = _to_additive(mask, q.dtype) + _to_additive(kpm_allow, q.dtype)

        # (N, L, E) -> (N, H, L, D): views with stride 1 in the last dim.
        q4 = q.view(n, lq, h, d).transpose(1, 2)
        k4 = k.view(n, s, h, d).transpose(1, 2)
        v4 = v.view(n, s, h, d).transpose(1, 2)
        out = attention(q4, k4, v4, causal=causal, attn_mask=mask, kv_lengths=kv_lengths,
                        dropout_p=self.dropout if self.training else 0.0,
                        backend=self.backend)
        out = out.transpose(1, 2).reshape(n, lq, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)


def _kernels_take_head_dim(d: int) -> bool:
    from ..ops.attention import MAX_HEAD_DIM, MIN_HEAD_DIM
    return MIN_HEAD_DIM <= d <= MAX_HEAD_DIM and d % 8 == 0


def _pad_allowed(mask: Optional[Tensor]) -> Optional[Tensor]:
    """Append one key column that every query may attend."""
    if mask is None:
        return None
    return F.pad(mask, (0, 1), value=True if mask.dtype == torch.bool else 0.0)


def _to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf"))
