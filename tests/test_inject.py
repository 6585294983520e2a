"""Injection on every supported architecture, open gates == base model, state round trip, errors."""

import dataclasses

import pytest
import torch

from fg_edge import load
from fg_edge.arch import ARCHITECTURES
from fg_edge.formats.gate_config import GateConfig
from fg_edge.errors import ConfigError, GateStateError, UnsupportedArchitectureError
from fg_edge.gates.inject import gate_state_dict, gated_modules, inject_gates, load_gate_state, unwrapped
from fg_edge.gates.stats import mark_trainable_, numel
from fg_edge.model_dir import read_gate_config, save_model_dir
from fg_edge.testing import DECODERS, TINY_CONFIGS, padded_batch, tiny_model


def _task(mt):
    return "causal-lm" if mt in DECODERS else "classification"


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_table_covers_tiny_configs():
    assert set(TINY_CONFIGS) == set(ARCHITECTURES)


@pytest.mark.parametrize("granularity", ["paper", "structured"])
@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_open_gates_equal_base(model_type, granularity):
    model = tiny_model(model_type)
    ids, mask = padded_batch(model.config.vocab_size)
    ref = _logits(model, ids, mask)
    cfg = GateConfig(granularity=granularity, adapter_rank=2, task=_task(model_type))
    inject_gates(model, cfg)
    n_layers, n_linears = 2, len(ARCHITECTURES[model_type].linear_names())
    assert len(gated_modules(model)) == n_layers * n_linears   # adapters on every block linear (the default)
    gated = {n: g for n, g in gated_modules(model).items() if g.gates()}
    per_layer = 2 if granularity == "structured" else n_linears
    assert len(gated) == n_layers * per_layer
    for g in gated.values():
        for gate in g.gates():
            gate.logits.data.fill_(3.0)
    model.eval()
    assert torch.equal(_logits(model, ids, mask), ref)
    # The structured gates sit where the compiler needs them: heads on o, channels on the FFN output.
    if granularity == "structured":
        spec = ARCHITECTURES[model_type]
        assert all(n.endswith(spec.o) or n.endswith(spec.ffn_out) for n in gated)


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2"])
def test_closed_head_gate_equals_zeroed_o_columns(model_type):
    """Closing head h's gate is the same as zeroing the o-projection input columns of head h."""
    model = tiny_model(model_type)
    ids, mask = padded_batch(model.config.vocab_size)
    spec = ARCHITECTURES[model_type]
    cfg = GateConfig(granularity="structured", task=_task(model_type))
    inject_gates(model, cfg)
    o_name = next(n for n in gated_modules(model) if n.endswith(spec.o))
    g = gated_modules(model)[o_name]
    for gate in g.gates():
        gate.logits.data.fill_(3.0)
    g.group_gate.logits.data[1] = -3.0
    model.eval()
    gated_out = _logits(model, ids, mask)
    with unwrapped(model):
        base = model.get_submodule(o_name)
        head_dim = g.group_size
        with torch.no_grad():
            if spec.conv1d:
                base.weight[head_dim:2 * head_dim, :] = 0
            else:
                base.weight[:, head_dim:2 * head_dim] = 0
        ref = _logits(model, ids, mask)
    assert torch.allclose(gated_out, ref, atol=1e-6)


def test_training_mode_is_stochastic_and_trainable_counts():
    model = tiny_model("bert")
    cfg = GateConfig(granularity="paper")
    inject_gates(model, cfg)
    n = numel(mark_trainable_(model, cfg))
    gate_params = sum(g.logits.numel() for m in gated_modules(model).values() for g in m.gates())
    assert gate_params < n < sum(p.numel() for p in model.parameters())
    ids, mask = padded_batch(model.config.vocab_size)
    model.train()
    a = model(input_ids=ids, attention_mask=mask).logits
    b = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.equal(a, b)


def test_unsupported_architecture_message():
    import transformers

    config = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = transformers.T5ForConditionalGeneration(config)
    with pytest.raises(UnsupportedArchitectureError) as exc:
        inject_gates(model, GateConfig(granularity="structured"))
    assert "bert" in str(exc.value) and "--target-modules" in str(exc.value)
    # ... and the escape hatch works
    inject_gates(model, GateConfig(granularity="paper", target_modules=["SelfAttention.q", "SelfAttention.v"]))
    assert len(gated_modules(model)) == 4  # encoder + decoder self-attention q, v
    with pytest.raises(ConfigError, match="matched no linear"):
        inject_gates(transformers.T5ForConditionalGeneration(config),
                     GateConfig(granularity="paper", target_modules=["nothing_here"]))


def test_gate_state_validation():
    model = tiny_model("bert")
    inject_gates(model, GateConfig())
    state = gate_state_dict(model)
    name = next(iter(state))
    bad = dict(state)
    bad[name] = torch.full_like(state[name], float("nan"))
    with pytest.raises(GateStateError, match=name.replace(".", r"\.")):
        load_gate_state(model, bad)
    bad = dict(state)
    bad[name] = torch.zeros(state[name].numel() + 1)
    with pytest.raises(GateStateError, match="shape"):
        load_gate_state(model, bad)
    other = tiny_model("llama")
    inject_gates(other, GateConfig(task="causal-lm"))
    with pytest.raises(GateStateError, match="another model"):
        load_gate_state(model, gate_state_dict(other))


@pytest.mark.parametrize("model_type", ["distilbert", "qwen2", "gpt2"])
def test_model_dir_roundtrip(tmp_path, model_type):
    model = tiny_model(model_type)
    cfg = GateConfig(granularity="structured", scale_gates=True, adapter_rank=2, task=_task(model_type))
    inject_gates(model, cfg)
    torch.manual_seed(1)
    for g in gated_modules(model).values():
        for gate in g.gates():
            gate.logits.data.uniform_(-1, 1)
        g.lora_B.data.normal_(0, 0.1)
        if g.base_layer.bias is not None:
            g.base_layer.bias.data.add_(0.5)   # trained biases must survive too
    model.eval()
    ids, mask = padded_batch(model.config.vocab_size)
    ref = _logits(model, ids, mask)
    out = tmp_path / "md"
    save_model_dir(model, cfg, out, metadata={"steps": 0})
    loaded = load(out)
    assert torch.equal(_logits(loaded, ids, mask), ref)
    # the model_type gated is recorded when the model_dir is written (GateConfig is frozen)
    assert read_gate_config(out) == dataclasses.replace(cfg, model_type=model.config.model_type)
