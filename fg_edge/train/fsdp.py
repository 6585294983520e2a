"""`--fsdp`: the frozen base weights sharded over the training processes with FSDP2 (`fully_shard`).

What is sharded and what is not, and why:
- **sharded** (each process holds 1/N of every tensor between forwards): every *frozen* parameter — the blocks'
  weight matrices, embeddings, the LM head, frozen norms / biases. `fully_shard` runs on each transformer block
  (architecture table: `fg_edge.arch.layers_of`; else the longest nn.ModuleList) and then on the root, on a 1-D
  device mesh over all processes. A block's weights are all-gathered just before its forward (and again in the
  backward, to compute the gradient of its input) and freed after it. The root's own tensors (embeddings, LM
  head) are gathered for the whole forward and again for the whole backward; the root, too, reshards after its
  forward (FSDP's default keeps it gathered until the backward, and after a no-grad pass — the dense teacher,
  a dev evaluation — until the next backward). Frozen weights get no gradient, so nothing is reduce-scattered.
- **replicated** (plain tensors, `ignored_params` of fully_shard): everything that trains — gate logits,
  adapters, gated biases, norms, task head. The sparsity term, the Lagrangian controller, the frozen-mask snap,
  BestCheckpoint, the cross-rank fingerprint and `gate_state_dict` read and write these outside forward; kept
  whole, they work exactly as in a DDP run. They are broadcast from rank 0 once, and their gradients are
  averaged with one flat all-reduce after every backward (`sync_replicated_grads`), which is what DDP would do.
  Trainable parameters are ~0.1% of the base, so replicating them costs nothing measurable.
- `--train-base` (every block weight trains) is refused: nothing frozen would be left to shard.

Accelerate still owns the processes, data sharding, backward, clipping and gathering dev metrics, but the model is
not passed to `accelerator.prepare` (that would wrap it in DDP; Accelerate 1.15 enables its own FSDP only on
GPUs). `--mixed-precision bf16|fp16` is the same autocast of the forward that `prepare` installs
(`autocast_forward`), not an FSDP MixedPrecisionPolicy: the replicated gates / biases stay float32 and autocast
casts at each matmul, so the numerics are those of the unsharded bf16 run.

Saving: `full_state` gathers the full tensors to rank 0's CPU (a collective: every process calls it), with the
gates taken out of the module tree so the names are the plain HF ones; rank 0 passes them to `save_pretrained`
(`state_dict=`) inside `plain_class`, so the model_dir is what a 1-process run writes.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from fg_edge.errors import ConfigError

log = logging.getLogger(__name__)


def check_fsdp(processes: int, train_base: bool) -> None:
    """ConfigError unless --fsdp has something to shard over and something frozen to shard."""
    if processes < 2:
        raise ConfigError("--fsdp shards the frozen base over the training processes, and this run has 1; start "
                          "several (torchrun --nproc_per_node 2 -m fg_edge.cli train ... --fsdp) or drop --fsdp")
    if train_base:
        raise ConfigError("--fsdp shards only the frozen base weights, and --train-base trains them all; use one "
                          "of the two")


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks: the architecture table's layer list, else the longest nn.ModuleList."""
    from fg_edge.arch import layers_of, spec_for
    from fg_edge.errors import FgEdgeError

    try:
        return layers_of(model, spec_for(model))
    except FgEdgeError:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        if not lists:
            raise ConfigError(f"--fsdp: found no list of transformer blocks in this "
                              f"{getattr(model.config, 'model_type', type(model).__name__)!r} model") from None
        return max(lists, key=len)


def shard_frozen_base(model: nn.Module, accelerator) -> dict:
    """Apply FSDP2 to `model` in place (frozen parameters sharded, trainable ones replicated; module docstring).
    Call after the trainable parameters are marked and before the optimiser is built. Returns what
    training.json records under "fsdp"."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = accelerator.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in trainable:        # FSDP moves only what it shards; the replicated tensors go by hand
            p.data = p.data.to(device)
            dist.broadcast(p.data, src=0)
    mesh = init_device_mesh(device.type, (accelerator.num_processes,))
    ignored = set(trainable)
    blocks = _blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=ignored)
    fully_shard(model, mesh=mesh, ignored_params=ignored, reshard_after_forward=True)
    autocast_forward(model, accelerator)
    info = {"enabled": True, "processes": accelerator.num_processes, "units": len(blocks) + 1,
            **_param_bytes(model, accelerator)}
    log.info("fsdp: %d blocks + root sharded over %d processes; parameter bytes held by each process %s of %d "
             "(%d of them replicated: the trained parameters)", len(blocks), info["processes"],
             info["param_bytes_per_process"], info["param_bytes_total"], info["replicated_param_bytes"])
    return info


def _param_bytes(model: nn.Module, accelerator) -> dict:
    """Bytes of parameters each process holds now (a shard's local part, a replicated tensor whole; FSDP's
    padding of uneven shards not counted), gathered from every process; what one unsharded copy of the model
    takes; and the replicated (trainable) part of it, which every process holds whole."""
    from torch.distributed.tensor import DTensor

    local = total = replicated = 0
    for p in model.parameters():
        size = p.element_size()
        total += p.numel() * size
        if isinstance(p, DTensor):
            local += p.to_local().numel() * size
        else:
            local += p.numel() * size
            replicated += p.numel() * size
    every = accelerator.gather(torch.tensor([local], dtype=torch.int64, device=accelerator.device))
    return {"param_bytes_per_process": [int(x) for x in every.cpu()], "param_bytes_total": int(total),
            "replicated_param_bytes": int(replicated)}


def autocast_forward(model: nn.Module, accelerator) -> None:
    """The autocast `accelerator.prepare` puts on a model's forward (--mixed-precision), without the DDP wrap."""
    if not accelerator.native_amp:
        return
    from accelerate.utils import convert_outputs_to_fp32
    from accelerate.utils.modeling import get_mixed_precision_context_manager

    autocast = get_mixed_precision_context_manager(accelerator.native_amp, accelerator.autocast_handler)
    model.forward = convert_outputs_to_fp32(autocast(model.forward))


def sync_replicated_grads(params: list[nn.Parameter], processes: int) -> None:
    """Average the gradients of the replicated (trainable) parameters over the processes: one flat all-reduce.
    Every process runs the same graph, so the same parameters have a gradient (None, e.g. frozen gates, stays)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= processes
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain HF state dict (gates taken out, full tensors) on rank 0's CPU, {} on the other processes.
    A collective: every process must call it, in the same order."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from fg_edge.gates.inject import unwrapped

    with unwrapped(model):
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Tied parameters (an LM head sharing the embedding) come back as separate copies; alias them again, so
        # save_pretrained drops the tied name as it does for the unsharded model.
        names: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
    for first, *aliases in names.values():
        for alias in aliases:
            if first in state:
                state[alias] = state[first]
    return state


@contextlib.contextmanager
def plain_class(model: nn.Module) -> Iterator[nn.Module]:
    """The model's own class back for a while: fully_shard swaps it for a subclass `FSDP<Name>`, and
    `save_pretrained` writes the class name into config.json's "architectures"."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = cls
