"""`fg-edge inspect` and fg_edge.inspect: gate counts, what the compiler removes, JSON, PNG, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from fg_edge.arch import ARCHITECTURES, layers_of
from fg_edge.cli import cli
from fg_edge.formats.gate_config import GateConfig
from fg_edge.gates.math import open_probability
from fg_edge.gates.inject import inject_gates
from fg_edge.gates.stats import mark_trainable_, numel
from fg_edge.model_dir import GATES_FILE, save_model_dir
from fg_edge.testing import tiny_model

CLOSED = -3.0           # tanh(-3) + 0.5 < 0 -> eval gate exactly 0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _gated_dir(tmp_path, model_type, granularity, close, name=None, metadata=None, **overrides):
    """Inject gates into a tiny model, close gates with `close(blocks, spec)`, save a model_dir."""
    model = tiny_model(model_type, **overrides)
    task = "classification" if model_type in ("bert", "roberta", "distilbert") else "causal-lm"
    cfg = GateConfig(granularity=granularity, task=task)
    inject_gates(model, cfg)
    spec = ARCHITECTURES[model_type]
    with torch.no_grad():
        close(layers_of(model, spec), spec)
    path = tmp_path / (name or f"{model_type}-{granularity}")
    save_model_dir(model, cfg, path, metadata=metadata)
    return path


def _run(*args):
    result = CliRunner().invoke(cli, ["inspect", *map(str, args)])
    return result


def _inspect_json(path, *extra):
    result = _run(path, "--json", "-", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- structured granularity -----------------------------------------------------------------------------------
def _close_bert_structured(blocks, spec):
    blocks[0].get_submodule(spec.o).group_gate.logits[[1, 2]] = CLOSED          # heads 1 and 2 of layer 0
    blocks[1].get_submodule(spec.ffn_out).group_gate.logits[:10] = CLOSED       # FFN channels 0-9 of layer 1
    blocks[1].get_submodule(spec.ffn_out).group_gate.logits[10:12] = -0.5       # nearly closed, still open


def test_structured_encoder_counts_table_json_png(tmp_path):
    metadata = {   # the layout `fg-edge train` writes (abridged)
        "steps": 120, "epochs": 1.5, "wall_time_s": 12.3,
        "data": {"train": {"rows_used": 320}, "dev": {"rows_used": 64}},
        "metrics": {"dev_metric": "accuracy", "dev": {"accuracy": 0.75, "loss": 0.52}, "best_step": 100},
        "args": {"train_norms": False, "eval_batch_size": 64},
    }
    path = _gated_dir(tmp_path, "bert", "structured", _close_bert_structured, metadata=metadata)
    png = tmp_path / "out" / "gates.png"
    report_file = tmp_path / "out" / "inspect.json"
    import matplotlib

    backend = matplotlib.get_backend()
    result = _run(path, "--plot", png, "--json", report_file)
    assert result.exit_code == 0, result.output
    assert matplotlib.get_backend() == backend                       # plotting leaves the process backend alone
    out = result.stdout
    assert "bert (classification)" in out and "structured granularity" in out
    assert "2/8 attention heads" in out and "10/96 FFN channels" in out
    assert "120 steps (1.5 epochs) on 320 rows" in out and "dev accuracy 0.7500 (checkpoint of step 100)" in out
    assert "layer 0: heads 1-2" in out                                        # the compiler's plan
    row0 = next(line for line in out.splitlines() if line.startswith("0 "))
    assert "2/4 (50.0%)" in row0 and "2/4 [1,2]" in row0

    data = json.loads(report_file.read_text())
    assert data["model_type"] == "bert" and data["gate_config"]["granularity"] == "structured"
    l0, l1 = data["layers"]
    assert l0["gates"]["heads"]["closed"] == 2 and l0["gates"]["heads"]["count"] == 4
    assert l0["heads"]["removed"] == [1, 2] and l0["heads"]["gate_values"][1] == 0.0
    assert l0["ffn_channels"]["removed"] == []
    assert l1["gates"]["channels"]["closed"] == 10
    assert l1["ffn_channels"]["removed"] == list(range(10))
    assert l1["heads"]["removed"] == []
    assert data["heads"] == {"total": 8, "removed": 2, "zeroed_not_removed": 0}
    assert data["ffn_channels"]["removed"] == 10
    assert data["gates_closed"] == 12 and data["gates_total"] == 2 * (4 + 48)
    assert data["closed_fraction"] == pytest.approx(12 / 104)
    # expected sparsity of a layer's heads: 1 - mean P(open); P(open) of a closed gate (logit -3) is 0.16, not 0
    p_closed, p_open = open_probability(torch.tanh(torch.tensor([CLOSED, 1.0]))).tolist()
    assert l0["gates"]["heads"]["expected_sparsity"] == pytest.approx(1 - (2 * p_closed + 2 * p_open) / 4, abs=0.01)
    assert data["removal_source"] == "fg_edge.compiler.plan_removal"
    assert data["plan"]["layers"][0]["heads_removed"] == [1, 2]
    assert data["training"] == {"steps": 120, "epochs": 1.5, "wall_time_s": 12.3, "dev_metric": "accuracy",
                                "dev_value": 0.75, "best_step": 100, "train_rows": 320}

    # trainable parameters: exactly what mark_trainable would train on this model
    from fg_edge import load
    from fg_edge.model_dir import read_gate_config

    model = load(path)
    assert data["trainable_params"] == numel(mark_trainable_(model, read_gate_config(path)))
    assert data["total_params"] == sum(p.numel() for p in model.parameters())
    gate_params = sum(s["count"] for s in data["gates_by_kind"].values())
    assert data["base_params"] == data["total_params"] - gate_params
    assert data["trainable_fraction"] == pytest.approx(data["trainable_params"] / data["base_params"])
    assert set(data["trainable_parts"]) == {"gates", "gated biases", "task head"}

    blob = png.read_bytes()
    assert blob.startswith(PNG_MAGIC)
    import matplotlib.image

    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400


def test_gqa_decoder_structured(tmp_path):
    """llama, 4 query heads in 2 kv groups: closing one head per group removes both; a lone closed head in one
    group only is kept zeroed (the compiler keeps GQA groups even); a whole closed group removes its kv head."""
    def close(blocks, spec):
        blocks[0].get_submodule(spec.o).group_gate.logits[[1, 2]] = CLOSED    # 1 of 2 heads in each kv group
        blocks[1].get_submodule(spec.o).group_gate.logits[[2, 3]] = CLOSED    # all of kv group 1
        blocks[2].get_submodule(spec.o).group_gate.logits[3] = CLOSED         # 1 head of one group only
        blocks[2].get_submodule(spec.ffn_out).group_gate.logits[[5, 7]] = CLOSED

    path = _gated_dir(tmp_path, "llama", "structured", close, num_hidden_layers=3)
    data = _inspect_json(path)
    l0, l1, l2 = data["layers"]
    assert l0["heads"]["removed"] == [1, 2] and l0["kv_heads"]["removed"] == []
    assert l1["heads"]["removed"] == [2, 3] and l1["kv_heads"]["removed"] == [1]
    assert l2["heads"]["removed"] == [] and l2["heads"]["zeroed_not_removed"] == [3]
    assert l2["gates"]["heads"]["closed"] == 1
    assert l2["ffn_channels"]["removed"] == [5, 7]
    assert data["kv_heads"] == {"total": 6, "removed": 1}
    assert data["trainable_parts"] == ["gates"]                                # causal LM, no biases: gates only
    assert data["trainable_params"] == 3 * (4 + 48)

    out = _run(path).stdout
    assert "2 kv heads" in out and "+1 closed but kept zeroed" in out
    assert "layer 1: heads 2-3; kv head 1" in out


# -- paper granularity ----------------------------------------------------------------------------------------
def test_paper_encoder(tmp_path):
    def close(blocks, spec):
        b0, b1 = blocks
        b0.get_submodule(spec.q).row_gate.logits[:8] = CLOSED      # q rows of head 0: q·k only, head stays
        b0.get_submodule(spec.o).col_gate.logits[8:16] = CLOSED    # o columns of head 1 -> head 1 goes
        b1.get_submodule(spec.v).row_gate.logits[24:32] = CLOSED   # v rows of head 3 -> head 3 goes
        b1.get_submodule(spec.v).row_gate.logits[0:4] = CLOSED     # half of head 0's v rows: stays
        b1.get_submodule(spec.ffn_in[0]).row_gate.logits[:5] = CLOSED       # channels 0-4
        b1.get_submodule(spec.ffn_out).col_gate.logits[40] = CLOSED         # channel 40

    path = _gated_dir(tmp_path, "bert", "paper", close)
    png = tmp_path / "paper.png"
    data = _inspect_json(path, "--plot", png)
    l0, l1 = data["layers"]
    assert set(l0["gates"]) == {"rows", "cols"}
    assert l0["gates"]["rows"]["closed"] == 8 and l0["gates"]["cols"]["closed"] == 8
    assert l1["gates"]["rows"]["closed"] == 12 + 5 and l1["gates"]["cols"]["closed"] == 1
    assert l0["heads"]["removed"] == [1] and l1["heads"]["removed"] == [3]
    assert l0["heads"]["gate_values"] is None
    assert l1["ffn_channels"]["removed"] == [0, 1, 2, 3, 4, 40]
    assert data["gates_closed"] == 8 + 8 + 17 + 1
    # per-module listing: the o projection of layer 0 has 8 of its 32 columns closed -> 25% of its weights zeroed
    o0 = next(m for m in data["modules"] if m["name"] == "bert.encoder.layer.0.attention.output.dense")
    assert o0["layer"] == 0 and o0["gates"]["cols"]["closed"] == 8
    assert o0["zeroed_weight_fraction"] == pytest.approx(0.25)
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_paper_gqa_decoder_swiglu(tmp_path):
    def close(blocks, spec):
        b0, b1 = blocks
        b0.get_submodule(spec.v).row_gate.logits[8:16] = CLOSED    # v rows of kv head 1 -> query heads 2, 3
        b1.get_submodule(spec.o).col_gate.logits[0:8] = CLOSED     # o columns of head 0
        b1.get_submodule(spec.o).col_gate.logits[24:32] = CLOSED   # o columns of head 3 (one per kv group)
        b1.get_submodule("mlp.gate_proj").row_gate.logits[5] = CLOSED       # SwiGLU: either input row suffices
        b1.get_submodule("mlp.up_proj").row_gate.logits[7] = CLOSED

    path = _gated_dir(tmp_path, "llama", "paper", close)
    data = _inspect_json(path)
    l0, l1 = data["layers"]
    assert l0["heads"]["removed"] == [2, 3] and l0["kv_heads"]["removed"] == [1]
    assert l1["heads"]["removed"] == [0, 3] and l1["kv_heads"]["removed"] == []
    assert l1["ffn_channels"]["removed"] == [5, 7]


def test_module_listing_flag(tmp_path):
    path = _gated_dir(tmp_path, "bert", "structured", _close_bert_structured)
    out = _run(path, "--modules").stdout
    assert "bert.encoder.layer.0.attention.output.dense" in out and "weights zeroed" in out


# -- architectures outside the table --------------------------------------------------------------------------
def test_target_modules_outside_table(tmp_path):
    """electra is not in the table: its spec is derived from the module tree, and inspect names it."""
    import transformers

    config = transformers.ElectraConfig(vocab_size=120, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=48, max_position_embeddings=64)
    assert config.model_type not in ARCHITECTURES
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    cfg = GateConfig(granularity="paper", target_modules=["query", "value"])
    inject_gates(model.eval(), cfg)
    with torch.no_grad():
        model.electra.encoder.layer[1].attention.self.value.row_gate.logits[:3] = CLOSED
    save_model_dir(model, cfg, tmp_path / "electra")

    png = tmp_path / "electra.png"
    result = _run(tmp_path / "electra", "--modules", "--plot", png, "--json", tmp_path / "electra.json")
    assert result.exit_code == 0, result.output
    assert "electra (derived from the module tree)" in result.stdout
    row = next(line for line in result.stdout.splitlines()
               if line.startswith("electra.encoder.layer.1.attention.self.value"))
    assert "3/32 (9.4%)" in row
    data = json.loads((tmp_path / "electra.json").read_text())
    assert data["per_layer"] is True and data["plan"]["spec"]["source"] == "derived"
    assert data["architecture"].startswith("electra (derived")
    assert [m["name"].rsplit(".", 1)[-1] for m in data["modules"]] == ["query", "value"] * 2
    assert data["gates_closed"] == 3
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_target_modules_on_a_layout_no_spec_fits(tmp_path):
    """GPT-NeoX's per-head interleaved query_key_value fits no spec: a per-module listing, and why."""
    import transformers

    config = transformers.GPTNeoXConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    cfg = GateConfig(granularity="paper", target_modules=["query_key_value"], task="causal-lm")
    inject_gates(model.eval(), cfg)
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.query_key_value.row_gate.logits[:3] = CLOSED
    save_model_dir(model, cfg, tmp_path / "neox")
    result = _run(tmp_path / "neox", "--json", tmp_path / "neox.json")
    assert result.exit_code == 0, result.output
    assert "per-module listing" in result.stdout and "no spec fits" in result.stdout
    row = next(line for line in result.stdout.splitlines()
               if line.startswith("gpt_neox.layers.1.attention.query_key_value"))
    assert "3/96 (3.1%)" in row
    data = json.loads((tmp_path / "neox.json").read_text())
    assert data["per_layer"] is False and data["layers"] == [] and data["plan"] is None
    assert data["architecture"] is None and "query_key_value" in data["architecture_error"]


