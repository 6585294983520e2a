"""The general path: derive an `ArchSpec` from a model's config and module tree, and check any spec on a model.

Derivation follows the usual Hugging Face layout (docs/DESIGN.md §3, "Architectures"):

* the blocks are the `nn.ModuleList` under the backbone with `num_hidden_layers` entries;
* attention: separate q / k / v linears with a common parent (the attention module), or one fused
  [q | k | v] linear of a known name (`qkv_proj`, `Wqkv`, `c_attn`, `W_pack`); the output projection is the
  `o_proj`-like linear nearest to them that maps heads·head_dim back to the hidden size;
* FFN: of the other linears, the one mapping back to the hidden size is the output projection, those reading the
  hidden size and writing its input width are the input projections (two: a GLU; one of twice the width: a
  fused GLU); the activation is an `act`-named child of the FFN module (checked numerically by the planner);
* head-count attributes of the attention module are found by name and value.

Every module is then checked on every block (`check_spec`, for table entries too): a module that is missing or
whose shape disagrees with the head layout of the config raises UnsupportedArchitectureError naming it.
Whatever the spec, the compiler's parity gate compares the result with the gated model before anything is written.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from fg_edge.arch import ArchSpec, get_submodule, has_submodule, head_layout, layers_of
from fg_edge.errors import UnsupportedArchitectureError

log = logging.getLogger(__name__)

_Q = ("q_proj", "query", "q_lin", "query_proj", "wq", "q", "to_q")
_K = ("k_proj", "key", "k_lin", "key_proj", "wk", "k", "to_k")
_V = ("v_proj", "value", "v_lin", "value_proj", "wv", "v", "to_v")
#: fused projections whose rows are [all q heads | all k heads | all v heads] (interleaved layouts such as
#: GPT-NeoX / Falcon `query_key_value` are not derived: their row order differs per model)
_QKV = ("qkv_proj", "Wqkv", "c_attn", "W_pack", "qkv")
_O = ("o_proj", "out_proj", "dense", "c_proj", "Wo", "out_lin", "wo", "o", "to_out", "proj", "out")
_GATE = ("gate_proj", "gate", "w1", "wi_0", "fc_gate", "gate_up_proj", "Wi")
_DOWN = ("down_proj", "fc2", "c_proj", "lin2", "dense", "w2", "wo", "Wo", "dense_4h_to_h", "fc_out", "out_proj")
_ACT = ("act", "act_fn", "activation", "activation_fn", "intermediate_act_fn", "act_func", "hidden_act")
_WIDTH = ("all_head_size", "inner_dim", "embed_dim", "split_size", "dim", "hidden_size", "inner_size",
          "projection_size", "d_model")
HINT = ("Name the modules yourself: a JSON file {model_type: {spec fields}} named by $FG_EDGE_ARCH_SPECS, or "
        "fg_edge.arch.register_architecture(model_type, ...) (the fields of fg_edge.arch.ArchSpec; "
        "{\"like\": \"llama\", ...} starts from a table entry); or gate linears by name with `--granularity "
        "paper --target-modules a,b` (compile then folds the gates exactly and removes nothing it cannot prove "
        "removable)")


def _fail(model: nn.Module, what: str, derived: bool = True) -> UnsupportedArchitectureError:
    from fg_edge.arch import ARCHITECTURES

    model_type = getattr(model.config, "model_type", None)
    if derived:
        where = (f"model_type {model_type!r} is not in fg-edge's architecture table "
                 f"({', '.join(sorted(ARCHITECTURES))}) and no spec could be derived from its module tree: ")
    else:
        where = f"model_type {model_type!r}: "
    return UnsupportedArchitectureError(f"{where}{what}. {HINT}")


def plain(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def is_linear(module: nn.Module) -> bool:
    m = plain(module)
    return isinstance(m, nn.Linear) or (type(m).__name__ == "Conv1D" and hasattr(m, "nf"))


def dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) of an nn.Linear / Conv1D (stored (in, out)), gated or not."""
    m = plain(module)
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return int(m.weight.shape[0]), int(m.weight.shape[1])


