"""`fg-edge env`: versions, execution providers and thread settings, to paste into a bug report (torch-free)."""

from __future__ import annotations

import click

from fg_edge.cli.options import emit_json, json_option


@click.command(context_settings={"max_content_width": 110})
@json_option("the report")
def env_cmd(json_path) -> None:
    """Print what this install is: Python, platform, fg-edge and library versions, the ONNX Runtime execution
    providers available, and the environment variables that change threading or hub access.

    \b
    Examples:
      fg-edge env
      fg-edge env --json -      # machine-readable
    """
    from fg_edge.runtimes.environment import environment_info, format_environment

    info = environment_info()
    if emit_json(info, json_path):
        return
    click.echo(format_environment(info))