# -- library ----------------------------------------------------------------------------------------------------
def test_inspect_model_leaves_model_untouched():
    from fg_edge.inspect import format_table, inspect_model

    model = tiny_model("bert")
    cfg = GateConfig(granularity="structured")
    inject_gates(model, cfg)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = inspect_model(model, cfg)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(torch.equal(state[n], p) for n, p in model.named_parameters())
    assert report.heads_removed == 0 and report.gates_closed == 0
    assert "layer" in format_table(report)
    json.dumps(report.to_dict())                                              # JSON-serialisable


def test_training_metadata_variants(tmp_path):
    """Norms count as trainable when training used --train-norms; other training.json layouts: best effort."""
    from fg_edge.inspect import summarize_training

    path = _gated_dir(tmp_path, "llama", "structured", lambda blocks, spec: None,
                      metadata={"steps": 10, "args": {"train_norms": True}})
    data = _inspect_json(path)
    n_norm = sum(32 for _ in range(2 * 2 + 1))                                 # 2 RMSNorms per block + final
    assert data["trainable_parts"] == ["gates", "norms"]
    assert data["trainable_params"] == 2 * (4 + 48) + n_norm
    assert summarize_training({"steps": 5, "dev": {"f1": 0.5}}) == {"steps": 5, "dev": {"f1": 0.5}}
    assert summarize_training({"eval_loss": 1.25, "note": "x"}) == {"dev": {"eval_loss": 1.25}}
    assert summarize_training({}) == {}


