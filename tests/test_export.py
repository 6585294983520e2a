"""ONNX export of compiled models: every architecture, per-layer KV shapes, ORT parity, int8 / QDQ, ORT format."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fg_edge.arch import ARCHITECTURES
from fg_edge.compiler import compile_model
from fg_edge.compiler.shapes import layer_shapes
from fg_edge.errors import ConfigError, ParityError
from fg_edge.exporters import (check_onnx_parity, convert_to_ort, dense_baseline, export_onnx, make_session,
                               partition_summary, quantize_int8_dynamic, quantize_qdq_static, quantized_op_counts)
from fg_edge.exporters.quantize import calibration_feeds
from fg_edge.testing import DECODERS, ENCODERS, TINY_CONFIGS, gated_tiny_model, padded_batch, tiny_model


def gated_model(model_type: str, *, empty_layer: bool = False, seed: int = 0):
    """A tiny gated model with closed gates: layer 1 keeps only the first kv group (non-uniform kv heads), or no
    head at all with `empty_layer`; layer 0 loses head 0; every third FFN channel closed."""
    every_third = slice(None, None, 3)
    model, _ = gated_tiny_model(model_type, {0: [0], 1: slice(0 if empty_layer else 2, None)},
                                {0: every_third, 1: every_third}, seed=seed)
    return model


def _compiled(model_type, **kw):
    gated = gated_model(model_type, **kw)
    compiled, plan, report = compile_model(gated, decoder_steps=4)
    # the shape record save_compiled writes into config.json; export cross-checks the measured cache with it
    compiled.config.fg_edge_layers = layer_shapes(plan, ARCHITECTURES[model_type])
    return gated, compiled


# -- export + parity for every architecture --------------------------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_export_parity_every_architecture(tmp_path, model_type):
    gated, compiled = _compiled(model_type)
    info = export_onnx(compiled, tmp_path / "model.onnx", opset=17)
    assert compiled.training is False and not any(m.training for m in compiled.modules())
    result = check_onnx_parity(gated, tmp_path / "model.onnx", kind=info.kind, steps=32)
    assert result["passed"] and result["max_abs_diff"] <= 1e-4
    proto = onnx.load(str(tmp_path / "model.onnx"))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims["input_ids"] == ["batch_size", "sequence_length"]
    folding = info.shape_folding   # the shape arithmetic became constants (parity above: nothing else changed)
    assert folding["applied"] and folding["nodes_after"] == info.grouped_attention.get("nodes_before",
                                                                                         len(proto.graph.node))
    if model_type in DECODERS:
        assert folding["nodes_after"] < 0.9 * folding["nodes_before"], folding
        assert info.kind == "causal-lm"
        assert result["token_agreement"] == 1.0 and result["greedy_tokens"] == 3 * 33
        # per-layer kv heads follow the compiled model, not the global config: layer 1 kept one kv group
        record = compiled.config.fg_edge_layers
        assert [tuple(s) for s in info.kv_shapes] == [(r["kv_cache"]["num_heads"], r["kv_cache"]["head_dim"])
                                                      for r in record]
        if model_type != "gpt2":
            assert [s[0] for s in info.kv_shapes] == [2, 1]
            # GQA (2 query heads per kv head in both layers) reads the kv-head cache: no repeat_kv copy is left
            assert info.grouped_attention == {"applied": True, "layers": 2, "nodes_before": folding["nodes_after"],
                                              "nodes_after": len(proto.graph.node)}
            producer = {o: n for n in proto.graph.node for o in n.output}
            assert not [n.name for n in proto.graph.node if n.op_type == "Expand"
                        and producer[n.input[0]].op_type == "Unsqueeze"
                        and producer[n.input[0]].input[0].startswith("present.")]
        else:
            assert [s[0] for s in info.kv_shapes] == [3, 2]
        assert dims["past_key_values.1.key"][1] == info.kv_shapes[1][0]
        assert dims["past_key_values.1.key"][2] == "past_sequence_length"
        assert [o.name for o in proto.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    else:
        assert info.kind == "classification"
        assert ("token_type_ids" in info.input_names) == (model_type in ("bert", "roberta", "xlm-roberta"))


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_layer_without_heads_exports(tmp_path, model_type):
    """A layer whose heads all went caches the compiler's placeholder; the graph follows the record."""
    gated, compiled = _compiled(model_type, empty_layer=True)
    assert compiled.config.fg_edge_layers[1]["num_heads"] == 0
    info = export_onnx(compiled, tmp_path / "model.onnx")
    check_onnx_parity(gated, tmp_path / "model.onnx", kind=info.kind, steps=8)


