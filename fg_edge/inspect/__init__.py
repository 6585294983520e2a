"""`fg-edge inspect`: what the gates of a gated model learned, and what the compiler will remove.

    from fg_edge.inspect import format_table, inspect_model, plot_report

Modules: `report` (the `InspectionReport` data + JSON, torch-free), `build` (`inspect_model`: a report from a gated
model), `render` (`format_table`: text), `plot` (`plot_report`: matplotlib PNG; depends on report, never the other
way). Imports are lazy so `import fg_edge.inspect` stays cheap.
"""

from __future__ import annotations

from fg_edge.lazy import lazy_exports

_EXPORTS = {
    "inspect_model": "build", "summarize_training": "build",
    "InspectionReport": "report", "format_table": "render", "plot_report": "plot",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
