"""fg-edge compiler: fold the gates into the weights and physically remove closed heads and FFN channels, exactly.

    compiled, plan, report = compile_model(gated_model)        # deep copy; raises ParityError on disagreement
    save_compiled(compiled, plan, report, "out/compiled", tokenizer=tok)
    model = load_compiled("out/compiled")                      # no gates, no original model needed

Passes (one function each, see `passes`): plan_removal -> merge_adapters_ -> fold_gates_ -> prune_ffn_ ->
prune_heads_ -> check_parity. The rules of what may be removed are in `plan` (docs/DESIGN.md §3).

Compiled folder format (format version 1)
-----------------------------------------
``config.json``
    The original HF config (global sizes unchanged: ``num_attention_heads``, ``intermediate_size`` … are those
    of the uncompiled model) plus

    * ``fg_edge_layers``: the per-layer shape record, one dict per block in order:
      ``num_heads``, ``num_kv_heads``, ``head_dim``, ``ffn_size`` (what the block really has),
      ``attention`` / ``ffn`` ("standard", or "empty" when every head / channel went: the block then outputs the
      folded output-projection bias), and for decoders ``kv_cache`` = {``num_heads``, ``head_dim``} (what the
      block appends to the KV cache per token; an empty attention appends a (1, 1) zero placeholder so the cache
      length stays right). Everything downstream (export, KV-cache shapes, runtime, reload) follows this record.
      Empty (``[]``) when no architecture spec fit and the gates were only folded: every layer keeps the
      config's sizes.
    * ``fg_edge_note``: one sentence for readers without fg-edge: which layers differ, and how to load the folder
    * ``fg_edge_inputs``: how training fed the model (``max_length``, ``text_column``, ``text_pair_column``,
      ``label_column``, from training.json), which run / eval follow
    * ``fg_edge_task``: "classification" (AutoModelForSequenceClassification) or "causal-lm" (AutoModelForCausalLM)
    * ``fg_edge_compiled_format_version``: 1
``fg_edge_compiled.safetensors``
    The folded, pruned weights (``save_pretrained(safe_serialization=True)``, renamed; tied tensors stored once).
    Tensor names are the HF ones; an emptied attention / FFN keeps only ``<o or ffn_out>.bias``. Not named
    ``model.safetensors`` on purpose: a plain ``from_pretrained`` then finds no weights and fails, where it used to
    load random ones with ``ignore_mismatched_sizes=True``. (fg-edge 0.1 folders with ``model.safetensors`` and
    ``fg_edge_plan`` in config.json still load.)
``compile_plan.json``
    Per layer: original ``num_heads``, ``num_kv_heads``, ``head_dim``, ``ffn_size`` and the removed indices
    ``heads_removed``, ``kv_heads_removed``, ``ffn_removed``, plus ``heads_zeroed`` (closed heads kept so GQA groups
    stay even: zeroed, not removed); ``spec``: the architecture spec used (``fg_edge.arch.ArchSpec.to_dict``, a table
    entry or derived from the module tree; reloading uses it), ``null`` with no ``layers`` when no spec fit and the
    gates were only folded; ``removal``: what was removed ("heads and FFN channels", "FFN channels only (heads
    kept: why)", or "none: why").
``compile_report.json``
    Params and FLOPs before/after per layer (reference shape batch 1 × 128 tokens), params zeroed by gates vs
    physically removed, the FLOP ratio (speed-up ceiling), heads / channels removed and the parity figures;
    ``architecture`` (the spec used: one line, its source "table" / "derived", its fields, what was removed) and
    ``modules`` (per gated module: "fold + removal" or "fold only", rows / columns closed and removed).
``tokenizer files``
    When a tokenizer was given.

Loading with plain ``AutoModel*.from_pretrained`` fails (no weights under its file names; the shapes differ from
the config anyway); use
`load_compiled`, which builds the model from the config (eager attention), resizes each block per
``fg_edge_layers`` and loads the weights strictly.
"""

from fg_edge.compiler.parity import check_parity
from fg_edge.compiler.passes import (compile_model, fold_gates_, gated_model_reference, merge_adapters_, prune_ffn_,
                                    prune_heads_)
from fg_edge.compiler.plan import CompilePlan, LayerPlan, plan_removal
from fg_edge.compiler.report import format_report
from fg_edge.compiler.saving import load_compiled, save_compiled

__all__ = [
    "CompilePlan", "LayerPlan", "check_parity", "compile_model", "fold_gates_", "format_report",
    "gated_model_reference", "load_compiled", "merge_adapters_", "plan_removal", "prune_ffn_", "prune_heads_", "save_compiled",
]
