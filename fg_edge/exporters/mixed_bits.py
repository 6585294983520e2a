"""Mixed bit widths for weight-only int4: which MatMuls keep 8-bit weights.

The policy is llama.cpp's (`use_more_bits` in llama-quant.cpp, behind its Q4_K_M files), as ONNX Runtime GenAI's
model builder applies it (`matmul_mixed_precision=mixed_layers:int8`, `k_quant_mixed`): the attention value
projection (v, or the fused q|k|v) and the FFN output projection of

* ``edges`` (the int4 default): the first and the last eighth of the layers (i < n/8 or i >= 7n/8);
* ``llama.cpp``: those and every third layer between ((i - round(n/8)) % 3 == 2), as llama.cpp and GenAI do;
* ``none``: every MatMul in 4 bits.

The promoted MatMuls are quantized like the LM head: 8-bit RTN, symmetric (whatever the int4 method), so GPTQ
skips them (and the dense baseline, whose layers and MatMul names are the compiled graph's, promotes the same
ones: like-for-like). Measured on SmolLM2-135M with 30 % of block parameters removed by trained gates, GPTQ int4,
perplexity against the fp32 graph: on the full SST-2 dev (20,314 tokens) +5.4 % with every MatMul in 4 bits,
+3.9 % with `edges` (the dense baseline's int4 +3.6 %), decode 81.5 / 78.4 tokens/s vs the dense int4's 66.1 /
65.1 (two bench runs: 1.23 / 1.20x; 1.20 / 1.19x before); the compile's greedy agreement over 4 x 64 tokens
74 % -> 96 %. On its first 300 sentences (benchmarks/int4_sensitivity.py, results/decoder/int4_sensitivity.json):
every MatMul in 4 bits +5.1 %, `edges` +3.7 % at the same decode speed (73.5 tokens/s both), `llama.cpp` +3.4 %
at 71.5 tokens/s (8-bit weights are twice the bytes). Where the error comes from (each projection kind alone in 4
bits, the rest fp32): down_proj +2.6 %, gate/up +1.7 %, q/k/v +0.4 %, o +0.1 %.

Which MatMul is which comes from the architecture spec (fg_edge.arch: `layers`, `v` / `qkv`, `ffn_out`), matched
against the exported node names, which carry the module path (`/model/model/layers.3/mlp/down_proj/MatMul`).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

POLICIES = ("edges", "llama.cpp", "none")
DEFAULT_POLICY = "edges"
#: bits of the promoted MatMuls
PROMOTED_BITS = 8

_RULES = {"edges": "v (or fused qkv) and FFN output projections of layers i < n/8 or i >= 7n/8 in 8 bits",
          "llama.cpp": "v (or fused qkv) and FFN output projections of layers i < n/8, i >= 7n/8 or "
                       "(i - round(n/8)) % 3 == 2 in 8 bits (llama.cpp use_more_bits; ORT GenAI mixed_layers)",
          "none": "every MatMul of the body in the int4 grid"}


def promoted_layers(n_layers: int, policy: str) -> list[int]:
    """The layer indices whose v and FFN output projections `policy` keeps in 8 bits, of `n_layers`."""
    if policy == "none" or n_layers <= 0:
        return []
    chosen = {i for i in range(n_layers) if i < n_layers / 8 or i >= 7 * n_layers / 8}
    if policy == "llama.cpp":
        chosen |= {i for i in range(n_layers) if (i - round(n_layers / 8)) % 3 == 2}
    return sorted(chosen)


def layer_modules(fields: Optional[Mapping]) -> Optional[dict]:
    """{"layers": ModuleList path, "modules": [value (or fused qkv) projection, FFN output projection]} from an
    architecture spec's fields (the compile report's architecture.fields), or None without a spec."""
    if not fields or not fields.get("layers") or not fields.get("ffn_out"):
        return None
    value = fields.get("v") or fields.get("qkv")
    return {"layers": str(fields["layers"]),
            "modules": [str(m) for m in (value, fields["ffn_out"]) if m]}


def _slashed(path: str) -> str:
    return re.escape(path.replace(".", "/"))


def promoted_nodes(proto, policy: str, layout: Optional[Mapping]) -> dict:
    """The MatMul nodes of `proto` that `policy` keeps in 8 bits, by name, given `layout` (layer_modules).

    A node is promoted when its name holds `/<layers>.<i>/<module>/` for a promoted layer i and one of the layout's
    modules, and its weight (input 1) is an initializer. n, the layer count, is the largest index any node name shows,
    plus one. Returns {"names", "layers", "n_layers"}."""
    if policy == "none" or not layout:
        return {"names": [], "layers": [], "n_layers": 0}
    layers = _slashed(layout["layers"])
    index = re.compile(rf"/{layers}\.(\d+)/")
    seen = [int(m.group(1)) for n in proto.graph.node if (m := index.search(n.name or ""))]
    n_layers = max(seen) + 1 if seen else 0
    chosen = set(promoted_layers(n_layers, policy))
    modules = "|".join(_slashed(m) for m in layout["modules"])
    pattern = re.compile(rf"/{layers}\.(\d+)/(?:{modules})/")
    constant = {t.name for t in proto.graph.initializer}
    names = []
    for node in proto.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in constant:
            continue
        m = pattern.search(node.name or "")
        if m and int(m.group(1)) in chosen:
            names.append(node.name)
    return {"names": names, "layers": sorted(chosen), "n_layers": n_layers}


def describe(policy: str) -> str:
    return _RULES[policy]
