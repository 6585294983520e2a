"""Pass 1 — plan: which query heads, kv heads and FFN channels each layer loses (docs/DESIGN.md §3).

The plan is read from the *eval* gate values of a gated model (row / column / group gates; exactly 0 means
closed) and is plain data (`to_dict` / `from_dict`), so it can be saved next to the compiled model and applied
again (`fg_edge.compiler.passes`) without the gates.

Rules:

* FFN channel j goes when the channel is exactly zero whatever the input: a closed column gate on the FFN
  output projection, or a closed row gate on the FFN input projection (b' = r ⊙ b, so its bias is zero too)
  when act(0) == 0 (GELU variants, ReLU, SiLU); for SwiGLU act(gate)·up, a closed `up` row always suffices and
  a closed `gate` row when act(0) == 0.
* A query head goes when its whole value/output path is zero: all its o-projection input columns closed, or all
  v rows of its (kv) head closed. Closed q·k alone does not remove a head (uniform attention still flows).
* GQA: a kv head goes only with every query head of its group. Every remaining group must keep the same number
  of query heads (HF's repeat_kv); closed heads needed to even the groups stay, with zero o columns, and are
  recorded in `heads_zeroed` ("zeroed, not removed"). Only whole heads go, so RoPE pairs stay intact.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from fg_edge.arch import ArchSpec, HeadLayout, head_layout, layers_of, spec_for
from fg_edge.errors import CompileError
from fg_edge.gates.layer import GatedLinear, in_out_features

log = logging.getLogger(__name__)

PLAN_FORMAT_VERSION = 1


@dataclass
class LayerPlan:
    """One block: its original sizes and the indices that go (all lists sorted)."""

    index: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_size: int
    heads_removed: list[int] = field(default_factory=list)
    heads_zeroed: list[int] = field(default_factory=list)     # closed but kept (GQA group evenness)
    kv_heads_removed: list[int] = field(default_factory=list)
    ffn_removed: list[int] = field(default_factory=list)

    @property
    def kept_heads(self) -> list[int]:
        gone = set(self.heads_removed)
        return [h for h in range(self.num_heads) if h not in gone]

    @property
    def kept_kv_heads(self) -> list[int]:
        gone = set(self.kv_heads_removed)
        return [h for h in range(self.num_kv_heads) if h not in gone]

    @property
    def kept_ffn(self) -> list[int]:
        gone = set(self.ffn_removed)
        return [j for j in range(self.ffn_size) if j not in gone]

    def validate(self) -> None:
        """Refuse a plan that would break the attention layout (see the module rules)."""
        where = f"compile plan, layer {self.index}"
        for name, values, size in (("heads_removed", self.heads_removed, self.num_heads),
                                   ("heads_zeroed", self.heads_zeroed, self.num_heads),
                                   ("kv_heads_removed", self.kv_heads_removed, self.num_kv_heads),
                                   ("ffn_removed", self.ffn_removed, self.ffn_size)):
            bad = [v for v in values if not 0 <= v < size]
            if bad or len(set(values)) != len(values):
                raise CompileError(f"{where}: {name} holds {len(bad)} index(es) outside [0, {size}) or duplicates")
        if set(self.heads_zeroed) & set(self.heads_removed):
            raise CompileError(f"{where}: heads {sorted(set(self.heads_zeroed) & set(self.heads_removed))} are "
                               f"both removed and kept zeroed")
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise CompileError(f"{where}: {self.num_heads} query heads do not split into {self.num_kv_heads} kv heads")
        group = self.num_heads // self.num_kv_heads
        removed = set(self.heads_removed)
        counts = set()
        for kv in range(self.num_kv_heads):
            members = range(kv * group, (kv + 1) * group)
            n_kept = sum(h not in removed for h in members)
            if kv in self.kv_heads_removed:
                if n_kept:
                    raise CompileError(f"{where}: kv head {kv} is removed but {n_kept} of its query heads stay")
            else:
                counts.add(n_kept)
        if len(counts) > 1 or 0 in counts:
            raise CompileError(f"{where}: remaining kv groups keep uneven query-head counts {sorted(counts)}")


@dataclass
class CompilePlan:
    model_type: str
    layers: list[LayerPlan]
    format_version: int = PLAN_FORMAT_VERSION
    spec: Optional[dict] = None          # the ArchSpec used (ArchSpec.to_dict); None: gates folded, nothing removed
    removal: str = "heads and FFN channels"   # or why nothing was removed (no spec fits the model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "compile plan") -> "CompilePlan":
        try:
            if data.get("format_version", 0) > PLAN_FORMAT_VERSION:
                raise CompileError(f"{source}: format_version {data['format_version']} is newer than this "
                                   f"fg-edge understands ({PLAN_FORMAT_VERSION})")
            layers = [LayerPlan(**layer) for layer in data["layers"]]
            plan = cls(model_type=data["model_type"], layers=layers,
                       format_version=data.get("format_version", PLAN_FORMAT_VERSION), spec=data.get("spec"),
                       removal=data.get("removal", "heads and FFN channels"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise CompileError(f"{source}: malformed plan ({exc!r})") from None
        for layer in plan.layers:
            layer.validate()
        return plan

    def summary(self) -> dict:
        return {
            "heads_total": sum(lp.num_heads for lp in self.layers),
            "heads_removed": sum(len(lp.heads_removed) for lp in self.layers),
            "heads_zeroed_not_removed": sum(len(lp.heads_zeroed) for lp in self.layers),
            "kv_heads_total": sum(lp.num_kv_heads for lp in self.layers),
            "kv_heads_removed": sum(len(lp.kv_heads_removed) for lp in self.layers),
            "ffn_channels_total": sum(lp.ffn_size for lp in self.layers),
            "ffn_channels_removed": sum(len(lp.ffn_removed) for lp in self.layers),
        }


# -- gate values ---------------------------------------------------------------------------------------------
def row_scale(layer: nn.Module) -> torch.Tensor:
    """Eval row gates of a (possibly gated) linear; ones for a plain one."""
    if isinstance(layer, GatedLinear):
        return layer.eval_row_scale().detach().float().cpu()
    return torch.ones(in_out_features(layer)[1])


def column_scale(layer: nn.Module) -> torch.Tensor:
    """Eval column gates (times group gates) of a (possibly gated) linear; ones for a plain one."""
    if isinstance(layer, GatedLinear):
        return layer.eval_column_scale().detach().float().cpu()
    return torch.ones(in_out_features(layer)[0])


def activation_is_zero_at_zero(block: nn.Module, spec: ArchSpec) -> bool:
    """act(0) == 0 for the FFN activation of `block` (checked numerically; unknown activations: False)."""
    if spec.ffn_act is None:
        return False
    act = block
    for part in spec.ffn_act.split("."):
        act = getattr(act, part, None)
        if act is None:
            return False
    try:
        with torch.no_grad():
            return bool((act(torch.zeros(8)) == 0).all())
    except Exception:  # noqa: BLE001 - an activation that cannot take a tensor is simply not trusted
        return False


# -- the rules -----------------------------------------------------------------------------------------------
def closed_heads(block: nn.Module, spec: ArchSpec, layout: HeadLayout) -> list[int]:
    """Query heads whose value/output path is exactly zero (o columns closed or their kv head's v rows closed)."""
    nq, nkv, hd = layout.num_heads, layout.num_kv_heads, layout.head_dim
    dead_o = (column_scale(block.get_submodule(spec.o)).view(nq, hd) == 0).all(dim=1)
    if spec.qkv:
        rows = row_scale(block.get_submodule(spec.qkv))
        v_rows = rows[nq * hd + nkv * hd: nq * hd + 2 * nkv * hd]
    else:
        v_rows = row_scale(block.get_submodule(spec.v))
    dead_v = (v_rows.view(nkv, hd) == 0).all(dim=1)
    group = nq // nkv
    return [h for h in range(nq) if bool(dead_o[h]) or bool(dead_v[h // group])]


def resolve_groups(closed: list[int], num_heads: int, num_kv_heads: int) -> tuple[list[int], list[int], list[int]]:
    """(heads removed, closed heads kept to even the kv groups, kv heads removed)."""
    group = num_heads // num_kv_heads
    closed_set = set(closed)
    kv_removed, open_counts = [], {}
    for kv in range(num_kv_heads):
        members = range(kv * group, (kv + 1) * group)
        n_open = sum(h not in closed_set for h in members)
        if n_open == 0:
            kv_removed.append(kv)
        else:
            open_counts[kv] = n_open
    target = max(open_counts.values(), default=0)
    removed, zeroed = [], []
    for kv in range(num_kv_heads):
        members_closed = [h for h in range(kv * group, (kv + 1) * group) if h in closed_set]
        if kv in open_counts:
            need = target - open_counts[kv]
            zeroed += members_closed[:need]
            removed += members_closed[need:]
        else:
            removed += members_closed
    return sorted(removed), sorted(zeroed), kv_removed


def _ffn_rows(block: nn.Module, spec: ArchSpec, ffn_size: int) -> list[torch.Tensor]:
    """Closed rows per FFN input, as channel masks: [input] or (GLU) [activated half, linear half]."""
    rows = [row_scale(block.get_submodule(p)) == 0 for p in spec.ffn_in]
    if spec.ffn_fused:
        fused = rows[0]
        if fused.numel() != 2 * ffn_size:
            raise CompileError(f"{spec.family}: fused FFN input {spec.ffn_in[0]} has {fused.numel()} rows, "
                               f"expected 2 x {ffn_size}")
        rows = [fused[:ffn_size], fused[ffn_size:]]
    return rows


def dead_ffn_channels(block: nn.Module, spec: ArchSpec) -> list[int]:
    """FFN channels whose contribution to the block output is exactly zero for every input."""
    dead = column_scale(block.get_submodule(spec.ffn_out)) == 0
    rows = _ffn_rows(block, spec, dead.numel())
    act_zero = activation_is_zero_at_zero(block, spec)
    if spec.glu and spec.glu_order_known:
        gate_rows, up_rows = rows
        dead_in = up_rows | (gate_rows & act_zero)
    elif spec.glu:   # which half is activated is not known: either row suffices only when act(0) == 0
        dead_in = (rows[0] | rows[1]) & act_zero
    else:
        dead_in = rows[0] & act_zero
    if not act_zero and any(bool(r.any()) for r in rows[:1]):
        log.warning("FFN activation of this %s block is not 0 at 0: closed FFN input rows stay (zeroed, not "
                    "removed)", spec.family)
    return torch.nonzero(dead | dead_in).flatten().tolist()


def plan_layer(index: int, block: nn.Module, spec: ArchSpec, layout: HeadLayout) -> LayerPlan:
    closed = closed_heads(block, spec, layout)
    if spec.heads_fixed:   # every head stays; the closed ones are zeroed, not removed
        removed, zeroed, kv_removed = [], closed, []
    else:
        removed, zeroed, kv_removed = resolve_groups(closed, layout.num_heads, layout.num_kv_heads)
    ffn_size = in_out_features(_plain(block.get_submodule(spec.ffn_out)))[0]
    plan = LayerPlan(index=index, num_heads=layout.num_heads, num_kv_heads=layout.num_kv_heads,
                     head_dim=layout.head_dim, ffn_size=ffn_size, heads_removed=removed, heads_zeroed=zeroed,
                     kv_heads_removed=kv_removed, ffn_removed=dead_ffn_channels(block, spec))
    plan.validate()
    return plan


def _plain(layer: nn.Module) -> nn.Module:
    return layer.base_layer if isinstance(layer, GatedLinear) else layer


def fold_only_plan(model_type: Optional[str], why: str) -> CompilePlan:
    """The plan of a model no spec fits: gates folded, nothing removed (`removal` says why)."""
    return CompilePlan(model_type=model_type, layers=[], spec=None, removal=f"none: {why}")


@torch.no_grad()
def plan_removal(gated_model: nn.Module, spec: Optional[ArchSpec] = None) -> CompilePlan:
    """The removal plan of `gated_model` (its eval gate values; the model is not modified)."""
    model_type = getattr(gated_model.config, "model_type", None)
    spec = spec or spec_for(gated_model)
    layout = head_layout(gated_model.config, spec)
    layers = [plan_layer(i, block, spec, layout) for i, block in enumerate(layers_of(gated_model, spec))]
    removal = f"FFN channels only (heads kept: {spec.heads_fixed})" if spec.heads_fixed else "heads and FFN channels"
    plan = CompilePlan(model_type=model_type, layers=layers, spec=spec.to_dict(), removal=removal)
    s = plan.summary()
    log.info("plan: %d/%d heads, %d/%d kv heads, %d/%d FFN channels removed; %d closed heads kept for GQA",
             s["heads_removed"], s["heads_total"], s["kv_heads_removed"], s["kv_heads_total"],
             s["ffn_channels_removed"], s["ffn_channels_total"], s["heads_zeroed_not_removed"])
    return plan
