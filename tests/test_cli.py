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


def test_outputs_are_checked_before_any_work(tmp_path):
    """An output that is / contains an input is refused, a --json FILE under a file is refused up front (a missing
    folder is made),
    and output folders get the usual (umask) mode, not mkdtemp's 0700."""
    import os

    import pytest

    from fg_edge.errors import OutputPathError
    from fg_edge.formats.atomic import atomic_output_dir, check_not_an_input, check_writable_location

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.tsv").write_text("text\tlabel\ngood\t1\n")
    with pytest.raises(OutputPathError, match="contains the --train file"):
        check_not_an_input(data, {"--train file": data / "train.tsv"})
    with pytest.raises(OutputPathError, match="is the base model"):
        check_not_an_input(data, {"base model": data, "hub id": "org/name"})
    check_not_an_input(data / "out", {"base model": data})          # inside an input folder is fine
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_writable_location(tmp_path / "afile" / "bench")
    res = CliRunner().invoke(cli, ["env", "--json", str(tmp_path / "missing" / "env.json")])
    assert res.exit_code == 0 and json.loads((tmp_path / "missing" / "env.json").read_text())   # folder made
    res = CliRunner().invoke(cli, ["env", "--json", str(tmp_path / "afile" / "env.json")])
    assert res.exit_code == 2 and "is a file" in res.output
    with atomic_output_dir(tmp_path / "made") as tmp:
        (tmp / "f").write_text("x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o777 & ~mask


def test_train_refuses_to_overwrite_its_inputs(tiny_bert_dir, sentiment_files):
    train, _ = sentiment_files
    before = sorted(p.name for p in tiny_bert_dir.iterdir())
    res = CliRunner().invoke(cli, ["train", str(tiny_bert_dir), "--task", "classification", "--train", train,
                                   "--steps", "1", "--output", str(tiny_bert_dir), "--overwrite", "--no-progress"])
    assert res.exit_code == 1 and "is the base model" in res.output
    assert sorted(p.name for p in tiny_bert_dir.iterdir()) == before


def test_runtime_commands_refuse_bad_values_up_front(cls_dir, tmp_path):
    """Integer labels that are not class ids, non-UTF-8 text and --threads below 1 get one message each."""
    from conftest import write_tsv

    bad = write_tsv(tmp_path / "bad.tsv", [("good fine", 1), ("bad", 5)])
    res = CliRunner().invoke(cli, ["eval", str(cls_dir.path), "--data", bad])
    assert res.exit_code == 1 and "labels [5] are not class ids" in res.output
    res = CliRunner().invoke(cli, ["run", str(cls_dir.path), "caf\udce9"])      # the byte 0xe9 of a Latin-1 'é'
    assert res.exit_code == 2 and "UTF-8" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["run", str(cls_dir.path), "good", "--threads", "-1"])
    assert res.exit_code == 2 and "--threads" in res.output


def test_train_takes_an_explicit_tokenizer(tiny_bert_dir, sentiment_files, tmp_path):
    train, _ = sentiment_files
    res = CliRunner().invoke(cli, ["train", str(tiny_bert_dir), "--task", "classification", "--train", train,
                                   "--steps", "1", "--tokenizer", str(tiny_bert_dir),
                                   "--output", str(tmp_path / "md"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "md" / "tokenizer.json").is_file()
