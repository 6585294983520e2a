"""`fg-edge finetune`: dense (or LoRA) finetuning of a classifier — the teacher for `fg-edge train --teacher`."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import click

from fg_edge.cli.options import (label_config, label_names_option, no_header_option, overwrite_option, progress_option,
                                read_train_dev, show_progress)


def _help(name: str) -> str:
    from fg_edge.formats.finetune_args import FinetuneArgs

    f = {f.name: f for f in dataclasses.fields(FinetuneArgs)}[name]
    default = f.default
    return f.metadata["help"] + ("" if default is None or isinstance(default, bool) else f" [default: {default:g}]")


@click.command(context_settings={"max_content_width": 110})
@click.argument("model")
@click.option("--train", "train_path", required=True, help="Training data (.tsv/.csv/.jsonl with a header).")
@click.option("--dev", "dev_path", help="Dev data for checkpoint choice (carve it from the training rows).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (a plain HF sequence-classification model).")
@overwrite_option
@click.option("--text-column", default="text", show_default=True, help="Column holding the text.")
@click.option("--text-pair-column", default=None, help="Second text column for sentence-pair tasks.")
@click.option("--label-column", default="label", show_default=True, help="Column holding the label.")
@label_names_option
@no_header_option
@click.option("--max-train", type=click.IntRange(min=1), help="Use N training rows, sampled with --seed.")
@click.option("--max-dev", type=click.IntRange(min=1), help="Use N dev rows.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), help=_help("lr"))
@click.option("--epochs", type=click.FloatRange(min=0.0, min_open=True), help=_help("epochs"))
@click.option("--steps", type=click.IntRange(min=1), help=_help("steps"))
@click.option("--batch-size", type=click.IntRange(min=1), help=_help("batch_size"))
@click.option("--max-length", type=click.IntRange(min=2), help=_help("max_length"))
@click.option("--lora-rank", type=click.IntRange(min=0), help=_help("lora_rank"))
@click.option("--seed", type=click.IntRange(min=0), help=_help("seed"))
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code from the model folder / hub.")
@progress_option
def finetune_cmd(model: str, train_path: str, dev_path: Optional[str], output: Path, overwrite: bool,
                 text_column: str, text_pair_column: Optional[str], label_column: str, label_names: Optional[str], no_header: bool,
                 max_train: Optional[int],
                 max_dev: Optional[int], trust_remote_code: bool, **options) -> None:
    """Finetune MODEL densely (every weight) for classification and write a HF classifier folder.

    \b
    The teacher for distillation; the two-step recipe:
      fg-edge finetune sentence-transformers/all-MiniLM-L6-v2 --train train.tsv --dev val.tsv -o runs/teacher
      fg-edge train sentence-transformers/all-MiniLM-L6-v2 --task classification --train train.tsv \\
          --dev val.tsv --teacher runs/teacher --target-sparsity 0.4 -o runs/gated
    --lora-rank 8 trains PEFT LoRA adapters on query/value instead (needs `pip install peft`), merged on save.
    """
    from fg_edge.errors import ConfigError
    from fg_edge.train.finetune import finetune, save_finetuned
    from fg_edge.formats.finetune_args import FinetuneArgs
    from fg_edge.formats.atomic import check_not_an_input, check_output_dir
    from fg_edge.sources import load_pretrained, resolve_source
    from fg_edge.train.setup import fit_max_length

    check_output_dir(output, overwrite)
    options["progress"] = show_progress(options.get("progress"))
    given = {k: v for k, v in options.items() if v is not None}
    if "epochs" in given and "steps" in given:
        raise click.UsageError("give --epochs or --steps, not both")
    try:
        args = FinetuneArgs(**given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    resolved = resolve_source(model)
    check_not_an_input(output, {"base model": resolved.path, "--train file": train_path, "--dev file": dev_path})
    train_data, dev_data = read_train_dev("classification", train_path, dev_path, dict(
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        data_format="auto", seed=args.seed, max_train=max_train, max_dev=max_dev, no_header=no_header))
    labels = label_config(train_data, label_names)   # checked before the model is loaded
    model_obj, tokenizer = load_pretrained(resolved, "classification", num_labels=train_data.num_labels,
                                           trust_remote_code=trust_remote_code, seed=args.seed)
    model_obj.config.update(labels)
    args = dataclasses.replace(args, max_length=fit_max_length(model_obj, args.max_length,
                                                               options.get("max_length") is not None, model))
    model_obj, result = finetune(model_obj, tokenizer, train_data, dev_data, args)
    metadata = {"command": " ".join(["fg-edge"] + sys.argv[1:]), "model": model, "args": args.to_dict(),
                "data": {"train": train_data.summary(), "dev": dev_data.summary() if dev_data else None},
                "result": result.to_dict()}
    save_finetuned(model_obj, tokenizer, output, metadata, overwrite=overwrite)
    click.echo(f"wrote {output}")
    click.echo(f"  steps {result.steps} in {result.wall_time_s:.1f} s; trainable parameters "
               f"{result.trainable_params:,} of {result.base_params:,}")
    if result.dev_accuracy is not None:
        click.echo(f"  dev accuracy {result.dev_accuracy:.4f} (checkpoint of step {result.best_step})")