def _last(path: str) -> str:
    return path.rpartition(".")[2]


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _linears(block: nn.Module) -> dict[str, nn.Module]:
    out = {}
    for name, m in block.named_modules():
        if name and is_linear(m) and not name.endswith(".base_layer"):
            out[name] = m
    return out


# -- derivation -----------------------------------------------------------------------------------------------
def _find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    n = getattr(model.config, "num_hidden_layers", None)
    for name, m in model.base_model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and len(m) == n and len({type(b) for b in m}) == 1:
            return name, m
    raise _fail(model, f"no nn.ModuleList of num_hidden_layers = {n} identical blocks under "
                       f"{type(model.base_model).__name__}")


def _find_qkv(model, lin: dict, nq: int, nkv: int, hd: int, hidden: int) -> dict:
    named = lambda names: [p for p in lin if _last(p) in names]  # noqa: E731
    qs, ks, vs = named(_Q), named(_K), named(_V)
    for q in qs:
        k = [p for p in ks if _parent(p) == _parent(q)]
        v = [p for p in vs if _parent(p) == _parent(q)]
        if k and v:
            return {"q": q, "k": k[0], "v": v[0], "qkv": None, "attention": _parent(q)}
    fused = [p for p in named(_QKV) if dims(lin[p]) == (hidden, (nq + 2 * nkv) * hd)]
    if fused:
        return {"q": None, "k": None, "v": None, "qkv": fused[0], "attention": _parent(fused[0])}
    raise _fail(model, f"block 0 has no q/k/v linears (names {list(_Q[:3])}...) with a common parent, nor a fused "
                       f"[q|k|v] linear ({', '.join(_QKV)}) of {hidden} -> ({nq}+2·{nkv})·{hd} features; "
                       f"linears found: {sorted(lin)}")


def _find_o(model, lin: dict, attn: dict, nq: int, hd: int, hidden: int) -> str:
    taken = {attn["q"], attn["k"], attn["v"], attn["qkv"]}
    cands = [p for p in lin if p not in taken and _last(p) in _O and dims(lin[p]) == (nq * hd, hidden)]
    if not cands:
        raise _fail(model, f"block 0 has no attention output projection ({', '.join(_O[:4])}...) of {nq}·{hd} -> "
                           f"{hidden} features next to {attn['attention'] or 'the block'}")
    return max(cands, key=lambda p: _common(p, attn["attention"]))


def _gate_first(paths: list[str]) -> tuple[list[str], bool]:
    gates = [p for p in paths if _last(p) in _GATE or "gate" in _last(p).lower()]
    if len(gates) == 1:
        return gates + [p for p in paths if p != gates[0]], True
    return paths, False


def _find_ffn(model, lin: dict, taken: set, hidden: int) -> dict:
    rest = {p: m for p, m in lin.items() if p not in taken}
    outs = [p for p, m in rest.items() if dims(m)[1] == hidden]
    if len(outs) > 1:   # e.g. intermediate_size == hidden_size: the output projection is the down-named one
        outs = [p for p in outs if _last(p) in _DOWN] or outs
    if len(outs) != 1:
        raise _fail(model, f"block 0 has {len(outs)} linears besides the attention that write the hidden size "
                           f"{hidden} ({sorted(outs)}); the usual layout has one FFN output projection")
    out = outs[0]
    width = dims(rest[out])[0]
    ins = [p for p, m in rest.items() if dims(m) == (hidden, width)]
    fused = [p for p, m in rest.items() if dims(m) == (hidden, 2 * width)]
    if len(ins) in (1, 2) and not fused:
        order, known = _gate_first(ins)
        return {"ffn_in": tuple(order), "ffn_out": out, "glu": len(ins) == 2, "ffn_fused": False,
                "glu_order_known": known or len(ins) == 1}
    if len(fused) == 1 and not ins:
        return {"ffn_in": (fused[0],), "ffn_out": out, "glu": True, "ffn_fused": True,
                "glu_order_known": _last(fused[0]) in _GATE}
    raise _fail(model, f"FFN output {out!r} reads {width} channels, but block 0 has {len(ins)} linears of {hidden} -> "
                       f"{width} ({sorted(ins)}) and {len(fused)} of {hidden} -> 2·{width}; the usual layout has one, "
                       f"two (GLU) or one fused GLU (mixture-of-experts FFNs are not derived)")


