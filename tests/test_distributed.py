"""Gate training on two CPU processes (gloo) trains what one process does (README "Training at scale").

The same command runs once as one process, once under `torchrun --nproc_per_node 2` and once under `accelerate
launch --multi_gpu --num_processes 2` (on a machine without a GPU that starts two gloo processes). With the same
global --batch-size, seeds and data, the gates, the loss curve, the dev metrics and the chosen checkpoint agree
within float summation noise; the main process alone logs and writes. A run whose ranks do not synchronise their
gradients (tests/helpers/no_grad_sync.py) is refused before anything is written.

The tiny BERT has dropout switched off: dropout draws a mask per row, so a row's mask depends on how the batch
is split, and no two process counts could agree exactly with it on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sentiment_rows, tiny_tokenizer, write_tsv

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not
                                (Path(sys.executable).parent / "torchrun").exists(),
                                reason="torchrun is not installed")
BIN = Path(sys.executable).parent
#: gates and losses of 1 vs 2 processes: float summation order differs, nothing else
GATE_ATOL = 1e-5
LOSS_RTOL = 1e-5


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fg_edge.testing import tiny_model

    root = tmp_path_factory.mktemp("dist")
    model = tiny_model("bert", task="classification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(root / "bert")
    tiny_tokenizer("encoder").save_pretrained(root / "bert")
    write_tsv(root / "train.tsv", sentiment_rows(64, seed=1))
    write_tsv(root / "dev.tsv", sentiment_rows(21, seed=2))      # 21 rows: the dev batch does not split evenly
    return root


def _train_args(root: Path, out: Path) -> list[str]:
    return ["train", str(root / "bert"), "--task", "classification", "--train", str(root / "train.tsv"),
            "--dev", str(root / "dev.tsv"), "--output", str(out), "--steps", "8", "--batch-size", "8",
            "--eval-every", "2", "--no-progress"]


def _run(launcher: list[str], args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, timeout=600)


def _torchrun(script: list[str]) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_port()), *script]


@pytest.fixture(scope="module")
def single(setup):
    proc = _run([sys.executable, "-m", "fg_edge.cli"], _train_args(setup, setup / "one"))
    assert proc.returncode == 0, proc.stderr
    return setup / "one"


def _gates(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "fg_edge_gates.safetensors"))


def _same_training(a: Path, b: Path) -> None:
    ga, gb = _gates(a), _gates(b)
    assert ga.keys() == gb.keys()
    diff = max(float((ga[k] - gb[k]).abs().max()) for k in ga)
    assert diff <= GATE_ATOL, f"gates differ by {diff:.2e}"
    ta, tb = (json.loads((d / "training.json").read_text()) for d in (a, b))
    for ra, rb in zip(ta["history"], tb["history"], strict=True):
        assert ra["step"] == rb["step"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=LOSS_RTOL)
        assert ra["dev"] == pytest.approx(rb["dev"], rel=LOSS_RTOL)
    assert ta["metrics"]["best_step"] == tb["metrics"]["best_step"]
    assert ta["sparsity"]["closed_gates"] == tb["sparsity"]["closed_gates"]
    assert ta["sparsity"]["measured"] == pytest.approx(tb["sparsity"]["measured"], rel=LOSS_RTOL)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_train_what_one_does(launcher, setup, single):
    out = setup / f"two-{launcher}"
    args = _train_args(setup, out)
    if launcher == "torchrun":
        proc = _run(_torchrun(["-m", "fg_edge.cli"]), args)
    else:
        proc = _run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_port()),
                     "-m", "fg_edge.cli"], args)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert json.loads((out / "training.json").read_text())["processes"] == 2
    _same_training(single, out)
    # the main process alone logs, shows the summary and writes (no second folder, no temp folder left)
    assert text.count("training classification:") == 1, text
    assert text.count("wrote model_dir") == 1, text
    assert sorted(p.name for p in setup.iterdir() if p.name.startswith((f".two-{launcher}", f"two-{launcher}"))) \
        == [f"two-{launcher}"]


def test_unsynchronised_ranks_are_refused(setup):
    """Without the gradient all-reduce each rank trains on its own half of every batch; the cross-rank check
    sees the parameters drift apart and nothing is written."""
    out = setup / "unsynced"
    proc = _run(_torchrun([str(Path(__file__).parent / "helpers" / "no_grad_sync.py")]), _train_args(setup, out))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "training processes diverged" in text, text
    assert not out.exists() and not list(setup.glob(".unsynced*"))


def test_batch_must_split_over_the_processes():
    """--batch-size is the global batch: one that does not split over the processes is refused by name (the
    check runs in every process right after the Accelerator is made, before the data is tokenised)."""
    from fg_edge.errors import ConfigError
    from fg_edge.train.distributed import check_batch_size, eval_batch_for

    with pytest.raises(ConfigError, match=r"--batch-size 7 .* 2 training processes"):
        check_batch_size(7, 2)
    check_batch_size(8, 2)
    assert eval_batch_for(64, 3) == 66 and eval_batch_for(64, 2) == 64


def test_bf16_autocast_trains_and_saves_float32(setup):
    """--mixed-precision bf16 autocasts the forward (CPU here); the saved gates stay float32 and finite."""
    import torch

    out = setup / "bf16"
    proc = _run([sys.executable, "-m", "fg_edge.cli"], [*_train_args(setup, out), "--mixed-precision", "bf16"])
    assert proc.returncode == 0, proc.stderr
    gates = _gates(out)
    assert {t.dtype for t in gates.values()} == {torch.float32}
    assert all(bool(torch.isfinite(t).all()) for t in gates.values())
    assert json.loads((out / "training.json").read_text())["args"]["mixed_precision"] == "bf16"
