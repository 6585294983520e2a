"""The command group and the options every command shares (fg_edge/cli/options.py)."""

import json

import click
from click.testing import CliRunner

from fg_edge.cli import cli
from fg_edge.cli.options import emit_json, show_progress


def test_quiet_and_verbose_conflict():
    res = CliRunner().invoke(cli, ["-q", "-v", "inspect", "no-such-dir"])
    assert res.exit_code == 2 and "not both" in res.output


def test_every_command_has_an_example():
    for name, cmd in cli.commands.items():
        assert f"fg-edge {name} " in (cmd.help or ""), f"`fg-edge {name} --help` has no example"


def test_progress_follows_the_terminal_and_quiet():
    assert show_progress(True) is True and show_progress(False) is False
    assert show_progress(None) is False            # pytest's stderr is not a terminal

    @click.command()
    @click.pass_context
    def probe(ctx):
        ctx.obj = {"quiet": True}
        click.echo(str(show_progress(None)))

    assert CliRunner().invoke(probe).output.strip() == "False"


def test_json_dash_prints_only_json(tmp_path):
    @click.command()
    @click.argument("where")
    def probe(where):
        if not emit_json({"b": 1, "a": [2]}, where):
            click.echo("table")

    out = CliRunner().invoke(probe, ["-"]).output
    assert json.loads(out) == {"a": [2], "b": 1}
    res = CliRunner().invoke(probe, [str(tmp_path / "r.json")])
    assert "table" in res.output and json.loads((tmp_path / "r.json").read_text()) == {"a": [2], "b": 1}
