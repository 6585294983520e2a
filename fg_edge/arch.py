"""Architecture knowledge as data: where the q/k/v/o and FFN linears of each block live, how heads are laid out.

One `ArchSpec` per family; `ARCHITECTURES` maps every supported HF `model_type` to it. Paths are relative to
`model.base_model` (the HF backbone, whatever task head sits on top) and then to one block of `layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
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
                                           # "groups" (query heads per kv head, HF's num_key_value_groups)
    ffn_act: Optional[str] = None    # FFN activation module of a block (the compiler checks act(0) == 0)
    glu: bool = False                # ffn_in = (gate, up): down(act(gate(x)) * up(x)), SwiGLU
    attn_returns: str = "pair"       # what `attention` returns: "context" (pre-projection context, probs: BERT's
                                     # self-attention), "single" ((out,) or (out, weights): DistilBERT),
                                     # "pair" ((out, weights): LLaMA family, GPT-2)

    def linear_names(self) -> tuple[str, ...]:
        """Names of every linear in a block that the paper granularity gates, in block order."""
        attn = (self.qkv,) if self.qkv else (self.q, self.k, self.v)
        return tuple(attn) + (self.o,) + tuple(self.ffn_in) + (self.ffn_out,)


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
    "gpt2": _GPT2,
}


def get_spec(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not in fg-edge's architecture table (supported: "
            f"{', '.join(sorted(ARCHITECTURES))}). For other models use granularity 'paper' with explicit "
            f"module names, e.g. `fg-edge train ... --granularity paper --target-modules q_proj,v_proj` "
            f"(GateConfig.target_modules)"
        ) from None


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def layers_of(model: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    return get_submodule(model.base_model, spec.layers)


def layers_prefix(model: nn.Module, spec: ArchSpec) -> str:
    """Dotted name of the layer list inside the *top-level* model (e.g. 'bert.encoder.layer')."""
    base = model.base_model
    prefix = "" if base is model else model.base_model_prefix
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
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return HeadLayout(num_heads=heads, num_kv_heads=kv, head_dim=head_dim, hidden_size=hidden)


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
