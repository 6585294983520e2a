"""`fg-edge train`: learn gates on a pretrained model and write a model_dir.

Order of work, so that bad input fails fast and leaves nothing behind: check the output folder → build and
validate the gate config and training arguments → resolve the model source (no weights read) → read and check
the data files → load the model (fg_edge.sources.load_pretrained) → train → write the model_dir atomically
(fg_edge.model_dir.save_model_dir).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Optional

import click

from fg_edge.formats.gate_config import ADAPTER_MODULES, GRANULARITIES
from fg_edge.formats.names import TASKS
from fg_edge.cli.options import (label_config, label_names_option, no_header_option, overwrite_option, progress_option,
                                read_train_dev, show_progress)
from fg_edge.formats.train_args import MIXED_PRECISIONS, SPARSITY_CONTROLS, SPARSITY_UNITS

log = logging.getLogger(__name__)

#: Adapter rank when --adapter-rank is not given. Classification: rank-8 adapters inside the gates give the frozen
#: encoder capacity to make up for what closed heads / channels remove; they are part of the best measured
#: configuration (see the comment on TrainArgs' learning rates: 80.3% vs 79.5% dev accuracy on SST-2, together
#: with the other changes listed there). Causal LM: none (not measured there).
DEFAULT_ADAPTER_RANK = {"classification": 8, "causal-lm": 0}


def _arg_help(name: str) -> str:
    """The help text of a TrainArgs field (+ its default) — TrainArgs is the one place defaults live."""
    from fg_edge.formats.train_args import TrainArgs

    f = {f.name: f for f in dataclasses.fields(TrainArgs)}[name]
    default = f.default
    shown = "" if default is None or isinstance(default, bool) else f" [default: {default:g}]" \
        if isinstance(default, float) else f" [default: {default}]"
    return f.metadata["help"] + shown


def _gate_help(name: str) -> str:
    from fg_edge.formats.gate_config import GateConfig

    f = {f.name: f for f in dataclasses.fields(GateConfig)}[name]
    return f.metadata["help"]


def _configs(task: str, teacher_path: Optional[Path], train_options: dict, gate_options: dict):
    """(GateConfig, TrainArgs) from the command line, or a UsageError naming the options that clash."""
    from fg_edge.errors import ConfigError
    from fg_edge.formats.gate_config import GateConfig
    from fg_edge.formats.train_args import TrainArgs

    given = {k: v for k, v in train_options.items() if v is not None}
    if "epochs" in given and "steps" in given:
        raise click.UsageError("give --epochs or --steps, not both")
    if task == "classification" and given.get("distill") and teacher_path is None:
        raise click.UsageError("--distill for --task classification needs --teacher DIR (a fine-tuned dense "
                               "classifier, e.g. from `fg-edge finetune`); the base model has no trained head")
    if teacher_path is not None and task != "classification":
        raise click.UsageError("--teacher applies to --task classification; causal LMs distil from the dense base "
                               "model with --distill")
    if teacher_path is not None:
        given["distill"] = True
    modules = gate_options.pop("target_modules")
    gate_options["target_modules"] = [m.strip() for m in modules.split(",") if m.strip()] if modules else None
    if gate_options["adapter_rank"] is None:
        gate_options["adapter_rank"] = DEFAULT_ADAPTER_RANK[task]
    try:
        return GateConfig(**gate_options), TrainArgs(**given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _load_models(resolved, task: str, train_data, label_names: Optional[str], teacher_path: Optional[Path],
                 trust_remote_code: bool, seed: int, tokenizer: Optional[str] = None):
    """(model with its label names, tokenizer, teacher or None); label names are checked before anything loads."""
    from fg_edge.sources import load_pretrained

    num_labels = train_data.num_labels if task == "classification" else None
    labels = label_config(train_data, label_names) if task == "classification" else None
    model, tokenizer = load_pretrained(resolved, task, num_labels=num_labels, trust_remote_code=trust_remote_code,
                                       seed=seed, tokenizer=tokenizer)
    if labels is not None:
        model.config.update(labels)
    teacher = None
    if teacher_path is not None:
        from fg_edge.train.teacher import load_teacher

        teacher = load_teacher(teacher_path, model, trust_remote_code=trust_remote_code)
    return model, tokenizer, teacher


def _metadata(model_source: str, task: str, train_data, dev_data, result, args, gate_config, max_train,
              max_dev, teacher_path=None, columns: Optional[dict] = None) -> dict:
    from fg_edge import __version__

    metrics = result.to_dict()
    history = metrics.pop("history")
    data = {"train": {**train_data.summary(), "max_rows": max_train}}
    if dev_data is not None:
        data["dev"] = {**dev_data.summary(), "max_rows": max_dev}
    return {
        "fg_edge_version": __version__,
        "command": " ".join(["fg-edge"] + sys.argv[1:]) if sys.argv else None,
        "model": model_source,
        "task": task,
        "teacher": str(teacher_path) if teacher_path is not None else None,
        "teacher_seconds": round(result.teacher_seconds, 2),
        "data": data,
        # how the model was fed: `fg-edge compile` carries this into the compiled folder (names.INPUTS_KEY)
        "inputs": {"max_length": args.max_length, **{k: v for k, v in (columns or {}).items() if v}},
        "steps": result.steps,
        "epochs": result.epochs,
        "wall_time_s": round(result.wall_time_s, 2),
        "processes": _process_count(),
        "fsdp": result.fsdp or {"enabled": False},
        "metrics": {"dev_metric": result.dev_metric_name, "dev": result.dev_metrics, "best_step": result.best_step,
                    "best_at_target": result.best_at_target, "train_loss": result.train_loss,
                    "train_loss_start": result.train_loss_start},
        "sparsity": {"target": gate_config.target_sparsity, "unit": result.sparsity_unit,
                     "measured": result.sparsity_measured,
                     "block_params_removed_share": result.block_params_removed_share,
                     "expected": result.expected_sparsity,
                     "closed_gate_fraction": result.closed_gate_fraction, "closed_gates": result.closed_gates,
                     "counts": "gates whose eval value is exactly 0 (heads / FFN channels / rows / columns)"},
        "trainable_params": {"count": result.trainable_params, "base_params": result.base_params,
                             "percent": result.trainable_percent},
        "args": args.to_dict(),
        "gate_config": gate_config.to_dict(),
        "history": history,
        "result": metrics,
    }


def _process_count() -> int:
    from accelerate import PartialState

    return PartialState().num_processes


def _summary_lines(result, output: Path) -> list[str]:
    lines = [f"wrote {output}",
             f"  steps {result.steps} ({result.epochs:.2f} epochs) in {result.wall_time_s:.1f} s"]
    if result.dev_metric is not None:
        lines.append(f"  dev {result.dev_metric_name} {result.dev_metric:.4f} (checkpoint of step {result.best_step})")
    closed = ", ".join(f"{k} {v['closed']}/{v['total']}" for k, v in result.closed_gates.items())
    if result.block_params_removed_share is not None:
        lines.append(f"  block parameters removed {100 * result.block_params_removed_share:.1f}% (target "
                     f"{100 * result.target_sparsity:g}%); gates closed {100 * result.closed_gate_fraction:.1f}% "
                     f"({closed})")
    else:
        lines.append(f"  expected sparsity {result.expected_sparsity:.3f} (target {result.target_sparsity:g}); "
                     f"gates closed {100 * result.closed_gate_fraction:.1f}% ({closed})")
    lines.append(f"  trainable parameters {result.trainable_params:,} ({result.trainable_percent:.3f}% of "
                 f"{result.base_params:,})")
    return lines


@click.command(context_settings={"max_content_width": 110})
@click.argument("model")
@click.option("--task", type=click.Choice(TASKS), required=True, help="What the model is trained for.")
@click.option("--train", "train_path", required=True,
              help="Training data: .tsv/.csv (header required), .jsonl, .txt (causal-lm), or hf:NAME[@SPLIT].")
@click.option("--dev", "dev_path", help="Dev data (same format) for periodic evaluation and checkpoint choice.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="model_dir to write (must not exist unless --overwrite).")
@overwrite_option
@click.option("--format", "data_format", type=click.Choice(["auto", "tsv", "csv", "jsonl", "text"]), default="auto",
              show_default=True, help="Data file format (auto: from the extension).")
@click.option("--text-column", default="text", show_default=True, help="Column holding the text.")
@click.option("--text-pair-column", default=None, help="Second text column for sentence-pair tasks.")
@click.option("--label-column", default="label", show_default=True,
              help="Column holding the label (integers, or strings mapped to ids in sorted order).")
@label_names_option
@no_header_option
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="structured", show_default=True,
              help=_gate_help("granularity"))
@click.option("--target-sparsity", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.4, show_default=True,
              help=_gate_help("target_sparsity"))
@click.option("--lambda", "sparsity_lambda", type=click.FloatRange(min=0.0), default=50.0, show_default=True,
              help=_gate_help("sparsity_lambda"))
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("lr"))
@click.option("--gate-lr", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("gate_lr"))
@click.option("--head-lr", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("head_lr"))
@click.option("--epochs", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("epochs"))
@click.option("--steps", type=click.IntRange(min=1), help=_arg_help("steps"))
@click.option("--batch-size", type=click.IntRange(min=1), help=_arg_help("batch_size"))
@click.option("--max-length", type=click.IntRange(min=2), help=_arg_help("max_length"))
@click.option("--max-train", type=click.IntRange(min=1),
              help="Use N training rows (classification) or N token blocks (causal-lm), sampled with --seed.")
@click.option("--max-dev", type=click.IntRange(min=1), help="Use N dev rows / blocks.")
@click.option("--eval-every", type=click.IntRange(min=1), help=_arg_help("eval_every"))
@click.option("--sparsity-warmup", "sparsity_warmup_steps", type=click.IntRange(min=0),
              help=_arg_help("sparsity_warmup_steps"))
@click.option("--seed", type=click.IntRange(min=0), help=_arg_help("seed"))
@click.option("--adapter-rank", type=click.IntRange(min=0), default=None,
              help=_gate_help("adapter_rank") + " [default: " + ", ".join(
                  f"{r} for {t}" for t, r in DEFAULT_ADAPTER_RANK.items()) + "]")
@click.option("--scale-gates", is_flag=True, help=_gate_help("scale_gates"))
@click.option("--target-modules", default=None, help="Comma-separated module-name suffixes (--granularity paper).")
@click.option("--train-biases/--freeze-biases", default=True, show_default=True, help=_gate_help("train_biases"))
@click.option("--train-norms/--freeze-norms", default=None, help=_arg_help("train_norms"))
@click.option("--distill", is_flag=True, default=None, help=_arg_help("distill"))
@click.option("--temperature", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("temperature"))
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), default=None,
              help="Classification: distil from this fine-tuned dense classifier (any HF sequence-classification "
                   "folder sharing the base model's tokenizer, e.g. from `fg-edge finetune`); loss = "
                   "(1-α)·CE + α·KL at --temperature.")
@click.option("--distill-alpha", type=click.FloatRange(0.0, 1.0), help=_arg_help("distill_alpha"))
@click.option("--adapter-modules", type=click.Choice(ADAPTER_MODULES), default="all", show_default=True,
              help=_gate_help("adapter_modules"))
@click.option("--sparsity-unit", type=click.Choice(SPARSITY_UNITS), help=_arg_help("sparsity_unit"))
@click.option("--sparsity-control", type=click.Choice(SPARSITY_CONTROLS), help=_arg_help("sparsity_control"))
@click.option("--sparsity-pressure", type=click.Choice(["params", "uniform"]), help=_arg_help("sparsity_pressure"))
@click.option("--controller-lr", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("controller_lr"))
@click.option("--final-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), help=_arg_help("final_fraction"))
@click.option("--train-base/--freeze-base", default=None, help=_arg_help("train_base"))
@click.option("--base-lr", type=click.FloatRange(min=0.0, min_open=True), help=_arg_help("base_lr"))
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISIONS), help=_arg_help("mixed_precision"))
@click.option("--fsdp", is_flag=True, default=None, help=_arg_help("fsdp"))
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the model folder / hub.")
@click.option("--tokenizer", "tokenizer_source", default=None, metavar="PATH|ID",
              help="Tokenizer to use instead of the model's own: a llama2.c tokenizer .bin, a GGUF file, a "
                   "tokenizer.json, a HF folder or a hub id.")
@progress_option
def train_cmd(model: str, task: str, train_path: str, dev_path: Optional[str], output: Path, overwrite: bool,
              data_format: str, text_column: str, text_pair_column: Optional[str], label_column: str,
              label_names: Optional[str], no_header: bool,
              granularity: str, target_sparsity: float, sparsity_lambda: float, adapter_rank: int,
              scale_gates: bool, target_modules: Optional[str], train_biases: bool, trust_remote_code: bool,
              max_train: Optional[int], max_dev: Optional[int], teacher_path: Optional[Path],
              adapter_modules: str, tokenizer_source: Optional[str], **train_options) -> None:
    """Learn FineGates on MODEL (a local HF folder, GGUF file, llama2c .bin, or hub id) and write a model_dir.

    \b
    Example: SST-2 sentiment on all-MiniLM-L6-v2, 40% of the transformer blocks' parameters removed:
      fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification \\
          --train SST-2/train.tsv --dev val.tsv --max-train 4000 \\
          --target-sparsity 0.4 --output runs/minilm-sst2
    The best recipe measured (README, benchmarks/accuracy): a dense teacher first, then distil into the gates:
      fg-edge finetune sentence-transformers/all-MiniLM-L6-v2 --train train.tsv --dev val.tsv -o runs/teacher
      fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification --train train.tsv \\
          --dev val.tsv --teacher runs/teacher --train-base --target-sparsity 0.4 --output runs/gated
    Compress a decoder without labels (KL to the dense model; any text works, here SST-2's column 'text'):
      fg-edge train stories260K/stories260K.bin --task causal-lm --distill \\
          --train SST-2/train.tsv --dev SST-2/dev.tsv --max-train 400 --max-dev 20 \\
          --max-length 64 --steps 100 --output runs/stories260K
    \b
    Data: TSV (unquoted, as GLUE ships it) / CSV / JSONL with a header naming --text-column and
    --label-column (labels: integers, or strings mapped to ids in sorted order); causal-lm also takes
    plain .txt (paragraphs separated by blank lines), chunked into --max-length token blocks.
    Output: a model_dir (HF model + fg_edge_config.json + fg_edge_gates.safetensors + training.json).
    """
    from fg_edge.formats.atomic import check_not_an_input, check_output_dir
    from fg_edge.model_dir import save_model_dir
    from fg_edge.sources import resolve_source
    from fg_edge.train.loop import train
    from fg_edge.train.setup import fit_max_length

    check_output_dir(output, overwrite)
    train_options["progress"] = show_progress(train_options.get("progress"))
    gate_config, args = _configs(task, teacher_path, train_options, dict(
        granularity=granularity, target_sparsity=target_sparsity, sparsity_lambda=sparsity_lambda,
        adapter_rank=adapter_rank, scale_gates=scale_gates, train_biases=train_biases, task=task,
        adapter_modules=adapter_modules, target_modules=target_modules))
    if args.fsdp:   # fails before any data or weights are read (train() checks it too)
        from fg_edge.train.distributed import process_count
        from fg_edge.train.fsdp import check_fsdp

        check_fsdp(process_count(), args.train_base)
    resolved = resolve_source(model)  # cheap: a missing file / folder fails here, before the data is read
    check_not_an_input(output, {"base model": resolved.path, "--train file": train_path, "--dev file": dev_path,
                                "--teacher folder": teacher_path})

    train_data, dev_data = read_train_dev(task, train_path, dev_path, dict(
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        data_format=data_format, seed=args.seed, max_train=max_train, max_dev=max_dev, no_header=no_header))
    model_obj, tokenizer, teacher = _load_models(resolved, task, train_data, label_names, teacher_path,
                                                 trust_remote_code, args.seed, tokenizer_source)
    args = dataclasses.replace(args, max_length=fit_max_length(model_obj, args.max_length,
                                                               train_options.get("max_length") is not None, model))
    result = train(model_obj, tokenizer, gate_config, train_data, dev_data, args, teacher=teacher)
    del teacher

    columns = {"text_column": text_column, "text_pair_column": text_pair_column,
               "label_column": label_column if task == "classification" else None}
    metadata = _metadata(model, task, train_data, dev_data, result, args, gate_config, max_train, max_dev,
                         teacher_path, columns)
    from accelerate import PartialState

    from fg_edge.train.fsdp import full_state, plain_class

    # --fsdp: the base weights are shards; every process joins the gather, rank 0 writes the full tensors
    base_state = full_state(model_obj) if args.fsdp else None
    if PartialState().is_main_process:
        with plain_class(model_obj):
            save_model_dir(model_obj, gate_config, output, tokenizer=tokenizer, metadata=metadata,
                           overwrite=overwrite, base_state=base_state)
        for line in _summary_lines(result, output):
            click.echo(line)
