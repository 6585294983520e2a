"""Tiny random-weight models of every supported architecture (for tests, examples and benchmarks' smoke runs)."""

from __future__ import annotations

import torch

from fg_edge.compiler.inputs import padded_batch  # re-exported: tests build their batches like the parity gates

#: model_type -> (config class name, kwargs) of a tiny random config
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "bert": ("BertConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48, max_position_embeddings=64)),
    "roberta": ("RobertaConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, max_position_embeddings=70, pad_token_id=1)),
    "distilbert": ("DistilBertConfig", dict(vocab_size=120, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                            max_position_embeddings=64)),
    "llama": ("LlamaConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128)),
    "mistral": ("MistralConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                      sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128)),
    "gpt2": ("GPT2Config", dict(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=128, n_inner=48)),
    # -- issue 10: the families people put on devices; each with the quirk that matters switched on ----------
    "xlm-roberta": ("XLMRobertaConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=48,
                                             max_position_embeddings=70, pad_token_id=1)),
    # head_dim 16 != 32 / 4; q_norm / k_norm over head_dim
    "qwen3": ("Qwen3Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                  max_position_embeddings=128)),
    # LLaMA layout with NoPE layers (no_rope_layers[i] == 0: no rotary embedding in that layer)
    "smollm3": ("SmolLM3Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                      no_rope_layers=[1, 0], bos_token_id=4, eos_token_id=5)),
    # fused qkv_proj (GQA sizes) and gate_up_proj, partial RoPE
    "phi3": ("Phi3Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=48, max_position_embeddings=128,
                                original_max_position_embeddings=128, partial_rotary_factor=0.5,
                                sliding_window=None, bos_token_id=4, eos_token_id=5)),
    "gemma": ("GemmaConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                  max_position_embeddings=128, bos_token_id=4, eos_token_id=5)),
    # head_dim 16, both soft-cappings, layer 0 sliding (window 4 < the parity sequences), scaled embeddings, tied head
    "gemma2": ("Gemma2Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, intermediate_size=48,
                                    max_position_embeddings=128, sliding_window=4, query_pre_attn_scalar=16,
                                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                    bos_token_id=4, eos_token_id=5)),
    "gemma3_text": ("Gemma3TextConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                             intermediate_size=48, max_position_embeddings=128, sliding_window=4,
                                             layer_types=["sliding_attention", "full_attention"],
                                             query_pre_attn_scalar=16, final_logit_softcapping=3.0,
                                             bos_token_id=4, eos_token_id=5)),
    # fused Wqkv and GLU Wi; layer 1 local attention (window 4)
    "modernbert": ("ModernBertConfig", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=48, max_position_embeddings=128,
                                            global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
                                            bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
                                            reference_compile=False)),
    # disentangled attention, c2p + p2c, separate pos projections (share_att_key off: sliced with the heads)
    "deberta-v2": ("DebertaV2Config", dict(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, intermediate_size=48, max_position_embeddings=64,
                                           relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
                                           share_att_key=False, norm_rel_ebd="layer_norm", type_vocab_size=0)),
}

ENCODERS = ("bert", "roberta", "distilbert", "xlm-roberta", "modernbert", "deberta-v2")
DECODERS = ("llama", "mistral", "qwen2", "gpt2", "qwen3", "smollm3", "phi3", "gemma", "gemma2", "gemma3_text")
#: the families issue 10 added (tests/test_architectures.py covers them end to end)
NEW_FAMILIES = ("xlm-roberta", "qwen3", "smollm3", "phi3", "gemma", "gemma2", "gemma3_text", "modernbert", "deberta-v2")


#: tiny random configs of model types that are *not* in the architecture table (fg_edge.arch): the general path.
#: model_type -> (config class name, kwargs, task)
_UNLISTED_COMMON = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=128, pad_token_id=0)
UNLISTED_CONFIGS: dict[str, tuple[str, dict, str]] = {
    "starcoder2": ("Starcoder2Config", dict(num_key_value_heads=2), "causal-lm"),   # c_fc / c_proj, biases
    "opt": ("OPTConfig", dict(ffn_dim=48, word_embed_proj_dim=32), "causal-lm"),    # fc1 / fc2 on the block
    "phi": ("PhiConfig", dict(), "causal-lm"),                       # parallel attention + MLP, o named dense
    "granite": ("GraniteConfig", dict(num_key_value_heads=2), "causal-lm"),        # residual multipliers
    "olmo2": ("Olmo2Config", dict(num_key_value_heads=2), "causal-lm"),   # q_norm over all heads: heads stay
    "electra": ("ElectraConfig", dict(embedding_size=32), "classification"),       # BERT layout, own type
    "mpnet": ("MPNetConfig", dict(), "classification"),  # per-head relative bias outside the blocks: heads stay
}
#: layouts no spec can be derived for
NONSTANDARD_CONFIGS: dict[str, tuple[str, dict, str]] = {
    "gpt_neox": ("GPTNeoXConfig", dict(), "causal-lm"),                      # per-head interleaved query_key_value
    "mixtral": ("MixtralConfig", dict(num_key_value_heads=2, num_local_experts=2), "causal-lm"),   # MoE FFN
    "mamba": ("MambaConfig", dict(), "causal-lm"),                           # no attention at all
}


