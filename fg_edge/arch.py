"""Architecture knowledge as data: where the q/k/v/o and FFN linears of each block live, how heads are laid out.

One `ArchSpec` per family; `ARCHITECTURES` maps every supported HF `model_type` to it. Paths are relative to
`model.base_model` (the HF backbone, whatever task head sits on top) and then to one block of `layers`.

`spec_for(model)` is what the rest of fg-edge calls: the table entry for a known `model_type`, else a spec
derived from the config and the module tree (`fg_edge.arch_derive`), in both cases checked against every block
of the model (module paths exist, shapes agree with the head layout) before anything uses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from torch import nn

from fg_edge.errors import CompileError, ConfigError, UnsupportedArchitectureError
from fg_edge.formats.names import AUTO_CLASS_NAMES, TASK_KEY, TASKS


@dataclass(frozen=True)
class ArchSpec:
    family: str
    layers: str                      # ModuleList of blocks, relative to model.base_model
    attention: str                   # attention module of a block (holds the head-count attributes)
    q: Optional[str]                 # query projection (None when fused into `qkv`)
    k: Optional[str]
    v: Optional[str]
    qkv: Optional[str]               # fused q|k|v projection (GPT-2 c_attn)
    o: str                           # attention output projection
    ffn_in: tuple[str, ...]          # FFN input projections (SwiGLU: gate_proj, up_proj)
    ffn_out: str                     # FFN output projection
    head_attrs: tuple[str, ...]      # attention-module attributes that hold head counts / sizes (see compiler)
    conv1d: bool = False             # weights stored (in, out) as transformers' Conv1D
    gqa: bool = False                # separate kv-head count (config.num_key_value_heads)
    rope: bool = False               # rotary embeddings on q/k (never split a head)
    decoder: bool = False            # causal LM with a KV cache
    # -- compiler data (fg_edge.compiler) ------------------------------------------------------------------
    head_attr_kinds: tuple[str, ...] = ()  # per `head_attrs` entry: "heads" (query heads), "width" (heads·head_dim),
                                           # "groups" (query heads per kv head, HF's num_key_value_groups),
                                           # "kv_heads" (kv heads)
    ffn_act: Optional[str] = None    # FFN activation module of a block (the compiler checks act(0) == 0)
    glu: bool = False                # ffn_in = (gate, up): down(act(gate(x)) * up(x)), SwiGLU
    attn_returns: str = "pair"       # what `attention` returns: "context" (pre-projection context, probs: BERT's
                                     # self-attention), "single" ((out,) or (out, weights): DistilBERT),
                                     # "pair" ((out, weights): LLaMA family, GPT-2)
    ffn_fused: bool = False          # one ffn_in linear holds both GLU halves as rows [act half | linear half]
                                     # (Phi-3 gate_up_proj, ModernBERT Wi: `a, b = x.chunk(2); act(a) * b`)
    glu_order_known: bool = True     # ffn_in (or the fused halves) are known to be (activated, linear); when not,
                                     # a closed row removes its channel only if act(0) == 0 (then either suffices)
    head_extra: tuple[str, ...] = ()  # further linears whose output rows are per query head (DeBERTa-v2's
                                     # pos_key_proj / pos_query_proj); sliced with the query heads, skipped if absent
    heads_fixed: str = ""            # non-empty: why no head may be removed (closed heads stay, zeroed); FFN
                                     # channels are still removed
    source: str = "table"            # "table" (an entry below) or "derived" (fg_edge.arch_derive)

    def linear_names(self) -> tuple[str, ...]:
        """Names of every linear in a block that the paper granularity gates, in block order."""
        attn = (self.qkv,) if self.qkv else (self.q, self.k, self.v)
        return tuple(attn) + (self.o,) + tuple(self.ffn_in) + (self.ffn_out,)

    def describe(self) -> str:
        """One line naming the spec and its module paths (inspect and the compile report show it)."""
        attn = f"qkv={self.qkv}" if self.qkv else f"q={self.q} k={self.k} v={self.v}"
        ffn = ",".join(self.ffn_in) + ("(fused GLU)" if self.ffn_fused else "(GLU)" if self.glu else "")
        fixed = f"; heads kept: {self.heads_fixed}" if self.heads_fixed else ""
        return (f"{self.family} ({'table entry' if self.source == 'table' else 'derived from the module tree'}): "
                f"layers={self.layers} {attn} o={self.o} ffn_in={ffn} ffn_out={self.ffn_out}{fixed}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict, source: str = "architecture spec") -> "ArchSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CompileError(f"{source}: unknown spec field(s) {unknown} (written by a newer fg-edge?)")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as exc:
            raise CompileError(f"{source}: malformed architecture spec ({exc})") from None


_BERT = ArchSpec(
    family="bert", layers="encoder.layer", attention="attention.self",
    q="attention.self.query", k="attention.self.key", v="attention.self.value", qkv=None,
    o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense",
    head_attrs=("num_attention_heads", "all_head_size"),
    head_attr_kinds=("heads", "width"), ffn_act="intermediate.intermediate_act_fn", attn_returns="context",
)
_DISTILBERT = ArchSpec(
    family="distilbert", layers="transformer.layer", attention="attention",
    q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", qkv=None,
    o="attention.out_lin", ffn_in=("ffn.lin1",), ffn_out="ffn.lin2",
    head_attrs=("n_heads", "dim"),
    head_attr_kinds=("heads", "width"), ffn_act="ffn.activation", attn_returns="single",
)
_LLAMA = ArchSpec(
    family="llama", layers="layers", attention="self_attn",
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", qkv=None,
    o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
    head_attrs=("num_key_value_groups",), gqa=True, rope=True, decoder=True,
    head_attr_kinds=("groups",), ffn_act="mlp.act_fn", glu=True,
)
_QWEN3 = replace(_LLAMA, family="qwen3")          # q_norm / k_norm: one RMSNorm over head_dim, shared by heads
_GEMMA = replace(_LLAMA, family="gemma")          # head_dim from config, soft-capping, sliding layers: all
                                                  # outside the per-head slices the compiler cuts
_PHI3 = ArchSpec(
    family="phi3", layers="layers", attention="self_attn",
    q=None, k=None, v=None, qkv="self_attn.qkv_proj",
    o="self_attn.o_proj", ffn_in=("mlp.gate_up_proj",), ffn_out="mlp.down_proj",
    head_attrs=("num_key_value_groups", "num_key_value_heads"), gqa=True, rope=True, decoder=True,
    head_attr_kinds=("groups", "kv_heads"), ffn_act="mlp.activation_fn", glu=True, ffn_fused=True,
)
_MODERNBERT = ArchSpec(
    family="modernbert", layers="layers", attention="attn",
    q=None, k=None, v=None, qkv="attn.Wqkv",
    o="attn.Wo", ffn_in=("mlp.Wi",), ffn_out="mlp.Wo",
    head_attrs=("num_heads", "all_head_size"), rope=True,
    head_attr_kinds=("heads", "width"), ffn_act="mlp.act", glu=True, ffn_fused=True, attn_returns="single",
)
# DeBERTa-v2/v3: scores per head are q·k + q·pos_k + k·pos_q (pos_k / pos_q = key_proj / query_proj of the
# relative embeddings, or pos_key_proj / pos_query_proj when share_att_key is off); a head whose v rows or o
# columns are all zero contributes nothing whatever its scores, and every other head's scores use only its own
# rows of q / k / pos projections, so cutting whole heads (with their pos-projection rows) is exact.
_DEBERTA_V2 = replace(   # BERT's block layout, its own projection names and the per-head position projections
    _BERT, family="deberta-v2",
    q="attention.self.query_proj", k="attention.self.key_proj", v="attention.self.value_proj",
    head_extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
)
_GPT2 = ArchSpec(
    family="gpt2", layers="h", attention="attn",
    q=None, k=None, v=None, qkv="attn.c_attn",
    o="attn.c_proj", ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj",
    head_attrs=("num_heads", "split_size"), conv1d=True, decoder=True,
    head_attr_kinds=("heads", "width"), ffn_act="mlp.act",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": _BERT,
    "distilbert": _DISTILBERT,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _QWEN3,
    "smollm3": replace(_LLAMA, family="smollm3"),   # LLaMA layout; NoPE layers only skip the rotation
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "phi3": _PHI3,
    "gpt2": _GPT2,
    "xlm-roberta": _BERT,
    "modernbert": _MODERNBERT,
    "deberta-v2": _DEBERTA_V2,
}


def get_spec(model_type: str) -> ArchSpec:
    """The table entry of `model_type` (no model at hand: nothing derived, nothing checked; see `spec_for`)."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not in fg-edge's architecture table (supported: "
            f"{', '.join(sorted(ARCHITECTURES))}); with the model at hand fg-edge derives a spec from its module "
            f"tree (fg_edge.arch.spec_for)") from None


