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


def test_env_reports_versions_and_providers():
    res = CliRunner().invoke(cli, ["env", "--json", "-"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["packages"]["onnxruntime"] and "CPUExecutionProvider" in info["execution_providers"]
    assert info["training_install"] is True      # the test install is the full one
    out = CliRunner().invoke(cli, ["--version"]).output
    assert out.startswith("fg-edge ") and "onnxruntime" in out


def test_command_without_the_training_install_names_the_extra(tmp_path):
    """On the torch-free device install, `compile` ends with one line naming the pip command, no traceback."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['fg-edge', 'compile', sys.argv[1]]; "
            "from fg_edge.cli import main; main()")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "pip install 'fg-edge[train]'" in res.stderr and "Traceback" not in res.stderr
