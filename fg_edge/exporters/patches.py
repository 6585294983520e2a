"""Make transformers' forward traceable by the TorchScript ONNX exporter (borrowed from optimum-onnx).

transformers >= 4.53 builds attention masks with `torch.vmap`, which `torch.jit.trace` cannot record;
optimum-onnx ships vectorised replacements (`sdpa_mask_without_vmap`, `eager_mask_without_vmap`) and patches
for `find_packed_sequence_indices` and `DynamicLayer.update`. We apply exactly those, only for the duration
of an export, and restore the originals afterwards (also on error).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    import transformers.cache_utils as cache_utils
    import transformers.masking_utils as masking_utils

    try:
        from optimum.exporters.onnx import model_patcher as mp
    except ImportError as exc:  # pragma: no cover - optimum-onnx is a dependency
        raise ImportError("fg-edge's ONNX export needs optimum-onnx (pip install optimum-onnx)") from exc

    registry = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS
    orig_masks = {name: registry[name] for name in ("sdpa", "eager") if name in registry}
    orig_packed = masking_utils.find_packed_sequence_indices
    orig_update = cache_utils.DynamicLayer.update
    registry.register("sdpa", mp.sdpa_mask_without_vmap)
    registry.register("eager", mp.eager_mask_without_vmap)
    masking_utils.find_packed_sequence_indices = mp.find_packed_sequence_indices_patched
    cache_utils.DynamicLayer.update = mp.patched_dynamic_layer_update
    try:
        yield
    finally:
        for name, fn in orig_masks.items():
            registry.register(name, fn)
        masking_utils.find_packed_sequence_indices = orig_packed
        cache_utils.DynamicLayer.update = orig_update
