"""`fg-edge eval`: accuracy or perplexity of a compiled_dir's models side by side (torch-free)."""

from __future__ import annotations

import click

from fg_edge.cli.options import emit_json, json_option, no_header_option, truncate_option


@click.command(context_settings={"max_content_width": 110})
@click.argument("compiled_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Classification: TSV (GLUE style, no quoting) / CSV / JSONL with a header. Causal LM: plain text "
                   "(or a text column of TSV / CSV / JSONL).")
@click.option("--text-column", default=None, help="[default: the column training read, else 'text']")
@click.option("--text-pair-column", default=None,
              help="Second text of a sentence-pair model [default: the pair column training read, if any].")
@click.option("--label-column", default=None, help="[default: the column training read, else 'label']")
@no_header_option
@click.option("--max-rows", type=click.IntRange(1), default=None,
              help="Use at most this many rows (a seeded subsample) / documents.")
@click.option("--models", default=None, metavar="LIST",
              help="Comma-separated variants (default: every one present of baseline, compiled, int8, baseline-int8, "
                   "qdq, baseline-qdq, int4, baseline-int4, int8-wo, baseline-int8-wo, and the .ort-only nnapi, "
                   "baseline-nnapi, qdq-nnapi, baseline-qdq-nnapi).")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider (see `fg-edge run --help`).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads.")
@click.option("--window", type=click.IntRange(2), default=None,
              help="Causal LM: tokens per perplexity window (default min(max positions, 256)).")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--reference", type=click.Path(file_okay=False), default=None,
              help="Also score this HF classifier folder (PyTorch; e.g. the dense finetuned teacher) on the same "
                   "rows, to show what removal cost. Needs the training install (torch).")
@truncate_option
@json_option("the results")
def eval_cmd(compiled_dir, data_path, text_column, text_pair_column, label_column, no_header, max_rows, models,
             provider, threads, window, batch_size, reference, truncate, json_path):
    """Evaluate the baseline, compiled and quantized models of COMPILED_DIR on --data, side by side.

    \b
    Classifiers: accuracy. Causal LMs: perplexity over the text (non-overlapping windows).
    "baseline" is the gated model with nothing removed: it equals "compiled" by construction. To see what
    removal cost, score the dense model it was distilled from beside it with --reference.

    \b
    Examples:
      fg-edge eval runs/minilm-compiled --data ../shared/data/SST-2/dev.tsv --reference runs/teacher
      fg-edge eval runs/stories-compiled --data valid.txt --models compiled,baseline --window 128 --json -
    """
    from fg_edge.runtimes.evaluate import evaluate, format_eval

    variants = [m.strip() for m in models.split(",") if m.strip()] if models else None
    report = evaluate(compiled_dir, data_path, text_column=text_column, label_column=label_column,
                      max_rows=max_rows, variants=variants, provider=provider, threads=threads, window=window,
                      batch_size=batch_size, reference=reference, text_pair_column=text_pair_column,
                      header=not no_header, truncate=truncate)
    # unsorted: report["results"] keeps the side-by-side order of the table
    if emit_json(report, json_path, sort_keys=False):
        return
    click.echo(format_eval(report))
