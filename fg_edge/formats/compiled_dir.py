"""Reading a compiled_dir (output of `fg-edge compile`) without torch.

Model variants and their files (the `.ort` twin is used by the mobile profile when present):

    compiled       model.onnx           (model.ort)
    baseline       baseline.onnx        (baseline.ort)        dense, exported by the same path
    int8           model.int8.onnx      (model.int8.ort)      dynamic int8 (--quantize int8)
    baseline-int8  baseline.int8.onnx   (baseline.int8.ort)
    qdq / int4 / int8-wo, and their baseline-* partners: model.<variant>.onnx, baseline.<variant>.onnx
    nnapi / baseline-nnapi / qdq-nnapi / baseline-qdq-nnapi: model(.qdq).nnapi.ort, baseline(.qdq).nnapi.ort only
                   (--ort-target nnapi: ORT's basic optimisation level, no contrib ops; for NNAPI / CoreML)

config.json carries `fg_edge_layers` (per-layer heads / kv heads / head_dim / ffn_size, and `kv_cache` for
decoders); compile_report.json carries `totals.flop_ratio` (the speed-up ceiling).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

from fg_edge.errors import ModelDirError
from fg_edge.formats.names import (BASELINE_OF, INPUTS_KEY, LAYERS_KEY, ORT_ONLY_VARIANTS, QUANTIZE_MODES,  # noqa: F401
                                   REPORT_FILE, TASK_KEY, VARIANTS)

log = logging.getLogger(__name__)


#: command-line names for `--model`
MODEL_CHOICES = tuple(VARIANTS)

PAST_RE = re.compile(r"^past(?:_key_values)?[._](\d+)[._](key|value)$")
PRESENT_RE = re.compile(r"^present(?:_key_values)?[._](\d+)[._](key|value)$")


@dataclass(frozen=True)
class ModelFile:
    variant: str
    path: Path
    precision: str
    dense: bool

    @property
    def size_bytes(self) -> int:
        """The .onnx file plus its external-data files (same folder, referenced by name)."""
        total = self.path.stat().st_size
        if self.path.suffix == ".onnx":
            for ext in self.path.parent.glob(self.path.name + "*.data"):
                total += ext.stat().st_size
            data = self.path.with_suffix(".onnx_data")
            if data.exists():
                total += data.stat().st_size
        return total


class CompiledDir:
    """A compiled_dir: model files, config.json, tokenizer, compile report."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ModelDirError(f"compiled_dir {self.path} does not exist or is not a folder "
                                "(write one with `fg-edge compile MODEL_DIR -o DIR`)")
        if not any((self.path / f"{stem}{ext}").exists() for stem, _, _ in VARIANTS.values()
                   for ext in (".onnx", ".ort")):
            raise ModelDirError(f"compiled_dir {self.path} holds no model.onnx / baseline.onnx "
                                f"(found: {', '.join(sorted(p.name for p in self.path.iterdir())[:20]) or 'nothing'})")

    # -- files -------------------------------------------------------------------------------------------------
    def find(self, variant: str, prefer_ort: bool = False) -> Optional[ModelFile]:
        if variant not in VARIANTS:
            raise ModelDirError(f"unknown model variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        stem, precision, dense = VARIANTS[variant]
        exts = (".ort", ".onnx") if prefer_ort else (".onnx", ".ort")
        for ext in exts:
            p = self.path / f"{stem}{ext}"
            if p.is_file():
                return ModelFile(variant, p, precision, dense)
        return None

    def require(self, variant: str, prefer_ort: bool = False) -> ModelFile:
        found = self.find(variant, prefer_ort)
        if found is None:
            stem = VARIANTS[variant][0]
            mode = variant.removeprefix("baseline-")
            if variant in ORT_ONLY_VARIANTS:
                raise ModelDirError(f"{self.path} has no {stem}.ort (re-run `fg-edge compile "
                                    f"{ORT_ONLY_VARIANTS[variant]}`" + (", without --no-baseline)"
                                                                       if VARIANTS[variant][2] else ")"))
            hint = (" (the dense baseline; re-run `fg-edge compile` with the baseline export, or pass "
                    "--no-baseline to benchmark the compiled model alone)" if variant == "baseline" else
                    f" (re-run `fg-edge compile --quantize {mode}`)" if mode in QUANTIZE_MODES else "")
            raise ModelDirError(f"{self.path} has no {stem}.onnx{hint}")
        return found

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if self.find(v) is not None]

    # -- metadata ----------------------------------------------------------------------------------------------
    def _json(self, name: str, required: bool) -> dict:
        p = self.path / name
        if not p.is_file():
            if required:
                raise ModelDirError(f"{self.path} has no {name}")
            return {}
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"cannot read {p}: {exc}") from None

    @cached_property
    def config(self) -> dict:
        return self._json("config.json", required=False)

    @cached_property
    def report(self) -> dict:
        return self._json(REPORT_FILE, required=False)

    @cached_property
    def generation_config(self) -> dict:
        return self._json("generation_config.json", required=False)

    @property
    def layers(self) -> list[dict]:
        return list(self.config.get(LAYERS_KEY) or [])

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type") or self.report.get("model_type") or "unknown")

    @property
    def task(self) -> Optional[str]:
        return self.report.get("task") or self.config.get(TASK_KEY)

    def flop_ratio(self) -> Optional[float]:
        """FLOPs before / after from compile_report.json (the speed-up ceiling), or None."""
        rep = self.report
        totals = rep.get("totals") or {}
        for src in (totals, rep):
            for key in ("flop_ratio", "flops_ratio", "speedup_ceiling"):
                val = src.get(key)
                if isinstance(val, (int, float)) and math.isfinite(val) and val > 0:
                    return float(val)
            before, after = src.get("flops_before"), src.get("flops_after")
            if isinstance(before, (int, float)) and isinstance(after, (int, float)) and after > 0:
                return float(before) / float(after)
        return None

    def id2label(self) -> dict[int, str]:
        raw = self.config.get("id2label") or {}
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            return {}

    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (self.generation_config, self.config):
            val = src.get("eos_token_id")
            if isinstance(val, int):
                ids.add(val)
            elif isinstance(val, list):
                ids.update(int(v) for v in val if isinstance(v, int))
        return ids

    def pad_token_id(self) -> int:
        for src in (self.generation_config, self.config):
            val = src.get("pad_token_id")
            if isinstance(val, int):
                return val
        eos = sorted(self.eos_token_ids())
        return eos[0] if eos else 0

    def vocab_size(self) -> Optional[int]:
        val = self.config.get("vocab_size")
        return int(val) if isinstance(val, int) else None

    def inputs(self) -> dict[str, Any]:
        """How training fed the model (config.json `fg_edge_inputs`: max_length, text_column, text_pair_column,
        label_column); {} for folders compiled before it was recorded."""
        rec = self.config.get(INPUTS_KEY)
        return dict(rec) if isinstance(rec, dict) else {}

    def max_positions(self) -> Optional[int]:
        """The most tokens one sequence can hold (fg_edge.formats.positions.position_limit), or None."""
        from fg_edge.formats.positions import position_limit

        return position_limit(self.config)

    def kv_shape(self, layer: int) -> Optional[tuple[int, int]]:
        """(kv heads, head dim) that layer `layer` caches per token, from `fg_edge_layers` (None if unknown)."""
        layers = self.layers
        if layer >= len(layers):
            return None
        rec = layers[layer]
        cache = rec.get("kv_cache")
        if isinstance(cache, dict) and "num_heads" in cache and "head_dim" in cache:
            return int(cache["num_heads"]), int(cache["head_dim"])
        if "num_kv_heads" in rec and "head_dim" in rec:
            return int(rec["num_kv_heads"]), int(rec["head_dim"])
        return None

    # -- tokenizer ---------------------------------------------------------------------------------------------
    def tokenizer(self):
        """The `tokenizers.Tokenizer` from tokenizer.json (torch- and transformers-free)."""
        p = self.path / "tokenizer.json"
        if not p.is_file():
            raise ModelDirError(f"{self.path} has no tokenizer.json (the torch-free runtime needs a fast "
                                "tokenizer file; save the tokenizer with a fast HF tokenizer when compiling)")
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover
            raise ModelDirError("the `tokenizers` package is missing: pip install fg-edge") from exc
        try:
            return Tokenizer.from_file(str(p))
        except Exception as exc:
            raise ModelDirError(f"cannot read {p}: {exc}") from None

    def tokenizer_config(self) -> dict:
        return self._json("tokenizer_config.json", required=False)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "model_type": self.model_type, "task": self.task,
                "variants": self.variants(), "flop_ratio": self.flop_ratio(), "layers": self.layers}
