"""Write and read a compiled folder (format: see fg_edge.compiler).

Compiling a model_dir into a folder has one entry point, `fg_edge.exporters.pipeline.compile_model_dir` (what
`fg-edge compile` runs): it writes these torch files beside the ONNX graphs, with `save_compiled`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
import torch
from torch import nn

from fg_edge.arch import ArchSpec, attach_spec, auto_class, model_task, spec_for
from fg_edge.errors import CompileError, ModelDirError
from fg_edge.formats.names import (LAYERS_KEY, LEGACY_WEIGHTS_FILE, NOTE_KEY, PLAN_FILE, REPORT_FILE, TASK_KEY,
                                   WEIGHTS_FILE)
from fg_edge.formats.atomic import atomic_output_dir
from fg_edge.formats.files import check_safetensors, read_json
from fg_edge.compiler.plan import CompilePlan
from fg_edge.compiler.shapes import apply_layer_shapes_, layer_shapes

log = logging.getLogger(__name__)

COMPILED_FORMAT_VERSION = 1


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_compiled(model: nn.Module, plan: CompilePlan, report: dict, out_dir: str | Path, tokenizer=None,
                  overwrite: bool = False) -> Path:
    """Atomically write config.json (+ fg_edge_layers, task, a note naming the layers that differ), the weights
    (WEIGHTS_FILE, not HF's name: see formats.names), the plan and the report."""
    spec = plan_spec(plan)
    config = model.config
    config.fg_edge_layers = layer_shapes(plan, spec) if spec is not None else []
    setattr(config, TASK_KEY, model_task(model))
    setattr(config, NOTE_KEY, shape_note(plan))
    config.fg_edge_compiled_format_version = COMPILED_FORMAT_VERSION
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if not (tmp / LEGACY_WEIGHTS_FILE).is_file():
            raise CompileError(f"save_pretrained wrote no single {LEGACY_WEIGHTS_FILE} (sharded?); compiled folders "
                               f"hold one weights file")
        (tmp / LEGACY_WEIGHTS_FILE).rename(tmp / WEIGHTS_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _write_json(tmp / PLAN_FILE, plan.to_dict())
        _write_json(tmp / REPORT_FILE, report)
    log.info("wrote compiled model %s", out_dir)
    return Path(out_dir)


def plan_spec(plan: CompilePlan, source: str = "compile plan") -> "ArchSpec | None":
    """The architecture spec a plan was made with (None: fold only, no layer was resized)."""
    return ArchSpec.from_dict(plan.spec, source=source) if plan.spec is not None else None


def shape_note(plan: CompilePlan) -> str:
    """The config.json note: which layers differ from the uniform sizes the rest of config.json states."""
    differ = [lp.index for lp in plan.layers if lp.heads_removed or lp.kv_heads_removed or lp.ffn_removed]
    where = f"layers {', '.join(map(str, differ))} differ" if differ else "no layer differs"
    return (f"Compiled by fg-edge: the per-layer heads / kv heads / FFN sizes are in {LAYERS_KEY} ({where} from the "
            f"uniform sizes in this config). Load the torch model with fg_edge.compiler.load_compiled(folder), not "
            f"from_pretrained; the ONNX files load anywhere (e.g. optimum's ORTModel*).")


def _load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that refuses unexpected and missing tensors (tied copies excepted) and shape mismatches."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ModelDirError(f"{source}: tensors do not fit the shape record ({str(exc).splitlines()[-1].strip()})") \
            from None
    tensors = model.state_dict(keep_vars=True)
    loaded = {id(t) for name, t in tensors.items() if name in state}
    untied = [k for k in missing if id(tensors[k]) not in loaded]
    if unexpected or untied:
        raise ModelDirError(f"{source}: {len(unexpected)} unexpected tensor(s) (first {unexpected[:1]}), "
                            f"{len(untied)} missing (first {untied[:1]})")


def load_compiled(path: str | Path) -> nn.Module:
    """Rebuild a compiled model from its folder alone (config + shape record + weights), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    weights = weights_file(path)
    for name in ("config.json", weights.name):
        if not (path / name).is_file():
            raise ModelDirError(f"{path}: missing {name}; is this a folder written by `fg-edge compile`?")
    read_json(path / "config.json", what="model config")
    check_safetensors(weights)
    config = AutoConfig.from_pretrained(path)
    shapes = getattr(config, LAYERS_KEY, None)
    if not isinstance(shapes, list):
        raise ModelDirError(f"{path / 'config.json'}: no {LAYERS_KEY} shape record; not a compiled folder")
    model = auto_class(getattr(config, TASK_KEY, None), f"{path / 'config.json'}: {TASK_KEY}").from_config(config, attn_implementation="eager")
    try:
        spec = _compiled_spec(path, model)
        if spec is not None:
            apply_layer_shapes_(model, shapes, spec)
    except CompileError as exc:
        raise ModelDirError(f"{path / 'config.json'}: {exc}") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelDirError(f"{weights}: unreadable safetensors file ({exc})") from None
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    _load_state_strict(model, state, str(weights))
    return model.eval()


def _compiled_spec(path: Path, model: nn.Module) -> "ArchSpec | None":
    """The spec recorded in the folder's compile plan (folders without one: the table / derived spec; a fold-only
    plan: None, nothing to resize)."""
    if (path / PLAN_FILE).is_file():
        plan = read_plan(path)
        if plan.spec is None and not plan.layers:
            return None
        if plan.spec is not None:
            spec = plan_spec(plan, source=str(path / PLAN_FILE))
            attach_spec(model, spec)
            return spec
    return spec_for(model)


def weights_file(path: Path) -> Path:
    """The compiled weights of folder `path` (fg-edge 0.1 wrote them as model.safetensors)."""
    legacy = path / LEGACY_WEIGHTS_FILE
    return legacy if legacy.is_file() and not (path / WEIGHTS_FILE).is_file() else path / WEIGHTS_FILE


def read_plan(path: str | Path) -> CompilePlan:
    file = Path(path) / PLAN_FILE
    try:
        return CompilePlan.from_dict(json.loads(file.read_text()), source=str(file))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{file}: cannot read the compile plan ({exc})") from None


def compiled_param_count(path: str | Path) -> int:
    """Number of tensor elements stored in a compiled folder's weights file."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights_file(Path(path))), framework="pt") as f:
        for key in f.keys():
            total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
