"""Several training processes (torchrun / `accelerate launch`; README "Training at scale").

Data parallel on Hugging Face Accelerate, arranged so that N processes train the model one process would:
- `--batch-size` is the global batch: every batch of the (seeded, identically shuffled) loader is split across
  the processes (Accelerate's `split_batches`), and DDP averages the gradients, so 1 and 2 processes see the same
  rows per step and take the same steps (up to float summation order).
- the sparsity term, the controller and the frozen-mask snap read the gates, which DDP keeps identical;
  dev metrics are gathered over the whole dev set without the padding rows (`gather_for_metrics`).
- `check_same_on_every_rank` compares a fingerprint of the trained parameters and the chosen checkpoint across
  processes before anything is written, so diverged ranks fail loudly instead of saving rank 0's view.
- only the main process logs at INFO, shows progress and writes the model_dir (fg_edge.cli.train).
- with `--fsdp` the frozen base is sharded instead of copied to every process, and the trained parameters'
  gradients are all-reduced by fg_edge.train.fsdp rather than DDP; everything above holds unchanged.
On a machine without a GPU the processes use the gloo backend (`cpu=True`: Accelerate picks MULTI_CPU only then).
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn

from fg_edge.errors import ConfigError, DistributedError

log = logging.getLogger(__name__)

#: relative difference of the parameter fingerprints above which ranks count as diverged
FINGERPRINT_RTOL = 1e-5


def has_device() -> bool:
    """Whether an accelerator (GPU, ...) is present; without one the processes run on CPUs with gloo."""
    accel = getattr(torch, "accelerator", None)
    return accel.is_available() if accel is not None else torch.cuda.is_available()


def process_count() -> int:
    """How many training processes this launch started (Accelerate's process state, made as make_accelerator
    makes it, so that the Accelerator made later shares it)."""
    from accelerate import PartialState

    return PartialState(cpu=not has_device()).num_processes


def make_accelerator(mixed_precision: str = "no"):
    """The Accelerator every training run uses (one process or many): split batches, unused-parameter search
    (the frozen-mask phase stops the gates' gradients mid-run), the CPU backend where no GPU is present."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=not has_device(), mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def check_batch_size(batch_size: int, processes: int) -> None:
    if batch_size % processes:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split evenly over the "
                          f"{processes} training processes; use a multiple of {processes}")


def eval_batch_for(eval_batch_size: int, processes: int) -> int:
    """The dev batch rounded up to a multiple of the process count (dev metrics do not depend on it)."""
    return int(math.ceil(eval_batch_size / processes) * processes)


def quiet_other_ranks(accelerator) -> None:
    """Log once: processes other than the main one keep only errors."""
    if not accelerator.is_main_process:
        logging.getLogger("fg_edge").setLevel(logging.ERROR)


def _fingerprint(model: nn.Module) -> torch.Tensor:
    """Sum and sum of squares of every trainable parameter (and the gate logits), float64."""
    total, squares = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for name, p in model.named_parameters():
        if p.requires_grad or name.endswith("_logits"):
            x = p.detach().to(torch.float64).cpu()
            total += x.sum()
            squares += (x * x).sum()
    return torch.stack([total, squares])


def check_same_on_every_rank(accelerator, model: nn.Module, chosen_step: Optional[int]) -> None:
    """Raise DistributedError when the processes ended with different parameters or chose different
    checkpoints (nothing is written then)."""
    if accelerator.num_processes < 2:
        return
    step = torch.tensor([-1 if chosen_step is None else int(chosen_step)], dtype=torch.float64)
    local = torch.cat([_fingerprint(model), step]).to(accelerator.device)
    every = accelerator.gather(local[None]).cpu().reshape(accelerator.num_processes, -1)
    ref = every[0]
    for rank, row in enumerate(every[1:], start=1):
        if row[2] != ref[2]:
            raise DistributedError(f"training processes disagree on the checkpoint: rank 0 chose step "
                                   f"{int(ref[2])}, rank {rank} step {int(row[2])}; nothing was written")
        scale = torch.clamp(ref[:2].abs(), min=1.0)
        diff = float(((row[:2] - ref[:2]).abs() / scale).max())
        if diff > FINGERPRINT_RTOL:
            raise DistributedError(f"training processes diverged: the trained parameters of rank {rank} differ from "
                                   f"rank 0's (relative fingerprint difference {diff:.2e} > {FINGERPRINT_RTOL:.0e}); "
                                   "gradients were not synchronised; nothing was written")
