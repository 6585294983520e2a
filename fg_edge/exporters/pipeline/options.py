"""What a compile does (`CompileOptions`) and where it writes by default."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from fg_edge.errors import ConfigError
from fg_edge.formats.names import ORT_TARGETS
from fg_edge.exporters.onnx_export import DEFAULT_OPSET, validate_opset
from fg_edge.formats.parity import ONNX_PARITY_TOL, PARITY_DECODER_STEPS
from fg_edge.exporters.quantize import QUANTIZE_MODES
from fg_edge.exporters.weight_only import (DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK_SIZE, WEIGHT_ONLY_BITS,
                                           WeightOnlyConfig)

log = logging.getLogger(__name__)


@dataclass
class CompileOptions:
    opset: int = DEFAULT_OPSET
    quantize: str = "none"
    per_channel: bool = False
    #: also quantize the LM head (vocabulary projection) of causal LMs; None: the mode's default (weight-only
    #: int4 / int8-wo: quantized; int8 / qdq: kept fp32)
    quantize_lm_head: Optional[bool] = None
    #: weight-only (int4 / int8-wo) settings, see fg_edge.exporters.weight_only
    block_size: int = DEFAULT_BLOCK_SIZE
    symmetric: Optional[bool] = None       # None: the method's default (rtn symmetric, hqq / gptq asymmetric)
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    #: rtn, hqq, gptq; None: int4 takes gptq when there is calibration text (--calibration, or the training data
    #: training.json records; pipeline.loading.choose_int4_method), else hqq; int8-wo takes rtn
    quant_method: Optional[str] = None
    lm_head_bits: int = 8                  # int4: the LM head's bits (8 by default)
    #: int4: which MatMuls keep 8-bit weights (fg_edge.exporters.mixed_bits.POLICIES)
    mixed_bits: str = "edges"
    quantize_embedding: bool = False
    #: quantized decoders: new greedy tokens per prompt compared with the fp32 graph at compile time
    quality_tokens: int = 64
    calibration: Optional[str] = None
    ort_format: bool = False
    #: --ort-target: which EPs the .ort files are converted for (names.ORT_TARGETS); None: ("cpu",), the default
    ort_targets: Optional[tuple[str, ...]] = None
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
        if self.quantize == "int4" and self.quant_method is None and self.calibration is not None:
            # int4's default with calibration text at hand (choose_int4_method); a new object, self stays as given
            return replace(self, quant_method="gptq").validate()
        if self.weight_only:
            self.weight_only_config()          # raises ConfigError naming the bad option
        elif self.quantize_embedding:
            raise ConfigError(f"--quantize-embedding needs a weight-only mode (--quantize int4 or int8-wo); got "
                              f"--quantize {self.quantize}")
        if self.calibration is not None and not self.needs_calibration:
            log.warning("--calibration is only used by --quantize qdq and --quant-method gptq; ignoring it")
        self._validate_ort_targets()
        if self.quality_tokens < 1:
            raise ConfigError(f"--quality-tokens must be >= 1; got {self.quality_tokens}")
        if not (self.tol > 0) or not math.isfinite(self.tol):
            raise ConfigError(f"--tolerance must be a finite number > 0 (inf would switch the parity gate off); "
                              f"got {self.tol}")
        return self

    def _validate_ort_targets(self) -> None:
        if self.ort_targets is None:
            return
        given = " ".join(f"--ort-target {t}" for t in self.ort_targets)
        unknown = [t for t in self.ort_targets if t not in ORT_TARGETS]
        if unknown or not self.ort_targets:
            raise ConfigError(f"--ort-target {', '.join(map(repr, unknown)) or '(none)'}: use one of "
                              f"{', '.join(ORT_TARGETS)}")
        if not self.ort_format:
            raise ConfigError(f"{given} needs --ort-format (it says which .ort files --ort-format writes)")
        if "nnapi" in self.ort_targets and self.quantize not in ("none", "qdq"):
            raise ConfigError(f"--ort-target nnapi cannot take --quantize {self.quantize}: NNAPI runs none of its "
                              f"quantized ops (int8: DynamicQuantizeLinear + MatMulInteger; int4 / int8-wo: the "
                              f"contrib op MatMulNBits). Use --quantize qdq (static QDQ int8, QuantizeLinear / "
                              f"DequantizeLinear, which NNAPI takes) or no --quantize")

    @property
    def ort_target_list(self) -> tuple[str, ...]:
        """The --ort-target values in force (("cpu",) unless given), duplicates dropped, order kept."""
        return tuple(dict.fromkeys(self.ort_targets or ("cpu",)))

    @property
    def weight_only(self) -> bool:
        return self.quantize in WEIGHT_ONLY_BITS

    @property
    def needs_calibration(self) -> Optional[str]:
        """The option that reads calibration text ('--quantize qdq', '--quant-method gptq'), or None."""
        if self.quantize == "qdq":
            return "--quantize qdq"
        if self.weight_only and self.quant_method == "gptq":      # (no method resolves to gptq by default)
            return "--quant-method gptq"
        return None

    @property
    def calibration_limit(self) -> int:
        """How many calibration texts are read: GPTQ's Hessians need far more rows than QDQ's ranges."""
        from fg_edge.exporters.gptq import GPTQ_CALIBRATION_TEXTS
        from fg_edge.exporters.quantize import CALIBRATION_SENTENCES

        return GPTQ_CALIBRATION_TEXTS if self.needs_calibration == "--quant-method gptq" else CALIBRATION_SENTENCES

    @property
    def lm_head_quantized(self) -> bool:
        return self.weight_only if self.quantize_lm_head is None else bool(self.quantize_lm_head)

    def weight_only_config(self) -> WeightOnlyConfig:
        return WeightOnlyConfig(bits=WEIGHT_ONLY_BITS[self.quantize], block_size=self.block_size,
                                symmetric=self.symmetric, accuracy_level=self.accuracy_level,
                                method=self.quant_method, include_lm_head=self.lm_head_quantized,
                                lm_head_bits=self.lm_head_bits, mixed_bits=self.mixed_bits,
                                include_embedding=self.quantize_embedding).validate()


def default_output(model_dir: str | Path) -> Path:
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + "_compiled")