def unlisted_model(model_type: str, seed: int = 0):
    """(tiny random model in eval mode, task) of a type in UNLISTED_CONFIGS or NONSTANDARD_CONFIGS."""
    import transformers

    cls, overrides, task = {**UNLISTED_CONFIGS, **NONSTANDARD_CONFIGS}[model_type]
    config = getattr(transformers, cls)(**{**_UNLISTED_COMMON, **overrides})
    config.num_labels = 2
    torch.manual_seed(seed)
    auto = (transformers.AutoModelForCausalLM if task == "causal-lm"
            else transformers.AutoModelForSequenceClassification)
    return auto.from_config(config, attn_implementation="eager").eval(), task


def tiny_config(model_type: str, **overrides):
    import transformers

    cls_name, kwargs = TINY_CONFIGS[model_type]
    kwargs = {**kwargs, **overrides}
    if model_type in DECODERS:
        kwargs.setdefault("pad_token_id", 0)
    return getattr(transformers, cls_name)(**kwargs)


def tiny_model(model_type: str, task: str = "auto", seed: int = 0, num_labels: int = 2, **overrides):
    """A tiny random model in eval mode: sequence classification for encoders, causal LM for decoders."""
    import transformers

    if task == "auto":
        task = "classification" if model_type in ENCODERS else "causal-lm"
    config = tiny_config(model_type, **overrides)
    config.num_labels = num_labels
    torch.manual_seed(seed)
    if task == "classification":
        model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


def task_of(model_type: str) -> str:
    """The task tests give a tiny model of `model_type`: decoders are causal LMs, encoders classifiers."""
    return "causal-lm" if model_type in DECODERS else "classification"


def gated_tiny_model(model_type: str, closed_heads: dict, closed_channels: dict, seed: int = 0, **model_kwargs):
    """A tiny model with structured gates, all open (logits in (0, 2), one seeded draw) except, per layer index,
    `closed_heads[layer]` and `closed_channels[layer]` (anything that indexes the gate vector: a list, a slice),
    which are closed (logit -3) for the compiler to remove. Returns (model in eval mode, its GateConfig)."""
    from fg_edge.arch import spec_for
    from fg_edge.formats.gate_config import GateConfig
    from fg_edge.gates.inject import gated_modules, inject_gates

    model = tiny_model(model_type, seed=seed, **model_kwargs)
    spec = spec_for(model)
    config = GateConfig(task=task_of(model_type))
    inject_gates(model, config)
    g = torch.Generator().manual_seed(seed)
    prefix = f"{spec.layers}."
    for name, gl in gated_modules(model).items():
        layer, _, inner = name.split(prefix, 1)[1].partition(".")
        logits = gl.group_gate.logits.data
        logits.copy_(torch.rand(logits.shape, generator=g) * 2)
        closed = closed_heads.get(int(layer), []) if inner == spec.o else closed_channels.get(int(layer), slice(0))
        logits[closed] = -3.0
    return model.eval(), config