def _shrink_llama_layer(model, layer: int, heads: int, kv_heads: int, ffn: int):
    """Hand-made non-uniform layer (no compiler): fewer q / kv heads and a smaller SwiGLU FFN."""
    attn = model.model.layers[layer].self_attn
    hd, hidden = attn.head_dim, model.config.hidden_size
    torch.manual_seed(layer)
    attn.q_proj, attn.k_proj = nn.Linear(hidden, heads * hd, bias=False), nn.Linear(hidden, kv_heads * hd, bias=False)
    attn.v_proj, attn.o_proj = nn.Linear(hidden, kv_heads * hd, bias=False), nn.Linear(heads * hd, hidden, bias=False)
    attn.num_key_value_groups = heads // kv_heads
    mlp = model.model.layers[layer].mlp
    mlp.gate_proj, mlp.up_proj = nn.Linear(hidden, ffn, bias=False), nn.Linear(hidden, ffn, bias=False)
    mlp.down_proj = nn.Linear(ffn, hidden, bias=False)


def test_cached_generation_equals_torch_generate(tmp_path):
    """ORT greedy loop (own tokens, own present tensors fed back) == HF generate on a hand-resized model."""
    model = tiny_model("llama", num_hidden_layers=3)
    _shrink_llama_layer(model, 1, heads=2, kv_heads=1, ffn=20)
    _shrink_llama_layer(model, 2, heads=4, kv_heads=4, ffn=8)
    model.eval()
    info = export_onnx(model, tmp_path / "m.onnx")
    assert [s[0] for s in info.kv_shapes] == [2, 1, 4]
    ids, mask = padded_batch(model.config.vocab_size, lengths=(6, 3, 5), left=True)
    steps = 16
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                             pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    sess = make_session(tmp_path / "m.onnx")
    am = mask.numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": am,
             "position_ids": np.clip(am.cumsum(-1) - 1, 0, None)}
    for i, (kv, hd) in enumerate(info.kv_shapes):
        feeds[f"past_key_values.{i}.key"] = feeds[f"past_key_values.{i}.value"] = np.zeros((3, kv, 0, hd), np.float32)
    tokens = []
    for _ in range(steps):
        out = sess.run(None, feeds)
        tok = out[0][:, -1].argmax(-1)
        tokens.append(tok)
        am = np.concatenate([am, np.ones((3, 1), np.int64)], axis=1)
        feeds = {"input_ids": tok[:, None].astype(np.int64), "attention_mask": am,
                 "position_ids": am.sum(-1, keepdims=True) - 1}
        for i in range(len(info.kv_shapes)):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = out[1 + 2 * i], out[2 + 2 * i]
        assert out[1 + 2 * 1].shape[1] == 1  # layer 1 really caches one kv head
    assert np.array_equal(np.stack(tokens, 1), ref.numpy())


def test_embedding_model_and_external_data(tmp_path):
    from transformers import AutoModel

    from fg_edge.testing import tiny_config

    torch.manual_seed(0)
    model = AutoModel.from_config(tiny_config("bert"), attn_implementation="eager").eval()
    info = export_onnx(model, tmp_path / "emb.onnx", external_data=True)
    assert info.kind == "embedding" and info.output_names == ["last_hidden_state"]
    assert (tmp_path / "emb.onnx.data").is_file()
    assert (tmp_path / "emb.onnx").stat().st_size < (tmp_path / "emb.onnx.data").stat().st_size
    res = check_onnx_parity(model, tmp_path / "emb.onnx", kind=info.kind)
    assert res["max_abs_diff"] <= 1e-4


