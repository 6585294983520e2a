"""Gate training on two CPU processes (gloo) trains what one process does (README "Training at scale").

The same command runs once as one process, once under `torchrun --nproc_per_node 2` and once under `accelerate
launch --multi_gpu --num_processes 2` (on a machine without a GPU that starts two gloo processes). With the same
global --batch-size, seeds and data, the gates, the loss curve, the dev metrics and the chosen checkpoint agree
within float summation noise; the main process alone logs and writes. A run whose ranks do not synchronise their
gradients (tests/helpers/no_grad_sync.py) is refused before anything is written.

With `--fsdp` the frozen base is sharded over the two processes (FSDP2) and the same comparison holds; the
model_dir rank 0 writes from the gathered full tensors is the one a single process writes.

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
#: logits of the model_dir written by a --fsdp run vs the one written by one process (measured: 3.0e-8)
LOGITS_ATOL = 1e-5
#: tensors of model.safetensors, --fsdp vs 1 process (measured: 1.2e-7 in float32, 1.2e-7 with bf16 autocast;
#: bf16 vs float32 differ by 2.8e-3, so this tolerance tells them apart)
WEIGHT_ATOL = 1e-5


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


# -- --fsdp ----------------------------------------------------------------------------------------------------
def _same_model_dir(a: Path, b: Path, inputs: dict) -> None:
    """The same files, config.json, base weights and outputs: b loads with fg-edge's loader like a."""
    from safetensors.torch import load_file
    import torch

    from fg_edge.model_dir import load

    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    wa, wb = (load_file(str(d / "model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff <= WEIGHT_ATOL, f"weights differ by {diff:.2e}"
    with torch.no_grad():
        la, lb = (load(d)(**inputs).logits for d in (a, b))
    assert float((la - lb).abs().max()) <= LOGITS_ATOL


def _check_sharded(model_dir: Path) -> None:
    """training.json's "fsdp" record: each process held half of the frozen parameters' bytes (so --fsdp did
    shard) and all of the trained ones."""
    record = json.loads((model_dir / "training.json").read_text())["fsdp"]
    assert record["enabled"] and record["processes"] == 2 and record["units"] == 3
    replicated, total = record["replicated_param_bytes"], record["param_bytes_total"]
    frozen = [held - replicated for held in record["param_bytes_per_process"]]
    assert total - replicated > total / 2 and sum(frozen) == total - replicated
    assert max(frozen) <= (total - replicated) / 2 * 1.05, record


def test_fsdp_trains_what_one_process_does(setup, single):
    """torchrun, 2 processes, --fsdp: the gates, losses, dev metrics, checkpoint and the written model_dir are
    those of the 1-process run without --fsdp; the frozen weights were sharded; rank 0 alone wrote."""
    import torch

    out = setup / "fsdp"
    proc = _run(_torchrun(["-m", "fg_edge.cli"]), [*_train_args(setup, out), "--fsdp"])
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    _same_training(single, out)
    ids = torch.randint(5, 58, (3, 9), generator=torch.Generator().manual_seed(0))
    _same_model_dir(single, out, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    _check_sharded(out)
    assert json.loads((single / "training.json").read_text())["fsdp"] == {"enabled": False}
    assert text.count("wrote model_dir") == 1, text


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny LLaMA with a tied LM head (the tied tensor is sharded once and saved once) and short texts."""
    from fg_edge.testing import tiny_model

    root = tmp_path_factory.mktemp("dist-lm")
    tiny_model("llama", tie_word_embeddings=True).save_pretrained(root / "llama")
    tiny_tokenizer("decoder").save_pretrained(root / "llama")
    write_tsv(root / "train.tsv", sentiment_rows(64, seed=3, min_words=6, max_words=14))
    write_tsv(root / "dev.tsv", sentiment_rows(12, seed=4, min_words=6, max_words=14))
    return root


def test_fsdp_distills_a_decoder_in_bf16(decoder):
    """Causal LM --distill (the dense teacher is the sharded model itself with the gates taken out) under bf16
    autocast: --fsdp on 2 processes trains and writes what one process does."""
    import torch

    args = ["train", str(decoder / "llama"), "--task", "causal-lm", "--distill", "--train", str(decoder / "train.tsv"),
            "--dev", str(decoder / "dev.tsv"), "--max-length", "16", "--steps", "8", "--batch-size", "4",
            "--eval-every", "2", "--mixed-precision", "bf16", "--no-progress"]
    one = _run([sys.executable, "-m", "fg_edge.cli"], [*args, "--output", str(decoder / "one")])
    assert one.returncode == 0, one.stderr
    two = _run(_torchrun(["-m", "fg_edge.cli"]), [*args, "--output", str(decoder / "fsdp"), "--fsdp"])
    assert two.returncode == 0, two.stdout + two.stderr
    _same_training(decoder / "one", decoder / "fsdp")
    first_kl = json.loads((decoder / "fsdp" / "training.json").read_text())["history"][0]["dev"]["distill_kl"]
    assert abs(first_kl) < 1e-6       # all gates open: the student is the dense teacher
    ids = torch.randint(5, 58, (2, 11), generator=torch.Generator().manual_seed(1))
    _same_model_dir(decoder / "one", decoder / "fsdp", {"input_ids": ids})
    _check_sharded(decoder / "fsdp")


def test_fsdp_needs_processes_and_a_frozen_base(setup):
    """--fsdp on one process is refused in one line before anything is read; so is --fsdp with --train-base."""
    from fg_edge.errors import ConfigError
    from fg_edge.train.fsdp import check_fsdp

    out = setup / "fsdp-one"
    proc = _run([sys.executable, "-m", "fg_edge.cli"], [*_train_args(setup, out), "--fsdp"])
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: --fsdp shards the frozen base over the "
                                                             "training processes, and this run has 1"), proc.stderr
    assert not out.exists()
    with pytest.raises(ConfigError, match="--train-base"):
        check_fsdp(2, train_base=True)
    check_fsdp(2, train_base=False)


def test_sigterm_stops_every_rank_and_leaves_no_output(setup, tmp_path):
    """SIGTERM to a 2-process run part-way through training (what a cluster scheduler sends): every process
    stops, nothing is written in the output's folder (no model_dir, no temporary folder) and the exit status is
    non-zero."""
    import signal
    import threading
    import time

    out_parent = tmp_path / "runs"
    out_parent.mkdir()
    args = _train_args(setup, out_parent / "model_dir")
    args[args.index("--steps") + 1] = "100000"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*_torchrun(["-m", "fg_edge.cli"]), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "training classification" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(300), "".join(lines)[-3000:]
    time.sleep(2.0)                                   # some steps in
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    text = "".join(lines)
    assert proc.returncode != 0 and "step 2:" in text, text[-3000:]       # stopped mid-training
    assert list(out_parent.iterdir()) == [], f"left behind: {list(out_parent.iterdir())}"
    time.sleep(1.0)
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes still running: {left}\n{text[-3000:]}"
