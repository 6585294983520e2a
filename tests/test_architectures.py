"""Architecture coverage (issue 10): every family added to the table goes train -> compile (fp32 + int8) -> ONNX
parity -> reload with uneven per-layer removal (layer 0 loses every head, layer 1 every FFN channel and half its
heads); model types that appear nowhere in fg-edge's code compile through a derived spec; layouts that do not
fit get a clear error, and a paper-granularity model_dir on any architecture compiles with its gates folded."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import sentiment_rows, tiny_tokenizer, write_tsv
from fg_edge.arch import ARCHITECTURES, SPEC_ATTR, ArchSpec, register_architecture, spec_for
from fg_edge.compiler import check_parity, compile_model, load_compiled
from fg_edge.errors import UnsupportedArchitectureError
from fg_edge.exporters.pipeline import CompileOptions, compile_model_dir
from fg_edge.formats.gate_config import GateConfig
from fg_edge.formats.train_args import TrainArgs
from fg_edge.gates.inject import gated_modules, inject_gates
from fg_edge.model_dir import save_model_dir
from fg_edge.testing import (DECODERS, NEW_FAMILIES, NONSTANDARD_CONFIGS, UNLISTED_CONFIGS, task_of, tiny_model,
                             unlisted_model)

PARITY = 1e-4          # the rule: max |Δ| <= 1e-4 · max(1, max |gated|)
CLOSED = -3.0
#: per layer: heads closed (layer 1: the second kv group of a GQA model) and FFN channels closed
HEADS = {0: [0, 1, 2, 3], 1: [2, 3]}
CHANNELS = {0: slice(None, None, 3), 1: slice(None)}


def _train(model, task: str, tmp_path, gate_config: GateConfig):
    """A few real training steps (the `fg-edge train` loop) so the family goes through injection, the sparsity
    costs and the optimiser, not only through the compiler."""
    from fg_edge.data.readers import load_classification, load_texts
    from fg_edge.train.loop import train

    rows = sentiment_rows(24, seed=3)
    if task == "classification":
        data = load_classification(write_tsv(tmp_path / "train.tsv", rows))
        tok = tiny_tokenizer("encoder")
    else:
        (tmp_path / "train.txt").write_text("\n\n".join(r[0] for r in rows))
        data = load_texts(tmp_path / "train.txt")
        tok = tiny_tokenizer("decoder")
    train(model, tok, gate_config, data, None, TrainArgs(steps=3, batch_size=4, max_length=16, progress=False))
    return tok


def _close(model, heads=HEADS, channels=CHANNELS, seed=0):
    """Open gates at seeded values in (0, 2), then close `heads` / `channels` per layer (structured gates)."""
    spec = spec_for(model)
    g = torch.Generator().manual_seed(seed)
    for name, gl in gated_modules(model).items():
        layer, _, inner = name.split(f"{spec.layers}.", 1)[1].partition(".")
        logits = gl.group_gate.logits.data
        logits.copy_(torch.rand(logits.shape, generator=g) * 2)
        logits[heads.get(int(layer), []) if inner == spec.o else channels.get(int(layer), slice(0))] = CLOSED
    return model.eval()


def _compile_dir(tmp_path, model, gate_config, tok, quantize="int8"):
    """`fg-edge compile` (the pipeline), decoders over 32 cached steps. The dense baseline (folded, nothing
    removed, exported in a child process: 15 s a family) does not depend on the architecture spec and is
    covered by tests/test_cli_compile.py, so it is left out here."""
    model_dir = save_model_dir(model, gate_config, tmp_path / "model_dir", tokenizer=tok)
    out = tmp_path / "compiled"
    options = CompileOptions(quantize=quantize, decoder_steps=32, baseline=False)
    return out, compile_model_dir(model_dir, out, options=options)


def _check_report(report, decoder: bool, source):
    assert report["architecture"]["source"] == source
    assert report["parity"]["max_abs_diff"] <= PARITY
    entry = report["onnx_parity"]["model.onnx"]
    assert entry["passed"] and entry["effective_tolerance"] == PARITY * max(1.0, entry["reference_max_abs"])
    assert entry["max_abs_diff"] <= entry["effective_tolerance"]
    if decoder:
        assert report["parity"]["decoder_steps"] == 32 and report["parity"]["tokens_identical"]
        assert entry["steps"] == 32 and entry["token_agreement"] == 1.0
    for name, q in (report["quantization"].get("files") or {}).items():   # int8 runs, is measured, not gated
        op = "MatMulNBits" if "int8-wo" in name else "MatMulInteger"
        assert q["quantized_ops"].get(op, 0) > 0, (name, q["quantized_ops"])
        assert q["vs_gated_model"]["check"] == "report-only"
        assert torch.isfinite(torch.tensor(q["vs_gated_model"]["max_abs_diff"]))


def _int8(decoder: bool) -> str:
    """The int8 export of a family: dynamic int8 for encoders; weight-only int8 for decoders (fg-edge refuses
    dynamic int8 activations for causal LMs, see the compile error)."""
    return "int8-wo" if decoder else "int8"


# -- the families of the table ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", NEW_FAMILIES)
def test_family_train_compile_int8_reload(tmp_path, model_type):
    task = task_of(model_type)
    model = tiny_model(model_type)
    gate_config = GateConfig(task=task)
    tok = _train(model, task, tmp_path, gate_config)
    _close(model)
    out, report = _compile_dir(tmp_path, model, gate_config, tok, quantize=_int8(model_type in DECODERS))

    _check_report(report, model_type in DECODERS, "table")
    layers = report["layers"]
    assert layers[0]["heads_after"] == 0 and layers[1]["ffn_after"] == 0          # uneven, both degenerate
    assert layers[1]["heads_after"] == 2 and layers[0]["ffn_after"] == 32
    if ARCHITECTURES[model_type].gqa:
        assert layers[1]["kv_heads_after"] == 1
    assert report["totals"]["params_removed"] > 0
    assert (out / f"model.{_int8(model_type in DECODERS)}.onnx").is_file()
    # reload from the folder alone: equal to the gated model over a padded batch and 32 cached greedy steps
    reloaded = load_compiled(out)
    parity = check_parity(model, reloaded, tol=1e-5, decoder_steps=32)
    assert parity["max_abs_diff"] <= 1e-5
    plan = json.loads((out / "compile_plan.json").read_text())
    assert plan["spec"]["family"] == ARCHITECTURES[model_type].family


def test_deberta_v3_shared_attention_keys():
    """share_att_key (DeBERTa-v3): the pos projections are q / k themselves, sliced with the heads."""
    model = tiny_model("deberta-v2", share_att_key=True)
    inject_gates(model, GateConfig(task="classification"))
    _close(model)
    _, plan, report = compile_model(model, tol=1e-5)
    assert plan.summary()["heads_removed"] == 6 and report["parity"]["max_abs_diff"] <= 1e-5


# -- the general path: model types that appear nowhere in fg-edge's code -------------------------------------
UNLISTED, NONSTANDARD = UNLISTED_CONFIGS, NONSTANDARD_CONFIGS


@pytest.mark.parametrize("model_type", sorted(UNLISTED))
def test_derived_spec_compiles_with_removal(tmp_path, model_type):
    assert model_type not in ARCHITECTURES
    model, task = unlisted_model(model_type)
    gate_config = GateConfig(task=task)
    inject_gates(model, gate_config)
    spec = spec_for(model)
    assert spec.source == "derived"
    _close(model)
    tok = tiny_tokenizer("decoder" if task == "causal-lm" else "encoder")
    quantize = _int8(task == "causal-lm") if model_type in ("starcoder2", "electra") else "none"
    out, report = _compile_dir(tmp_path, model, gate_config, tok, quantize=quantize)
    heads_kept = model_type in ("olmo2", "mpnet")
    _check_report(report, task == "causal-lm", "derived")
    assert "derived from the module tree" in report["architecture"]["spec"]
    totals = report["totals"]
    assert totals["ffn_channels_removed"] == 16 + 48
    if heads_kept:   # FFN channels go, closed heads stay zeroed; the report says why
        assert totals["heads_removed"] == 0 and totals["heads_zeroed_not_removed"] == 6
        assert report["architecture"]["removal"].startswith("FFN channels only (heads kept:")
    else:
        assert totals["heads_removed"] == 6 and report["layers"][0]["heads_after"] == 0
    reloaded = load_compiled(out)
    assert check_parity(model, reloaded, tol=1e-5, decoder_steps=8)["max_abs_diff"] <= 1e-5


def test_compiled_folder_reloads_with_its_recorded_spec(tmp_path, monkeypatch):
    """Reloading never re-derives: the spec in compile_plan.json is used (derivation switched off here)."""
    from fg_edge import arch_derive

    model, task = unlisted_model("opt")
    gate_config = GateConfig(task=task)
    inject_gates(model, gate_config)
    _close(model)
    out, _ = _compile_dir(tmp_path, model, gate_config, tiny_tokenizer("decoder"), quantize="none")

    def refuse(_model):
        raise AssertionError("load_compiled derived a spec")

    monkeypatch.setattr(arch_derive, "derive_spec", refuse)
    reloaded = load_compiled(out)
    assert reloaded.__dict__[SPEC_ATTR].source == "derived"
    assert check_parity(model, reloaded, tol=1e-5, decoder_steps=8)["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("model_type", sorted(NONSTANDARD))
def test_nonstandard_layout_is_a_clear_error(model_type):
    model, task = unlisted_model(model_type)
    with pytest.raises(UnsupportedArchitectureError) as exc:
        inject_gates(model, GateConfig(task=task))     # structured gates need a spec
    message = str(exc.value)
    assert repr(model_type) in message and "FG_EDGE_ARCH_SPECS" in message and "--target-modules" in message
    expected = {"gpt_neox": "query_key_value", "mixtral": "experts", "mamba": "no q/k/v linears"}[model_type]
    assert expected in message


def test_gated_model_that_does_not_run_is_a_clear_error():
    """X-MOD needs a language id the parity inputs do not give: a CompileError naming the model and the cause,
    before anything is folded (not a traceback from inside transformers)."""
    import transformers

    from fg_edge.errors import CompileError

    config = transformers.XmodConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=70, pad_token_id=1, num_labels=2)
    model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    inject_gates(model, GateConfig(task="classification"))
    with pytest.raises(CompileError, match=r"the gated XmodForSequenceClassification does not run on the parity "
                                           r"inputs.*ValueError: Input language unknown"):
        compile_model(model.eval())


def test_paper_gates_on_a_head_read_by_the_model_code(tmp_path):
    """Mamba (no attention, no spec) reads `lm_head.weight.dtype` in its forward: a gated lm_head passes its
    weight through, and folding it is exact. Its state-space cache has no ONNX graph in fg-edge: `fg-edge
    compile` says so instead of a traceback."""
    from fg_edge.errors import ExportError

    model, task = unlisted_model("mamba")
    model, gate_config = _paper(model, task, ["lm_head", "out_proj"])
    _, _, report = compile_model(model, tol=1e-5, decoder_steps=8)
    assert report["parity"]["max_abs_diff"] <= 1e-5 and report["parity"]["tokens_identical"]
    assert report["modules"]["lm_head"]["treatment"] == "fold only"
    with pytest.raises(ExportError, match="no KV cache"):
        _compile_dir(tmp_path, model, gate_config, tiny_tokenizer("decoder"), quantize="none")
    assert not (tmp_path / "compiled").exists()


def test_spec_that_does_not_fit_names_the_module():
    model = tiny_model("llama")
    model.config.head_dim = 4            # the checkpoint's shapes no longer match the config
    with pytest.raises(UnsupportedArchitectureError, match=r"layer 0: self_attn.q_proj maps 32 -> 32 features.*"
                                                           r"head_dim 4.*needs 32 -> 16"):
        spec_for(model)


# -- the fallback: paper granularity, gates on linears named by the user --------------------------------------
def _paper(model, task, targets, closed_rows=()):
    gate_config = GateConfig(task=task, granularity="paper", target_modules=targets)
    inject_gates(model, gate_config)
    g = torch.Generator().manual_seed(1)
    for name, gl in gated_modules(model).items():
        for gate in gl.gates():
            gate.logits.data = torch.rand(gate.logits.shape, generator=g) * 2 - 0.5
            gate.logits.data[::5] = CLOSED                      # zeros everywhere, removable or not
    return model.eval(), gate_config


def test_paper_fallback_on_a_nonstandard_layout_folds_exactly(tmp_path):
    model, task = unlisted_model("gpt_neox")
    model, gate_config = _paper(model, task, ["query_key_value", "dense_h_to_4h", "dense_4h_to_h"])
    out, report = _compile_dir(tmp_path, model, gate_config, tiny_tokenizer("decoder"),
                               quantize=_int8(True))
    _check_report(report, True, None)
    assert report["architecture"]["spec"] is None and report["architecture"]["removal"].startswith("none:")
    assert report["totals"]["params_removed"] == 0 and report["totals"]["params_zeroed_by_gates"] > 0
    assert {m["treatment"] for m in report["modules"].values()} == {"fold only"}
    assert len(report["modules"]) == 3 * 2
    assert check_parity(model, load_compiled(out), tol=1e-5, decoder_steps=8)["max_abs_diff"] <= 1e-5


def test_paper_fallback_on_a_derived_spec_removes_where_allowed(tmp_path):
    model, task = unlisted_model("starcoder2")
    model, gate_config = _paper(model, task, ["q_proj", "v_proj", "c_fc", "c_proj", "lm_head"])
    out, report = _compile_dir(tmp_path, model, gate_config, tiny_tokenizer("decoder"), quantize="none")
    _check_report(report, True, "derived")
    modules = report["modules"]
    assert modules["lm_head"]["treatment"] == "fold only"
    fc = modules["model.layers.0.mlp.c_fc"]
    assert fc["treatment"] == "fold + removal" and fc["rows_removed"] == fc["rows_closed"] > 0
    q = modules["model.layers.0.self_attn.q_proj"]
    assert q["treatment"] == "fold + removal" and q["cols_closed"] > 0 and q["cols_removed"] == 0
    assert report["totals"]["ffn_channels_removed"] > 0 and report["totals"]["params_zeroed_not_removed"] > 0


def test_register_architecture_from_data():
    derived = spec_for(unlisted_model("starcoder2")[0]).to_dict()
    try:
        entry = register_architecture("starcoder2", json.loads(json.dumps(derived)))
        assert isinstance(entry, ArchSpec) and entry.source == "table"
        model = unlisted_model("starcoder2")[0]
        inject_gates(model, GateConfig(task="causal-lm"))
        assert spec_for(model) is entry
        _close(model)
        _, _, report = compile_model(model, tol=1e-5, decoder_steps=4)
        assert report["architecture"]["source"] == "table" and report["totals"]["heads_removed"] == 6
    finally:
        ARCHITECTURES.pop("starcoder2", None)


def test_inspect_names_the_spec():
    from fg_edge.inspect import format_table, inspect_model

    for model, task, words in ((tiny_model("phi3"), "causal-lm", "phi3 (table entry)"),
                               (unlisted_model("opt")[0], "causal-lm", "opt (derived from the module tree)")):
        config = GateConfig(task=task)
        inject_gates(model, config)
        report = inspect_model(model, config)
        assert report.architecture.startswith(words) and report.to_dict()["architecture"] == report.architecture
        assert "architecture" in format_table(report) and words in format_table(report)
    model, task = unlisted_model("mixtral")
    model, config = _paper(model, task, ["q_proj"])
    report = inspect_model(model, config)
    assert report.architecture is None and "experts" in report.architecture_error
    assert "no spec fits" in format_table(report)


def test_gated_lm_head_tied_to_the_embedding_folds_into_its_own_copy(tmp_path):
    """A gate on a tied LM head scales the output projection only: folding it must not touch the embedding,
    and the compiled folder must reload untied."""
    model = tiny_model("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model, gate_config = _paper(model, "causal-lm", ["lm_head", "down_proj"])
    out, report = _compile_dir(tmp_path, model, gate_config, tiny_tokenizer("decoder"), quantize="none")
    assert report["modules"]["lm_head"]["treatment"] == "fold only"
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    reloaded = load_compiled(out)
    assert reloaded.lm_head.weight is not reloaded.model.embed_tokens.weight
    assert check_parity(model, reloaded, tol=1e-5, decoder_steps=8)["max_abs_diff"] <= 1e-5


def test_specs_from_a_json_file_named_by_the_environment(tmp_path, monkeypatch):
    """The CLI's way to name modules: $FG_EDGE_ARCH_SPECS, here granite declared "like" llama."""
    from fg_edge import arch

    path = tmp_path / "specs.json"
    path.write_text(json.dumps({"granite": {"like": "llama"}}))
    monkeypatch.setenv(arch.ENV_SPECS, str(path))
    try:
        model = unlisted_model("granite")[0]
        spec = spec_for(model)
        assert spec.source == "table" and spec.family == "granite" and spec.o == "self_attn.o_proj"
    finally:
        ARCHITECTURES.pop("granite", None)
        arch._loaded_env.discard(str(path))
    path.write_text("[1, 2]")
    monkeypatch.setenv(arch.ENV_SPECS, str(path))
    with pytest.raises(Exception, match="expected a JSON object"):
        spec_for(unlisted_model("granite")[0])