def test_model_left_in_eval_mode_after_export(tmp_path):
    model = tiny_model("distilbert")
    model.train()
    export_onnx(model, tmp_path / "m.onnx")
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("opset", [13, 21, 0, "17"])
def test_unsupported_opset_is_refused(tmp_path, opset):
    with pytest.raises(ConfigError, match="14–20"):
        export_onnx(tiny_model("bert"), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("model_type,opset", [("bert", 14), ("qwen2", 20)])
def test_opset_range_ends(tmp_path, model_type, opset):
    gated = gated_model(model_type)
    base = dense_baseline(gated)
    info = export_onnx(base, tmp_path / "m.onnx", opset=opset)
    assert onnx.load(str(tmp_path / "m.onnx")).opset_import[0].version == opset
    check_onnx_parity(gated, tmp_path / "m.onnx", kind=info.kind, steps=4)


def test_parity_gate_catches_a_wrong_weight(tmp_path):
    gated, compiled = _compiled("llama")
    with torch.no_grad():
        compiled.model.layers[0].mlp.down_proj.weight[0, 0] += 0.05
    info = export_onnx(compiled, tmp_path / "m.onnx")
    with pytest.raises(ParityError) as exc:
        check_onnx_parity(gated, tmp_path / "m.onnx", kind=info.kind, steps=4)
    assert exc.value.max_abs_diff > 1e-4 and exc.value.tolerance == 1e-4
    assert "max abs difference" in str(exc.value)


# -- quantization and ORT format -------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type,per_channel", [("bert", False), ("llama", True), ("gpt2", False)])
def test_int8_dynamic(tmp_path, model_type, per_channel):
    gated, compiled = _compiled(model_type)
    info = export_onnx(compiled, tmp_path / "model.onnx")
    settings = quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", per_channel=per_channel)
    assert settings["weight_type"] == "QInt8" and settings["per_channel"] is per_channel
    ops = quantized_op_counts(tmp_path / "model.int8.onnx")
    assert ops.get("MatMulInteger", 0) >= 4 and ops.get("DynamicQuantizeLinear", 0) >= 1
    res = check_onnx_parity(gated, tmp_path / "model.int8.onnx", kind=info.kind, steps=8, raise_on_fail=False)
    assert np.isfinite(res["max_abs_diff"]) and res["max_abs_diff"] < 0.5
    # weight bytes shrink (on a toy model the file size is dominated by graph structure, not weights)
    def weight_bytes(name):
        return sum(len(t.raw_data) for t in onnx.load(str(tmp_path / name)).graph.initializer)
    assert weight_bytes("model.int8.onnx") < weight_bytes("model.onnx")


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_qdq_static(tmp_path, model_type, encoder_tokenizer, decoder_tokenizer):
    tok = encoder_tokenizer if model_type in ENCODERS else decoder_tokenizer
    gated, compiled = _compiled(model_type)
    info = export_onnx(compiled, tmp_path / "model.onnx")
    feeds = calibration_feeds(["good w1 w2", "bad w3", "w4 w5 nice w6 w7"], tok, info.input_names, info.kv_shapes)
    settings = quantize_qdq_static(tmp_path / "model.onnx", tmp_path / "model.qdq.onnx", feeds)
    assert settings["calibration_samples"] == 3
    ops = quantized_op_counts(tmp_path / "model.qdq.onnx")
    assert ops.get("QuantizeLinear", 0) >= 4 and ops.get("DequantizeLinear", 0) >= 4
    res = check_onnx_parity(gated, tmp_path / "model.qdq.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert np.isfinite(res["max_abs_diff"])


def test_calibration_needs_text(encoder_tokenizer):
    with pytest.raises(ConfigError, match="--calibration"):
        calibration_feeds([], encoder_tokenizer, ["input_ids", "attention_mask"])


@pytest.mark.parametrize("model_type", ["distilbert", "qwen2"])
def test_ort_format_and_partitions(tmp_path, model_type):
    import onnxruntime as ort

    _, compiled = _compiled(model_type)
    export_onnx(compiled, tmp_path / "model.onnx")
    quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    res = convert_to_ort([tmp_path / "model.onnx", tmp_path / "model.int8.onnx"], tmp_path)
    assert res["files"] == ["model.ort", "model.int8.ort"]
    for name in res["files"]:
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        assert sess.get_inputs()[0].name == "input_ids"
    config = (tmp_path / "required_operators.config").read_text()
    assert "MatMul" in config and "ai.onnx;" in config and str(tmp_path) not in config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("fg-ort-")]
    summary = partition_summary(tmp_path / "model.onnx")
    for ep in ("NNAPI", "CoreML MLProgram"):
        assert summary[ep]["as_exported"]["nodes"] > 0
        assert summary[ep]["with_fixed_shapes"]["supported_nodes"] >= summary[ep]["as_exported"]["supported_nodes"]


# -- LM head kept fp32 by default; one torch reference for every graph -----------------------------------------
def test_int8_lm_head_excluded_by_default(tmp_path):
    from fg_edge.exporters.onnx_export import LM_HEAD_NODE

    gated, compiled = _compiled("llama")
    info = export_onnx(compiled, tmp_path / "model.onnx")
    assert info.lm_head["lm_head_node"] == LM_HEAD_NODE
    proto = onnx.load(str(tmp_path / "model.onnx"))
    if info.lm_head.get("tied_embedding_deduplicated"):  # tied embedding stored once
        assert sum(1 for t in proto.graph.initializer if list(t.dims) == [compiled.config.vocab_size,
                                                                           compiled.config.hidden_size]) == 1
    settings = quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "q.onnx")
    assert settings["nodes_excluded"] == [LM_HEAD_NODE] and settings["lm_head"].startswith("excluded")
    q = onnx.load(str(tmp_path / "q.onnx"))
    head = [n for n in q.graph.node if n.name == LM_HEAD_NODE]
    assert len(head) == 1 and head[0].op_type == "MatMul"
    settings = quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "q_head.onnx", include_lm_head=True)
    assert settings["lm_head"] == "quantized" and settings["nodes_excluded"] == []
    assert (quantized_op_counts(tmp_path / "q_head.onnx")["MatMulInteger"]
            == quantized_op_counts(tmp_path / "q.onnx")["MatMulInteger"] + 1)
    ref = check_onnx_parity(gated, tmp_path / "q.onnx", kind=info.kind, steps=4, raise_on_fail=False)
    assert np.isfinite(ref["max_abs_diff"])


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_parity_reference_is_computed_once(tmp_path, model_type):
    from fg_edge.exporters.onnx_parity import ParityReference

    gated, compiled = _compiled(model_type)
    info = export_onnx(compiled, tmp_path / "model.onnx")
    export_onnx(dense_baseline(gated), tmp_path / "baseline.onnx")
    calls = []
    real_forward = gated.forward
    import functools

    gated.forward = functools.wraps(real_forward)(lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    reference = ParityReference(gated, kind=info.kind, steps=8).compute()
    n = len(calls)
    assert n >= 1
    reference.release_model()
    got = [check_onnx_parity(None, tmp_path / g, kind=info.kind, steps=8, reference=reference)
           for g in ("model.onnx", "baseline.onnx")]
    assert len(calls) == n  # no torch forward after the reference was computed
    fresh = check_onnx_parity(gated, tmp_path / "model.onnx", kind=info.kind, steps=8)
    assert fresh["max_abs_diff"] == got[0]["max_abs_diff"] and all(r["passed"] for r in got)
    if info.kind == "causal-lm":
        assert got[0]["token_agreement"] == 1.0 and got[0]["greedy_tokens"] == 3 * 9


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen3", "phi3", "gemma2"])
def test_the_compilers_gated_trajectory_serves_the_onnx_gate(model_type):
    """A decoder compile runs the gated model's greedy trajectory once: ParityReference.from_torch takes the
    compiler's gated_reference (HF generate, the prefill at generation's position ids) and holds what the
    ONNX gate's own loop computes, feeds and logits alike."""
    import numpy as np

    from fg_edge.compiler import gated_model_reference
    from fg_edge.exporters.onnx_parity import ParityReference

    gated = gated_model(model_type)
    torch_ref = gated_model_reference(gated, 6)
    assert torch_ref["tokens"].shape[1] == 7       # 6 cached steps after the prefill
    shared = ParityReference.from_torch(torch_ref, steps=6).decoder()
    own = ParityReference(gated, kind="causal-lm", steps=6).compute().decoder()
    for key in ("input_ids", "attention_mask", "position_ids"):
        np.testing.assert_array_equal(shared["prefill"][key], own["prefill"][key])
    valid = own["prefill"]["attention_mask"][..., None].astype(bool)
    np.testing.assert_allclose(np.where(valid, shared["prefill"]["logits"], 0),
                               np.where(valid, own["prefill"]["logits"], 0), atol=1e-5)
    assert len(shared["step_feeds"]) == len(own["step_feeds"]) == 6
    for a, b in zip(shared["step_feeds"], own["step_feeds"]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_allclose(np.stack(shared["step_logits"]), np.stack(own["step_logits"]), atol=1e-5)
    # a reference it cannot serve gives None (the pipeline then computes the ONNX gate's own)
    assert ParityReference.from_torch(torch_ref, steps=7) is None
    assert ParityReference.from_torch(gated_model_reference(gated_model("bert"), 6), steps=6) is None


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2"])
def test_baseline_exported_between_fold_and_prune(tmp_path, model_type):
    """The compile pipeline exports baseline.onnx from the model being compiled (compile_model's `on_folded`):
    the export re-lays its linears out and puts them back, and the compile then goes on with the same weights."""
    from fg_edge.exporters import onnx_export as ox
    from fg_edge.exporters.onnx_parity import ParityReference
    from fg_edge.exporters.pipeline import export_folded_baseline

    gated = gated_model(model_type)
    kind = "classification" if model_type in ENCODERS else "causal-lm"
    reference = ParityReference(gated, kind=kind, steps=6).compute()
    seen = []

    def on_folded(folded):
        linears = {n: m.weight.detach().clone() for n, m in folded.named_modules() if type(m) is nn.Linear}
        seen.append(export_folded_baseline(folded, tmp_path / "baseline.onnx", 17, kind))
        after = {n: m for n, m in folded.named_modules() if type(m) is nn.Linear}
        assert not any(isinstance(m, ox._TransposedLinear) for m in folded.modules())
        assert after.keys() == linears.keys()
        assert all(torch.equal(after[n].weight, w) for n, w in linears.items())

    dense_params = sum(p.numel() for p in dense_baseline(gated).parameters())
    compiled, _, report = compile_model(gated, decoder_steps=6, on_folded=on_folded)
    assert seen == [dense_params]                              # called once, with nothing removed yet
    # compile_model raises on a parity failure: the compile went on with the restored linears
    assert report["parity"]["logits_max_abs_diff"] <= report["parity"]["logits_tolerance"]
    assert sum(p.numel() for p in compiled.parameters()) < dense_params
    res = check_onnx_parity(None, tmp_path / "baseline.onnx", kind=kind, steps=6, reference=reference)
    assert res["passed"]


def test_pack_onnx_streams_external_data_into_one_file(tmp_path):
    """The pipeline keeps graphs as external data while it works and packs them at the end: the packed file must
    hold every tensor (initializers and ORT-quantizer Constant attributes alike) and compute the same outputs."""
    import onnxruntime as ort
    from onnx import TensorProto

    from fg_edge.exporters.onnx_export import pack_onnx

    _, compiled = _compiled("bert")
    export_onnx(compiled, tmp_path / "model.onnx", external_data=True)
    quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "model.int8.onnx")
    assert (tmp_path / "model.int8.onnx.data").exists()
    feeds = {"input_ids": np.array([[5, 6, 7, 8]]), "attention_mask": np.ones((1, 4), dtype=np.int64),
             "token_type_ids": np.zeros((1, 4), dtype=np.int64)}
    for name in ("model.onnx", "model.int8.onnx"):
        sess = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        feeds_used = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        before = sess.run(None, feeds_used)[0]
        del sess
        pack_onnx(tmp_path / name)
        assert not (tmp_path / (name + ".data")).exists()
        proto = onnx.load(str(tmp_path / name), load_external_data=False)
        onnx.checker.check_model(proto)
        assert all(t.data_location != TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert all(a.t.data_location != TensorProto.EXTERNAL for n in proto.graph.node for a in n.attribute)
        after = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, feeds_used)[0]
        np.testing.assert_array_equal(before, after)


def test_patches_restore_the_originals_also_on_error():
    import transformers.cache_utils as cache_utils
    import transformers.masking_utils as masking_utils
    from torch import _C

    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    from fg_edge.exporters.patches import (capture_initializers, export_patches, no_graph_shape_inference,
                                           no_onnxscript_function_scan)

    registry = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS
    before = (registry["sdpa"], registry["eager"], masking_utils.find_packed_sequence_indices,
              cache_utils.DynamicLayer.update, _C._jit_pass_onnx_deduplicate_initializers,
              _C._jit_pass_onnx_graph_shape_type_inference, onnx_proto_utils._add_onnxscript_fn)
    with pytest.raises(RuntimeError, match="boom"):
        with export_patches(), capture_initializers(), no_graph_shape_inference(), no_onnxscript_function_scan():
            assert cache_utils.DynamicLayer.update is not before[3]
            assert _C._jit_pass_onnx_graph_shape_type_inference is not before[5]
            assert onnx_proto_utils._add_onnxscript_fn is not before[6]
            raise RuntimeError("boom")
    after = (registry["sdpa"], registry["eager"], masking_utils.find_packed_sequence_indices,
             cache_utils.DynamicLayer.update, _C._jit_pass_onnx_deduplicate_initializers,
             _C._jit_pass_onnx_graph_shape_type_inference, onnx_proto_utils._add_onnxscript_fn)
    assert all(a is b for a, b in zip(before, after))


def test_the_onnxscript_scan_still_runs_when_a_custom_domain_is_registered(monkeypatch):
    """no_onnxscript_function_scan hands the bytes back untouched only while the registry holds torch's own
    domains; with another domain registered, torch's scan runs."""
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils, registration

    from fg_edge.exporters.patches import no_onnxscript_function_scan

    calls = []
    monkeypatch.setattr(onnx_proto_utils, "_add_onnxscript_fn", lambda b, o: calls.append(b) or b + b"!")
    with no_onnxscript_function_scan():
        assert onnx_proto_utils._add_onnxscript_fn(b"x", {}) == b"x" and not calls
        monkeypatch.setattr(registration.registry, "all_functions", lambda: {"aten::add", "mydomain::op"})
        assert onnx_proto_utils._add_onnxscript_fn(b"x", {}) == b"x!" and calls == [b"x"]


@pytest.mark.parametrize("patch", ["no_graph_shape_inference", "no_onnxscript_function_scan"])
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bert"])
def test_skipping_the_exporters_graph_shape_inference_leaves_the_final_graph_unchanged(tmp_path, monkeypatch,
                                                                                     model_type, patch):
    """no_graph_shape_inference and no_onnxscript_function_scan only save time: with torch's passes run, the
    written graph (nodes, inputs, outputs, initializers) is the same."""
    import contextlib

    import onnx
    from onnx import numpy_helper

    import fg_edge.exporters.patches as patches
    from fg_edge.exporters.onnx_export import export_onnx
    from fg_edge.testing import tiny_model

    def written(name):
        export_onnx(tiny_model(model_type), tmp_path / name)
        g = onnx.load(str(tmp_path / name)).graph
        return (list(g.node), list(g.input), list(g.output),
                {i.name: numpy_helper.to_array(i).tobytes() for i in g.initializer})

    skipped = written("skipped.onnx")
    monkeypatch.setattr(patches, patch, contextlib.nullcontext)
    assert written("inferred.onnx") == skipped


def test_quantize_and_ort_format_leave_cwd_and_logger_levels_as_they_were(tmp_path, monkeypatch, encoder_tokenizer):
    """No os.chdir and no logger level left changed (ORT's scratch files go to a temp folder of ours instead)."""
    import logging
    import os

    from fg_edge.exporters.quantize import QuantizeConfig

    _, compiled = _compiled("bert")
    info = export_onnx(compiled, tmp_path / "model.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root, ort_log = logging.getLogger(), logging.getLogger("ort_format_model")
    levels = (root.level, ort_log.level)
    seen = []
    real_chdir = os.chdir
    monkeypatch.setattr(os, "chdir", lambda p: seen.append(p) or real_chdir(p))
    settings = quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "model.int8.onnx",
                                     QuantizeConfig(include_lm_head=True, pre_process=True))
    assert settings["pre_process"] != "none (copied as exported)"
    feeds = calibration_feeds(["good w1 w2", "bad w3"], encoder_tokenizer, info.input_names)
    quantize_qdq_static(tmp_path / "model.onnx", tmp_path / "model.qdq.onnx", feeds, per_channel=True)
    convert_to_ort([tmp_path / "model.int8.onnx"], tmp_path)
    assert seen == [] and os.getcwd() == str(cwd) and not list(cwd.iterdir())
    assert (root.level, ort_log.level) == levels
    with pytest.raises(ConfigError, match="not both"):
        quantize_int8_dynamic(tmp_path / "model.onnx", tmp_path / "x.onnx", QuantizeConfig(), per_channel=True)


def test_shape_inference_dump_goes_to_our_folder(tmp_path, monkeypatch):
    from onnx import helper

    from fg_edge.exporters.patches import shape_inference_dump_into

    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch").mkdir()
    graph = helper.make_graph([], "g", [], [])
    with shape_inference_dump_into(tmp_path / "scratch"):
        onnx.save_model(helper.make_model(graph), "sym_shape_infer_temp.onnx")
    assert (tmp_path / "scratch" / "sym_shape_infer_temp.onnx").is_file()
    assert not (tmp_path / "sym_shape_infer_temp.onnx").exists()
