"""What a compile does (`CompileOptions`) and where it writes by default."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError
from fg_edge.exporters.onnx_export import DEFAULT_OPSET, validate_opset
from fg_edge.formats.parity import ONNX_PARITY_TOL, PARITY_DECODER_STEPS
from fg_edge.exporters.quantize import QUANTIZE_MODES

log = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    opset: int = DEFAULT_OPSET
    quantize: str = "none"
    per_channel: bool = False
    #: int8 / QDQ: also quantize the LM head (vocabulary projection) of causal LMs; off = kept fp32
    quantize_lm_head: bool = False
    calibration: Optional[str] = None
    ort_format: bool = False
    baseline: bool = True
    external_data: Optional[bool] = None
    tol: float = ONNX_PARITY_TOL
    decoder_steps: int = PARITY_DECODER_STEPS
    eval_data: Optional[str] = None
    eval_max_rows: int = 256

    def validate(self) -> "CompileOptions":
        validate_opset(self.opset)
        if self.quantize not in QUANTIZE_MODES:
            raise ConfigError(f"--quantize {self.quantize!r}: use one of {', '.join(QUANTIZE_MODES)}")
        for opt, value in (("--calibration", self.calibration), ("--eval-data", self.eval_data)):
            if value is not None and not str(value).startswith("hf:") and not Path(value).is_file():
                raise ConfigError(f"{opt} {value}: no such file")
        if self.calibration is not None and self.quantize != "qdq":
            log.warning("--calibration is only used by --quantize qdq; ignoring it")
        if not (self.tol > 0) or not math.isfinite(self.tol):
            raise ConfigError(f"--tolerance must be a finite number > 0 (inf would switch the parity gate off); "
                              f"got {self.tol}")
        return self


def default_output(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + "_compiled")
