"""fastattn.nn.MultiheadAttention: torch's module, fastattn's attention kernels."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import has_torch_function

from .. import _log
from ..ops.attention import MAX_HEAD_DIM
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
    return mask.to(query_dtype)


class MultiheadAttention(ConvertibleFromTorch, torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` running fastattn's attention.

    Same constructor, parameters, state_dict and forward signature, and
    torch's semantics: its masks, its ``is_causal`` hint, its exceptions
    (AssertionError and RuntimeError where torch raises them). Torch itself
    computes what fastattn's kernels cannot, and the ``fastattn`` logger
    says so once per cause: ``need_weights=True`` (torch's default; the
    weights need the full attention matrix), nested tensors, tensor
    subclasses, head dims over 256. Projections are sliced as views of one
    packed projection for self-attention, never copied.
    """

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        why = self._torch_serves(query, key, value, key_padding_mask, attn_mask, need_weights)
        if why:
            _log.warn_once(f"mha:{why}", "fastattn.nn.MultiheadAttention: torch computes calls "
                           "with %s", why)
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        self._check_inputs(query, key, value, key_padding_mask, attn_mask, is_causal)
        return self._fast_forward(query, key, value, key_padding_mask, attn_mask, is_causal), None


    # ------------------------------------------------------------------
    def _torch_serves(self, query, key, value, key_padding_mask, attn_mask,
                      need_weights) -> str:
        """Why torch computes this call (empty: fastattn does)."""
        if need_weights:
            return ("need_weights=True (torch's default): the attention weights need the full "
                    "attention matrix; pass need_weights=False to run fastattn's kernels")
        tensors = (query, key, value, key_padding_mask, attn_mask)
        if not all(t is None or isinstance(t, Tensor) for t in tensors):
            return "arguments that are not tensors"
        if has_torch_function(tuple(t for t in tensors if t is not None)):
            return "tensor subclasses (torch dispatches them)"
        if query.is_nested or key.is_nested or value.is_nested:
            return "nested tensors"
        if self.head_dim > MAX_HEAD_DIM:
            return f"head dim {self.head_dim} (fastattn's kernels take up to {MAX_HEAD_DIM})"
        return ""

    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask, is_causal) -> None:
        """torch's checks, with torch's exception types and in torch's order,
        before any projection runs (torch.nn.functional.multi_head_attention_forward).
        Where torch fails only later (in a projection or a view), the same
        exception type, with a message that names the argument."""
        for name, m in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
            if m is not None and m.dtype != torch.bool and not m.is_floating_point():
                raise AssertionError(f"only bool and floating types of {name} are supported")
        if key_padding_mask is not None and attn_mask is not None \
                and key_padding_mask.dtype != attn_mask.dtype:
            warnings.warn("Support for mismatched key_padding_mask and attn_mask is "
                          "deprecated. Use same type for both instead.", stacklevel=3)
        # dims of query/key/value and the masks; raises AssertionError
        batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask,
                                     self.num_heads)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use "
                               "the Transformer module method `generate_square_subsequent_mask` "
                               "to create this mask.")
        for name, t in (("query", query), ("key", key), ("value", value)):
            if not t.is_floating_point():
                raise RuntimeError(f"{name} must be floating point (the projections' dtype), "
                                   f"got {t.dtype}")
        if query.shape[-1] != self.embed_dim:
            raise AssertionError(f"query: was expecting embedding dimension of "
                                 f"{self.embed_dim}, but got {query.shape[-1]}")
        if self._qkv_same_embed_dim and key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape "
                                 f"{value.shape}")
        if not self._qkv_same_embed_dim and key.shape[:-1] != value.shape[:-1]:
            raise AssertionError(f"key's sequence and batch dims {key.shape[:-1]} do not "
                                 f"match value's {value.shape[:-1]}")
        b_dim = 0 if self.batch_first else 1
        n = query.shape[b_dim] if batched else 1
        s = key.shape[1 - b_dim] if batched else key.shape[0]
        lq = query.shape[1 - b_dim] if batched else query.shape[0]
        if batched and key.shape[b_dim] != n:
            raise RuntimeError(f"key must have the batch size of query ({n}), "
                               f"got shape {tuple(key.shape)}")
        # torch drops attn_mask for the causal hint (no key padding mask)
        if attn_mask is not None and not (is_causal and key_padding_mask is None):
            if attn_mask.dim() == 2 and tuple(attn_mask.shape) != (lq, s):
                raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but "
                                   f"should be {(lq, s)}.")
            if attn_mask.dim() == 3 and tuple(attn_mask.shape) != (n * self.num_heads, lq, s):
                raise RuntimeError(f"The shape of the 3D attn_mask is {attn_mask.shape}, but "
                                   f"should be {(n * self.num_heads, lq, s)}.")
        if key_padding_mask is not None:
            expected = (n, s) if batched else (s,)
            if tuple(key_padding_mask.shape) != expected:
                raise AssertionError(f"expected shape of key_padding_mask to be {expected}, "
                                     f"but got {tuple(key_padding_mask.shape)}")

    def packed_self_attention(self, x: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> Tensor:
        """Self-attention of packed sequences x (T, E) (sequence b is rows
        cu_seqlens[b]:cu_seqlens[b + 1]), each attending only its own rows:
        what forward(x, x, x, key_padding_mask) gives a padded batch, at
        its valid tokens (swap_modules(unpad=True)). Needs the packed input
        projection and no bias_k / add_zero_attn."""
        from ..ops.attention_varlen import attention_varlen_with_own_seqlens

        if not self.can_pack():
            raise ValueError("packed_self_attention needs one input projection "
                             "(kdim = vdim = embed_dim) and no bias_k / add_zero_attn")
        h, d = self.num_heads, self.head_dim
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(x.shape[0], 3, h, d)
        out = attention_varlen_with_own_seqlens(
            qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
            dropout_p=self.dropout if self.training else 0.0, backend=self.backend)
        return self.out_proj(out.reshape(x.shape[0], self.embed_dim))

    def can_pack(self) -> bool:
        """Whether packed_self_attention serves this module."""
        return (self._qkv_same_embed_dim and self.bias_k is None and not self.add_zero_attn
                and self.head_dim <= MAX_HEAD_DIM)

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
        from ..ops.attention import attention_with_own_lengths

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
        out = attention_with_own_lengths(q4, k4, v4, causal=causal, attn_mask=mask,
                                         kv_lengths=kv_lengths,
                                         dropout_p=self.dropout if self.training else 0.0,
                                         backend=self.backend)
        out = out.transpose(1, 2).reshape(n, lq, self.embed_dim)
        out = self.out_proj(out)
        if unbatched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)


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
