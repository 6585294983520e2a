"""`fg-edge inspect`: what the gates of a model_dir learned, and what the compiler could remove."""

from __future__ import annotations

from pathlib import Path

import click

from fg_edge.cli.options import json_option, output_file_check


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=True, dir_okay=True, path_type=str))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              callback=output_file_check("--plot", "plot"),
              metavar="FILE.png", help="Also write a heatmap of the eval gate values (layers x heads / FFN "
                                       "channels, or x rows / columns per module for paper granularity).")
@json_option("the report")
@click.option("--modules", "show_modules", is_flag=True,
              help="Also list every gated linear (always done for architectures outside the table).")
def inspect_cmd(model_dir: str, plot_path: str | None, json_path: str | None, show_modules: bool) -> None:
    """Report the gates of MODEL_DIR (a folder written by `fg-edge train`).

    \b
    Per transformer layer:
      E[sp]    expected sparsity, 1 - mean P(open), of each gate kind (heads, channels, rows, cols)
      closed   gates whose eval value is exactly 0 (count and fraction)
      removed  attention heads, kv heads and FFN channels `fg-edge compile` deletes (its own plan)
    plus the trainable parameter count and a summary of training.json.

    \b
    Example:
      fg-edge inspect runs/minilm
      fg-edge inspect runs/minilm --plot runs/minilm/gates.png --json runs/minilm/inspect.json
      fg-edge inspect runs/minilm --json - | jq .heads
    """
    import json

    from fg_edge.inspect import format_table, inspect_model, plot_report
    from fg_edge.model_dir import load, read_gate_config, read_training_metadata

    model = load(model_dir)                                  # ModelDirError / GateStateError -> one-line message
    gate_config = read_gate_config(model_dir)
    try:
        metadata = read_training_metadata(model_dir)
    except (OSError, ValueError) as exc:
        click.echo(f"warning: cannot read {Path(model_dir) / 'training.json'} ({exc}); skipping it", err=True)
        metadata = {}
    report = inspect_model(model, gate_config, metadata=metadata, source=str(model_dir))

    if json_path != "-":
        click.echo(format_table(report, modules=show_modules))
    if json_path is not None:
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        if json_path == "-":
            click.echo(text, nl=False)
        else:
            _write(Path(json_path), text)
            click.echo(f"wrote {json_path}", err=True)
    if plot_path is not None:
        try:
            plot_report(report, plot_path)
        except OSError as exc:
            raise click.ClickException(f"cannot write the plot {plot_path}: {exc}") from None
        click.echo(f"wrote {plot_path}", err=True)


def _write(path, text: str) -> None:
    from fg_edge.errors import os_error_message
    from fg_edge.formats.atomic import write_text_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError as exc:
        raise click.ClickException(f"cannot write the --json file {path}: {os_error_message(exc)}") from None
