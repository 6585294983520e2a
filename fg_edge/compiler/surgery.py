"""Small surgical functions on plain layers (Torch-Pruning style): keep some outputs / inputs of a linear,
resize one block's attention or FFN to given heads / channels, and the modules that stand in for an attention or
FFN left with nothing.

The same functions shrink a model after folding (with the plan's indices) and rebuild a compiled model from its
config (with any indices of the right count, the weights are loaded afterwards), so both give identical modules.
"""

from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

from fg_edge.arch import ArchSpec, HeadLayout, has_submodule
from fg_edge.errors import CompileError
from fg_edge.gates.layer import in_out_features, replace_module  # noqa: F401 (re-exported)

#: (kv heads, head dim) of the placeholder that an attention without heads writes into a KV cache per token.
#: A (B, 0, S, head_dim) tensor would be the honest shape, but transformers' DynamicLayer.get_seq_length
#: reports 0 for any cache with numel() == 0, which breaks positions and masks; one zero per token keeps the
#: cache length right at the least cost.
CACHE_PLACEHOLDER = (1, 1)


# -- linears -------------------------------------------------------------------------------------------------
def is_conv1d(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf")


def _param(data: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(data.contiguous(), requires_grad=like.requires_grad)


def _select(layer: nn.Module, idx, out: bool) -> nn.Module:
    """Keep output (`out`) or input features `idx` of an nn.Linear or Conv1D, in place. Conv1D stores (in, out)."""
    idx = torch.as_tensor(idx, dtype=torch.long, device=layer.weight.device)
    conv = is_conv1d(layer)
    if not conv and not isinstance(layer, nn.Linear):
        raise CompileError(f"cannot select {'outputs' if out else 'inputs'} of a {type(layer).__name__}")
    dim = (1 if conv else 0) if out else (0 if conv else 1)
    layer.weight = _param(layer.weight.data.index_select(dim, idx), layer.weight)
    size_attr = {(True, True): "nf", (True, False): "nx", (False, True): "out_features", (False, False): "in_features"}
    setattr(layer, size_attr[(conv, out)], int(idx.numel()))
    if out and layer.bias is not None:
        layer.bias = _param(layer.bias.data.index_select(0, idx), layer.bias)
    return layer


def select_out_(layer: nn.Module, idx: torch.Tensor) -> nn.Module:
    """Keep output features `idx` of an nn.Linear or Conv1D, in place (`prune_out_channels`)."""
    return _select(layer, idx, out=True)


def select_in_(layer: nn.Module, idx: torch.Tensor) -> nn.Module:
    """Keep input features `idx` of an nn.Linear or Conv1D, in place (`prune_in_channels`)."""
    return _select(layer, idx, out=False)


def head_channels(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """Feature indices of whole heads (never splits a head, so RoPE pairs stay together)."""
    if not len(heads):
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


# -- stand-ins for emptied modules ---------------------------------------------------------------------------
class BiasOnly(nn.Module):
    """A linear left with no inputs: returns its (folded) bias for every position, or zeros without one."""

    def __init__(self, out_features: int, bias: Optional[torch.Tensor]):
        super().__init__()
        self.out_features = out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_layer(cls, layer: nn.Module) -> "BiasOnly":
        return cls(in_out_features(layer)[1], layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"out_features={self.out_features}, bias={self.bias is not None}"


class ZeroWidth(nn.Module):
    """A linear left with no outputs: maps (..., in) to an empty (..., 0) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], 0)


class EmptyAttention(nn.Module):
    """The attention of a block whose heads were all removed; returns what the block expects back.

    style "context": (empty pre-projection context, None) — the block's own output projection (a BiasOnly) follows;
    style "single":  (out,) or (out, None) with output_attentions; style "pair": (out, None). `out` is the
    (folded) output-projection bias at every position. With a KV cache it appends CACHE_PLACEHOLDER-sized zeros
    per token so the cache length (positions, masks) stays right.
    """

    def __init__(self, style: str, out_name: Optional[str] = None, out_proj: Optional[nn.Module] = None,
                 layer_idx: Optional[int] = None, kv_cache: bool = False):
        super().__init__()
        if style not in ("context", "single", "pair"):
            raise CompileError(f"unknown attention return style {style!r}")
        self.style, self.out_name, self.layer_idx, self.kv_cache = style, out_name, layer_idx, kv_cache
        if out_proj is not None:
            self.add_module(out_name, out_proj)

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("query"))
        if self.kv_cache:
            self._append_placeholder(x, kwargs)
        empty = x.new_zeros(*x.shape[:-1], 0)
        if self.style == "context":
            return empty, None
        out = getattr(self, self.out_name)(empty)
        if self.style == "single":
            return (out, None) if kwargs.get("output_attentions") else (out,)
        return out, None

    def _append_placeholder(self, x: torch.Tensor, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values", kwargs.get("past_key_value"))
        if cache is None:
            return
        cache = getattr(cache, "self_attention_cache", cache)
        heads, dim = CACHE_PLACEHOLDER
        zeros = x.new_zeros(x.shape[0], heads, x.shape[1], dim)
        cache.update(zeros, zeros, self.layer_idx, {"cache_position": kwargs.get("cache_position")})

    def extra_repr(self) -> str:
        return f"style={self.style}, layer_idx={self.layer_idx}, kv_cache={self.kv_cache}"


# -- per-block resizing --------------------------------------------------------------------------------------
Keep = dict[str, tuple[Optional[torch.Tensor], Optional[torch.Tensor]]]   # {linear path: (kept rows, kept cols)}


def attention_keep(spec: ArchSpec, layout: HeadLayout, heads: Sequence[int], kv_heads: Sequence[int],
                   block: Optional[nn.Module] = None) -> Keep:
    """{linear path in block: (kept rows, kept cols)}; None = all. Empty attention: no q/k/v/o weight stays.
    With `block`, the spec's per-head extra linears present in it (DeBERTa's pos projections) keep `heads` too."""
    hd = layout.head_dim
    q_idx = head_channels(heads, hd)
    kv_idx = head_channels(kv_heads if len(heads) else [], hd)
    if spec.qkv:
        q_w, kv_w = layout.num_heads * hd, layout.num_kv_heads * hd
        keep = {spec.qkv: (torch.cat([q_idx, q_w + kv_idx, q_w + kv_w + kv_idx]), None)}
    else:
        keep = {spec.q: (q_idx, None), spec.k: (kv_idx, None), spec.v: (kv_idx, None)}
    keep[spec.o] = (None, q_idx)
    for path in spec.head_extra:
        if block is not None and has_submodule(block, path):
            keep[path] = (q_idx, None)
    return keep



def ffn_keep(spec: ArchSpec, channels: Sequence[int], ffn_size: int) -> Keep:
    """Kept rows of the FFN input projections (a fused GLU keeps `channels` of both halves) and kept columns of
    the output projection."""
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    rows = torch.cat([idx, ffn_size + idx]) if spec.ffn_fused else idx
    keep = {p: (rows, None) for p in spec.ffn_in}
    keep[spec.ffn_out] = (None, idx)
    return keep


def _apply_keep_(block: nn.Module, keep: Keep) -> None:
    for path, (rows, cols) in keep.items():
        layer = block.get_submodule(path)
        if rows is not None:
            select_out_(layer, rows)
        if cols is not None:
            select_in_(layer, cols)


def set_head_attrs_(attention: nn.Module, spec: ArchSpec, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
    """Update the head-count attributes that the attention forward reads (ArchSpec.head_attrs), and give the
    module its own copy of the config with this layer's head counts: some forwards read them from `self.config`
    (Phi-3 slices its fused qkv at config.num_attention_heads · head_dim)."""
    values = {"heads": num_heads, "width": num_heads * head_dim, "groups": num_heads // num_kv_heads,
              "kv_heads": num_kv_heads}
    for attr, kind in zip(spec.head_attrs, spec.head_attr_kinds, strict=True):
        if not hasattr(attention, attr):
            raise CompileError(f"{type(attention).__name__} has no attribute {attr!r} (architecture table entry "
                               f"{spec.family!r} is out of date for this transformers version)")
        setattr(attention, attr, values[kind])
    config = getattr(attention, "config", None)
    if config is not None and hasattr(config, "num_attention_heads"):
        own = copy.copy(config)
        own.num_attention_heads = num_heads
        if hasattr(config, "num_key_value_heads"):
            own.num_key_value_heads = num_kv_heads
        attention.config = own


def empty_attention_(block: nn.Module, spec: ArchSpec) -> EmptyAttention:
    """Replace the attention of `block` by an EmptyAttention keeping only the output-projection bias."""
    attention = block.get_submodule(spec.attention)
    out_proj = replace_module(block, spec.o, BiasOnly.from_layer(block.get_submodule(spec.o)))
    inside = spec.o.startswith(spec.attention + ".")
    out_name = spec.o[len(spec.attention) + 1:] if inside else None
    if inside and "." in out_name:
        raise CompileError(f"{spec.family}: output projection {spec.o!r} is nested inside {spec.attention!r}")
    empty = EmptyAttention(spec.attn_returns, out_name=out_name, out_proj=out_proj if inside else None,
                           layer_idx=getattr(attention, "layer_idx", None), kv_cache=spec.decoder)
    _carry_flags(attention, empty)
    return replace_module(block, spec.attention, empty)


def _carry_flags(old: nn.Module, new: nn.Module) -> None:
    """Plain attributes (bool / int / float / str / None) of the replaced attention that its block may read
    (Gemma 3's decoder layer asks `self_attn.is_sliding`); EmptyAttention's own attributes win."""
    for name, value in vars(old).items():
        if name.startswith("_") or name in vars(new) or name == "training":
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            setattr(new, name, value)


def resize_attention_(block: nn.Module, spec: ArchSpec, layout: HeadLayout, heads: Sequence[int],
                      kv_heads: Sequence[int]) -> None:
    """Keep query heads `heads` and kv heads `kv_heads` of one block (all gone: EmptyAttention)."""
    heads, kv_heads = list(heads), list(kv_heads)
    if not heads:
        empty_attention_(block, spec)
        return
    if not kv_heads or len(heads) % len(kv_heads):
        raise CompileError(f"{spec.family} block: {len(heads)} query heads cannot share {len(kv_heads)} kv heads "
                           f"evenly")
    if len(heads) == layout.num_heads and len(kv_heads) == layout.num_kv_heads:
        return
    _apply_keep_(block, attention_keep(spec, layout, heads, kv_heads, block))
    set_head_attrs_(block.get_submodule(spec.attention), spec, len(heads), len(kv_heads), layout.head_dim)


def resize_ffn_(block: nn.Module, spec: ArchSpec, channels: Sequence[int], ffn_size: int) -> None:
    """Keep FFN channels `channels` of one block (none left: input projections emit nothing, output = bias)."""
    channels = list(channels)
    if len(channels) == ffn_size:
        return
    if not channels:
        out = block.get_submodule(spec.ffn_out)
        for path in spec.ffn_in:
            replace_module(block, path, ZeroWidth())
        replace_module(block, spec.ffn_out, BiasOnly.from_layer(out))
        return
    _apply_keep_(block, ffn_keep(spec, channels, ffn_size))