#: attribute under which `spec_for` keeps the spec it resolved on the model (copied along by deepcopy)
SPEC_ATTR = "_fg_edge_arch_spec"


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec of `model`: the one already attached to it, else its table entry, else one derived from its config
    and module tree; checked on every block (UnsupportedArchitectureError naming the module that does not fit and
    how to gate modules by name instead). The result is attached to the model, so a compiled model (whose blocks
    no longer look like the original) keeps the spec it was compiled with."""
    spec = model.__dict__.get(SPEC_ATTR)
    if spec is not None:
        return spec
    from fg_edge.arch_derive import check_spec, derive_spec

    load_env_specs()
    model_type = getattr(model.config, "model_type", None)
    spec = ARCHITECTURES.get(model_type) or derive_spec(model)
    check_spec(model, spec)
    attach_spec(model, spec)
    return spec


def find_spec(model: nn.Module) -> tuple[Optional[ArchSpec], Optional[str]]:
    """(spec, None), or (None, why not) when no spec fits the model (callers then fold without removing)."""
    try:
        return spec_for(model), None
    except UnsupportedArchitectureError as exc:
        return None, str(exc)


def attach_spec(model: nn.Module, spec: ArchSpec) -> None:
    model.__dict__[SPEC_ATTR] = spec


def register_architecture(model_type: str, spec: "ArchSpec | dict") -> ArchSpec:
    """Add (or override) the table entry of `model_type`: an ArchSpec, or its `to_dict` form (data, e.g. JSON);
    a dict may start from an existing entry with {"like": "llama", <fields that differ>}."""
    if isinstance(spec, dict):
        where = f"architecture spec for {model_type!r}"
        fields_ = dict(spec)
        like = fields_.pop("like", None)
        if like is not None:
            if like not in ARCHITECTURES:
                raise ConfigError(f"{where}: 'like' names {like!r}, which is not in the table "
                                  f"({', '.join(sorted(ARCHITECTURES))})")
            fields_ = {**ARCHITECTURES[like].to_dict(), "family": model_type, **fields_}
        spec = ArchSpec.from_dict(fields_, source=where)
    if not isinstance(spec, ArchSpec):
        raise ConfigError(f"register_architecture({model_type!r}, ...) needs an ArchSpec or a dict, got "
                          f"{type(spec).__name__}")
    ARCHITECTURES[model_type] = replace(spec, source="table")
    return ARCHITECTURES[model_type]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def has_submodule(root: nn.Module, path: str) -> bool:
    try:
        get_submodule(root, path)
        return True
    except AttributeError:
        return False


def backbone(model: nn.Module, spec: ArchSpec) -> tuple[str, nn.Module]:
    """(dotted name inside `model`, module) of the backbone that `spec.layers` is relative to: `model.base_model`,
    or, for head classes whose base_model_prefix names no attribute (Gemma3ForCausalLM: "language_model", the
    backbone sits at `.model`), the child that holds the layer list."""
    base = model.base_model
    if base is not model:
        return model.base_model_prefix, base
    if not has_submodule(model, spec.layers):
        for name in ("model", "transformer"):
            child = getattr(model, name, None)
            if isinstance(child, nn.Module) and has_submodule(child, spec.layers):
                return name, child
    return "", model


def layers_of(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    return get_submodule(backbone(model, spec)[1], spec.layers)


def layers_prefix(model: nn.Module, spec: ArchSpec) -> str:
    """Dotted name of the layer list inside the *top-level* model (e.g. 'bert.encoder.layer')."""
    prefix = backbone(model, spec)[0]
    return ".".join(p for p in (prefix, spec.layers) if p)


@dataclass(frozen=True)
class HeadLayout:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


def head_layout(config, spec: ArchSpec) -> HeadLayout:
    """Global head layout from a HF config (compiled models override it per layer)."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) if spec.gqa else heads
    if spec.gqa and getattr(config, "multi_query", False):
        kv = 1
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return HeadLayout(num_heads=heads, num_kv_heads=kv, head_dim=head_dim, hidden_size=hidden)


