"""The per-layer shape record of a compiled model, and rebuilding those shapes on a freshly built HF model.

One dict per block, in order, stored in config.json under `fg_edge_layers`:

    {"num_heads": 5, "num_kv_heads": 1, "head_dim": 64, "ffn_size": 803, "attention": "standard", "ffn": "standard",
     "kv_cache": {"num_heads": 1, "head_dim": 64}}            # decoders only: what the block appends per token

`attention` is "empty" when every head went (an EmptyAttention returning the output-projection bias; decoders
then cache a (1 head, dim 1) zero placeholder per token, see surgery.CACHE_PLACEHOLDER); `ffn` is "empty" when
every channel went (output = the folded output bias). The global config values (num_attention_heads, …) stay
those of the original model: runtimes, exporters and reloading must follow this record.
"""

from __future__ import annotations

from torch import nn

from fg_edge.arch import ArchSpec, head_layout, layers_of
from fg_edge.errors import CompileError
from fg_edge.formats.names import LAYERS_KEY
from fg_edge.compiler.plan import CompilePlan
from fg_edge.compiler.surgery import CACHE_PLACEHOLDER, resize_attention_, resize_ffn_

_REQUIRED = ("num_heads", "num_kv_heads", "head_dim", "ffn_size")


def layer_shapes(plan: CompilePlan, spec: ArchSpec) -> list[dict]:
    """The shape record of the model that `plan` compiles to."""
    records = []
    for lp in plan.layers:
        heads, kv = len(lp.kept_heads), len(lp.kept_kv_heads)
        rec = {"num_heads": heads, "num_kv_heads": kv, "head_dim": lp.head_dim, "ffn_size": len(lp.kept_ffn),
               "attention": "standard" if heads else "empty", "ffn": "standard" if lp.kept_ffn else "empty"}
        if spec.decoder:
            cache_heads, cache_dim = (kv, lp.head_dim) if heads else CACHE_PLACEHOLDER
            rec["kv_cache"] = {"num_heads": cache_heads, "head_dim": cache_dim}
        records.append(rec)
    return records


def _check_record(i: int, rec: dict, layout, ffn_size: int) -> None:
    missing = [k for k in _REQUIRED if not isinstance(rec.get(k), int)]
    if missing:
        raise CompileError(f"{LAYERS_KEY}[{i}]: missing or non-integer {', '.join(missing)}")
    if rec["head_dim"] != layout.head_dim:
        raise CompileError(f"{LAYERS_KEY}[{i}]: head_dim {rec['head_dim']} differs from the config's {layout.head_dim}")
    limits = (("num_heads", layout.num_heads), ("num_kv_heads", layout.num_kv_heads), ("ffn_size", ffn_size))
    for key, limit in limits:
        if not 0 <= rec[key] <= limit:
            raise CompileError(f"{LAYERS_KEY}[{i}]: {key} {rec[key]} outside [0, {limit}]")
    if rec["num_heads"] and (not rec["num_kv_heads"] or rec["num_heads"] % rec["num_kv_heads"]):
        raise CompileError(f"{LAYERS_KEY}[{i}]: {rec['num_heads']} query heads cannot share "
                           f"{rec['num_kv_heads']} kv heads evenly")


def apply_layer_shapes_(model: nn.Module, shapes: list[dict], spec: ArchSpec) -> nn.Module:
    """Resize every block of a model built from the original config to the record (weights to be loaded)."""
    layout = head_layout(model.config, spec)
    blocks = layers_of(model, spec)
    if len(shapes) != len(blocks):
        raise CompileError(f"{LAYERS_KEY} has {len(shapes)} entries, the model has {len(blocks)} layers")
    for i, (rec, block) in enumerate(zip(shapes, blocks)):
        ffn_size = block.get_submodule(spec.ffn_out).weight.shape[0 if spec.conv1d else 1]
        _check_record(i, rec, layout, ffn_size)
        resize_ffn_(block, spec, range(rec["ffn_size"]), ffn_size)
        resize_attention_(block, spec, layout, range(rec["num_heads"]), range(rec["num_kv_heads"]))
    return model