# -- bad input -----------------------------------------------------------------------------------------------
def _assert_clean_failure(result, *fragments):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_missing_folder(tmp_path):
    _assert_clean_failure(_run(tmp_path / "nope"), "Error:", "no such model_dir")


def test_not_a_model_dir(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    _assert_clean_failure(_run(folder), "Error:", "missing config.json")


def test_corrupted_gate_file(tmp_path):
    path = _gated_dir(tmp_path, "bert", "structured", lambda blocks, spec: None)
    (path / GATES_FILE).write_bytes(b"this is not a safetensors file")
    _assert_clean_failure(_run(path), "Error:", GATES_FILE)


def test_gate_file_for_another_model(tmp_path):
    path = _gated_dir(tmp_path, "bert", "structured", lambda blocks, spec: None)
    other = _gated_dir(tmp_path, "bert", "paper", lambda blocks, spec: None)
    (path / GATES_FILE).write_bytes((other / GATES_FILE).read_bytes())
    _assert_clean_failure(_run(path), "Error:", "do not match")


def test_help_has_example():
    result = CliRunner().invoke(cli, ["inspect", "--help"])
    assert result.exit_code == 0
    assert "fg-edge inspect runs/minilm --plot" in result.output


def test_plot_summary_row_shows_kept_shares_and_value_histogram():
    """The top row of the plot: kept / removed shares per layer (heads and FFN channels) as the compiler plans them,
    and a histogram that counts every head and channel gate."""
    from matplotlib.figure import Figure

    from fg_edge.inspect import inspect_model
    from fg_edge.inspect.plot import _draw_histogram, _draw_kept_bars
    from fg_edge.testing import gated_tiny_model

    model, cfg = gated_tiny_model("bert", {1: [0, 1]}, {0: slice(None, None, 2)})   # 4 heads, 48 channels
    report = inspect_model(model, gate_config=cfg)
    ax = Figure().subplots()
    _draw_kept_bars(ax, report)
    kept = [p.get_width() for p in ax.patches]
    # bars: heads kept (layer 0, 1), heads removed, FFN kept, FFN removed
    assert kept[:2] == [100.0, 50.0] and kept[4:6] == [50.0, 100.0]
    ax = Figure().subplots()
    _draw_histogram(ax, report)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["head gates (2/8 exactly 0)", "FFN channel gates (24/96 exactly 0)"]