#: environment variable naming a JSON file {model_type: spec fields} added to the table (the CLI's way to name
#: modules for an architecture whose layout fg-edge cannot derive)
ENV_SPECS = "FG_EDGE_ARCH_SPECS"
_loaded_env: set[str] = set()


def load_env_specs() -> None:
    """Register the entries of the JSON file named by $FG_EDGE_ARCH_SPECS (once per file)."""
    import json
    import os

    path = os.environ.get(ENV_SPECS)
    if not path or path in _loaded_env:
        return
    try:
        entries = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"${ENV_SPECS}={path}: cannot read the architecture specs ({exc})") from None
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        raise ConfigError(f"${ENV_SPECS}={path}: expected a JSON object {{model_type: {{spec fields}}}}")
    for model_type, fields_ in entries.items():
        register_architecture(model_type, fields_)
    _loaded_env.add(path)


# ----------------------------------------------------------------------------------------------- tasks


def auto_class(task: Optional[str], where: str = "task"):
    """The transformers auto class for `task` ('classification' / 'causal-lm'); `where` names the source in errors."""
    if task not in AUTO_CLASS_NAMES:
        raise ConfigError(f"{where} must be one of {', '.join(TASKS)}; got {task!r}")
    import transformers

    return getattr(transformers, AUTO_CLASS_NAMES[task])


def model_kind(model: nn.Module) -> str:
    """What `model` computes, from its HF class: 'causal-lm' (LM head, KV cache), 'classification' (a task head
    giving logits) or 'embedding' (a bare backbone)."""
    name = type(model).__name__
    if "CausalLM" in name or "LMHead" in name:
        return "causal-lm"
    if model.base_model is model:
        return "embedding"
    return "classification"


def model_task(model: nn.Module) -> str:
    """'classification' or 'causal-lm': config.json's `fg_edge_task`, else the HF head class
    (``*ForSequenceClassification`` / ``*ForCausalLM`` / ``*LMHeadModel``)."""
    task = getattr(model.config, TASK_KEY, None)
    if task:
        return task
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForSequenceClassification"):
        return "classification"
    raise CompileError(f"cannot tell the task of a {name}: the compiler handles *ForSequenceClassification "
                       f"('classification') and *ForCausalLM / *LMHeadModel ('causal-lm') models")