def _find_act(block: nn.Module, ffn_in: str) -> Optional[str]:
    parent = _parent(ffn_in)
    owner = get_submodule(block, parent)
    for name, child in owner.named_children():
        if name in _ACT or "act" in name.lower():
            if not any(True for _ in child.parameters()):
                return f"{parent}.{name}" if parent else name
    return None


def _head_attrs(attention: nn.Module, nq: int, nkv: int, hd: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    attrs, kinds = [], []
    for name, value in vars(attention).items():
        if not isinstance(value, int) or isinstance(value, bool) or name.startswith("_"):
            continue
        low = name.lower()
        if "group" in low and nq // nkv == value:
            kind = "groups"
        elif ("kv" in low or "key_value" in low) and "head" in low and value == nkv:
            kind = "kv_heads"
        elif "head" in low and not any(s in low for s in ("dim", "size", "idx")) and value == nq:
            kind = "heads"
        elif name in _WIDTH and value == nq * hd:
            kind = "width"
        else:
            continue
        attrs.append(name)
        kinds.append(kind)
    return tuple(attrs), tuple(kinds)


def _probe_returns(model: nn.Module, attention: nn.Module) -> str:
    """"pair" or "single": what the attention module returns, seen on one 2-token forward."""
    seen = []
    handle = attention.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        ids = torch.tensor([[1, 2]], device=next(model.parameters()).device)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as exc:  # noqa: BLE001 - any failure here only means: fall back to the usual convention
        log.debug("attention probe failed (%s: %s)", type(exc).__name__, exc)
    finally:
        handle.remove()
    if seen and isinstance(seen[0], tuple) and len(seen[0]) == 1:
        return "single"
    return "pair"


def _per_head_params(attention: nn.Module, path: str, linears: set, nq: int, hd: int) -> str:
    """Why heads cannot be cut: an attention parameter outside the sliced linears with one entry per head (a
    norm over all heads, as OLMo-2's q_norm, or per-head sinks); "" when there is none."""
    for name, p in attention.named_parameters():
        owner = name.rpartition(".")[0]
        if any(owner == lp or owner.startswith(lp + ".") for lp in linears):
            continue
        if (nq != hd and nq in p.shape) or nq * hd in p.shape:
            return (f"attention parameter {path}.{name} of shape {tuple(p.shape)} spans the heads ({nq} heads of "
                    f"dim {hd}), and fg-edge does not know how to cut it")
    return ""


def derive_spec(model: nn.Module) -> ArchSpec:
    """An ArchSpec for a model whose type is not in the table (UnsupportedArchitectureError when the module tree
    does not follow the usual layout; the message names what did not fit)."""
    from fg_edge.arch import model_kind

    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        raise _fail(model, "encoder-decoder models are not derived (one stack of blocks: encoder-only or decoder-only)")
    missing = [a for a in ("hidden_size", "num_attention_heads", "num_hidden_layers")
               if not isinstance(getattr(config, a, None), int)]
    if missing:
        raise _fail(model, f"its config has no integer {', '.join(missing)} (or an attribute_map entry for it)")
    layers_path, blocks = _find_layers(model)
    block = blocks[0]
    probe = ArchSpec(family="?", layers=layers_path, attention="", q=None, k=None, v=None, qkv=None, o="",
                     ffn_in=(), ffn_out="", head_attrs=(), gqa=True)
    layout = head_layout(config, probe)
    nq, nkv, hd, hidden = layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.hidden_size
    lin = _linears(block)
    attn = _find_qkv(model, lin, nq, nkv, hd, hidden)
    o = _find_o(model, lin, attn, nq, hd, hidden)
    attn_path = attn["attention"]
    extra = tuple(p for p, m in lin.items() if p not in attn.values() and p != o and attn_path
                  and p.startswith(attn_path + ".") and dims(m) == (hidden, nq * hd))
    ffn = _find_ffn(model, lin, {attn["q"], attn["k"], attn["v"], attn["qkv"], o, *extra}, hidden)
    attention = get_submodule(block, attn_path)
    heads, kinds = _head_attrs(attention, nq, nkv, hd)
    slices = {p for p in (attn["q"], attn["k"], attn["v"], attn["qkv"], o, *extra) if p}
    fixed = _per_head_params(attention, attn_path, {p[len(attn_path) + 1:] if attn_path else p for p in slices},
                             nq, hd)
    inside = bool(attn_path) and o.startswith(attn_path + ".")
    decoder = model_kind(model) == "causal-lm"      # only a causal LM's attention appends to a KV cache
    spec = ArchSpec(
        family=str(getattr(config, "model_type", "unknown")), layers=layers_path, attention=attn_path,
        q=attn["q"], k=attn["k"], v=attn["v"], qkv=attn["qkv"], o=o, ffn_in=ffn["ffn_in"], ffn_out=ffn["ffn_out"],
        head_attrs=heads, head_attr_kinds=kinds, conv1d=not isinstance(plain(lin[o]), nn.Linear),
        gqa=True, rope=getattr(config, "rope_theta", None) is not None, decoder=decoder,
        ffn_act=_find_act(block, ffn["ffn_in"][0]), glu=ffn["glu"], ffn_fused=ffn["ffn_fused"],
        glu_order_known=ffn["glu_order_known"], head_extra=extra, heads_fixed=fixed,
        attn_returns=_probe_returns(model, attention) if inside else "context", source="derived")
    log.info("derived architecture spec: %s", spec.describe())
    return spec


# -- checking -------------------------------------------------------------------------------------------------
def _expected(spec: ArchSpec, layout, ffn: int) -> dict[str, tuple[int, int]]:
    nq, nkv, hd, hidden = layout.num_heads, layout.num_kv_heads, layout.head_dim, layout.hidden_size
    if spec.qkv:
        want = {spec.qkv: (hidden, (nq + 2 * nkv) * hd)}
    else:
        want = {spec.q: (hidden, nq * hd), spec.k: (hidden, nkv * hd), spec.v: (hidden, nkv * hd)}
    want[spec.o] = (nq * hd, hidden)
    for p in spec.ffn_in:
        want[p] = (hidden, 2 * ffn if spec.ffn_fused else ffn)
    want[spec.ffn_out] = (ffn, hidden)
    return want


def check_spec(model: nn.Module, spec: ArchSpec) -> None:
    """Every module of `spec` exists in every block of `model` with the shape the config's head layout implies."""
    def fail(what: str) -> UnsupportedArchitectureError:
        return _fail(model, what, derived=False)

    try:
        blocks = layers_of(model, spec)
    except AttributeError:
        raise fail(f"{spec.family} spec: no layer list {spec.layers!r} under {type(model.base_model).__name__}") \
            from None
    lay = head_layout(model.config, spec)
    if lay.num_heads % lay.num_kv_heads:
        raise fail(f"{lay.num_heads} query heads do not split into {lay.num_kv_heads} kv heads")
    for i, block in enumerate(blocks):
        where = f"{spec.family} spec, layer {i}"
        try:
            attention = get_submodule(block, spec.attention)
            mods = {p: block.get_submodule(p) for p in spec.linear_names()}
        except AttributeError as exc:
            raise fail(f"{where}: module missing ({exc})") from None
        bad = [p for p, m in mods.items() if not is_linear(m)]
        if bad:
            raise fail(f"{where}: {bad[0]} is a {type(mods[bad[0]]).__name__}, not a linear")
        want = _expected(spec, lay, dims(mods[spec.ffn_out])[0])
        for p in spec.head_extra:
            if has_submodule(block, p):
                want[p] = (lay.hidden_size, lay.num_heads * lay.head_dim)
                mods[p] = block.get_submodule(p)
        for p, shape in want.items():
            if dims(mods[p]) != shape:
                raise fail(f"{where}: {p} maps {dims(mods[p])[0]} -> {dims(mods[p])[1]} features, the head layout "
                           f"({lay.num_heads} heads, {lay.num_kv_heads} kv heads, head_dim {lay.head_dim}, hidden "
                           f"{lay.hidden_size}) needs {shape[0]} -> {shape[1]}")
        missing = [a for a in spec.head_attrs if not hasattr(attention, a)]
        if missing:
            raise fail(f"{where}: {type(attention).__name__} has no attribute {missing[0]!r} (the spec is out of "
                       f"date for this transformers version)")

