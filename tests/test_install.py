"""The device install: `pip install fg-edge` in a fresh venv has no torch, and run / eval / bench / env work on a
folder written by the real compile pipeline; compile names the extra it needs. Builds a venv (about 30 s with a
warm pip cache); needs the package index that `make setup` used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_tsv

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    res = subprocess.run(pip + [str(ROOT)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        message = f"pip install of the device runtime failed (package index unreachable?):\n{res.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return venv


def _run(venv: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([str(venv / "bin" / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                         timeout=600, env=env, cwd=venv.parent)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_device_install_runs_a_compiled_folder_without_torch(device_venv, cls_dir, tmp_path):
    assert _run(device_venv, "python", "-c", "import torch", check=False).returncode != 0
    assert _run(device_venv, "python", "-c", "import transformers", check=False).returncode != 0
    _run(device_venv, "python", "-m", "pip", "check")

    result = json.loads(_run(device_venv, "fg-edge", "run", cls_dir.path, "good fine", "--json", "-").stdout)
    assert result["kind"] == "classification" and result["label"] in ("NEGATIVE", "POSITIVE")

    dev = write_tsv(tmp_path / "dev.tsv", sentiment_rows(16, seed=9))
    report = json.loads(_run(device_venv, "fg-edge", "eval", cls_dir.path, "--data", dev, "--json", "-").stdout)
    assert {"compiled", "baseline", "int8"} <= set(report["results"])

    out = tmp_path / "bench"
    _run(device_venv, "fg-edge", "bench", cls_dir.path, "--providers", "cpu", "--threads", "1", "--batch", "1",
         "--seq", "8", "--repeats", "2", "-o", out)
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert any(r["variant"] == "compiled" for r in rows)

    env = json.loads(_run(device_venv, "fg-edge", "env", "--json", "-").stdout)
    assert env["training_install"] is False and env["packages"]["torch"] is None
    assert "CPUExecutionProvider" in env["execution_providers"]


def test_device_install_names_the_training_extra(device_venv, tmp_path):
    res = _run(device_venv, "fg-edge", "compile", tmp_path, check=False)
    assert res.returncode == 1 and "pip install 'fg-edge[train]'" in res.stderr
    assert "Traceback" not in res.stderr
