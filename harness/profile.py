"""Params and FLOPs of every row of a study, on the paper's backbone; no data, no training.

Convention (printed with every table): fvcore ``FlopCountAnalysis``, one
multiply-add = one FLOP, per clip of T frames at HxW, batch 1, the model in
eval mode, ``num_classes`` from the study (174 for Something-Something). Params
are ``sum(p.numel())`` over the whole model, head included, split into
backbone, blocks and head.

    harness profile studies/table1.yaml --format md
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

import blocks
from blocks.fusion import Fusion

from . import paper
from .config import Row, Study

if TYPE_CHECKING:
    from fvcore.nn import FlopCountAnalysis

log = logging.getLogger(__name__)

CONVENTION = ("fvcore FlopCountAnalysis, one multiply-add = one FLOP, per clip of {frames} frames "
              "at HxW ({sizes} px), batch 1, eval mode; params = all parameters incl. the {classes}-class head")

# The paper's input (Table 1: 8 frames at 112 px): what a study without a paper profile is profiled at, so
# that its GFLOPs compare with published ones (a laptop profile's 4 frames at 28 px would not).
PAPER_FRAMES, PAPER_SIZE = 8, 112


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@lru_cache(maxsize=64)
def _profile(block: str, options: tuple, backbone: str, num_classes: int, frames: int,
             sizes: tuple[int, ...]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = blocks.create(block, backbone=backbone, num_classes=num_classes, num_frames=frames,
                          **dict(options)).eval()
    inserted = blocks.block_modules(model)
    block_params = sum(_count(m) for m in inserted)
    head = _count(model.fc)
    fusion_params = sum(_count(m) for m in model.modules() if isinstance(m, Fusion))
    has_fusion = any(isinstance(m, Fusion) for m in model.modules())
    gflops, skipped = {}, set()
    for size in sizes:
        flops = _flops(model, torch.zeros(1, frames, 3, size, size))
        gflops[str(size)] = flops.total() / 1e9
        skipped |= set(flops.unsupported_ops())
    warn_hidden_ops(block, skipped)  # here, under the cache: once per block and options, whoever asked
    total = _count(model)
    return {
        "frames": frames,
        "params": total,
        "params_backbone": total - block_params - head,
        "params_blocks": block_params,
        "params_head": head,
        "gflops": gflops,
        "gflops_per_frame": {k: v / frames for k, v in gflops.items()},
        "fusion_params": fusion_params if has_fusion else None,
        "ir_interactions": model.ir_interactions(),
        "ir_interactions_all": model.ir_interactions(include_diagonal=True),
        "skipped_ops": sorted(skipped),
    }


# Ops fvcore has no FLOP handle for, that cost no multiply-adds by the convention we report.
ZERO_COST_OPS = {
    "aten::add": "residual and branch sums: elementwise, not multiply-adds",
    "aten::mean": "TSN's average of logits over T, global pooling",
    "aten::max_pool2d": "pooling branches: comparisons, no multiply-adds",
    "aten::max_pool3d": "temporal max-pool branch",
    "aten::avg_pool2d": "average-pool branch (Table 3): additions only",
    "aten::avg_pool3d": "temporal average-pool branch (Table 3)",
    "aten::index_select": "channel shuffle: a permutation, data movement only",
    "aten::unflatten": "a view that unfolds time: no data moved",
    "prim::PythonOp._TemporalShift": "TSM's shift (blocks/tsm.py): data movement only",
}


def _flops(model: torch.nn.Module, clip: torch.Tensor) -> FlopCountAnalysis:
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, clip)
    for block in blocks.block_modules(model):
        # A block whose op fvcore cannot count declares how to count it.
        analysis.set_op_handle(**getattr(type(block), "flop_handles", {}))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        analysis.total()
    return analysis


def hidden_ops(skipped: set[str] | list[str]) -> list[str]:
    """Skipped ops that may hide real work: neither counted by fvcore nor free by our convention."""
    return sorted(set(skipped) - set(ZERO_COST_OPS))


def warn_hidden_ops(block: str, skipped: set[str] | list[str]) -> str | None:
    """Log (WARNING) the ops fvcore skipped in a block's model that may hide real work; the message or None.

    fvcore skips ops it has no handle for (aten::mul, aten::sigmoid, aten::softmax...); a block built
    from them looks cheaper than it is, so this is said where the GFLOPs are shown, not in a footnote.
    """
    hidden = hidden_ops(skipped)
    if not hidden:
        return None
    msg = (f"block {block!r}: fvcore skipped {', '.join(hidden)}; its GFLOPs leave them out (they may hide "
           "real work): count them with `flop_handles` on the block class (docs/adding-a-block.md)")
    log.warning("%s", msg)
    return msg


def uncounted_ops(model: torch.nn.Module, clip: torch.Tensor) -> set[str]:
    """Ops that fvcore skipped and that are neither declared by a block nor known to cost nothing."""
    return set(_flops(model, clip).unsupported_ops()) - set(ZERO_COST_OPS)


def paper_input(study: Study, row: str) -> tuple[int, int]:
    """(frames, side) a row's params and GFLOPs are counted at: its paper setting (the paper profile with the
    row's data keys), else the paper's 8 frames at 112 px, never a laptop profile's tiny input."""
    if "paper" in study.profiles:
        from .config import row_data

        data = row_data(study, "paper", row)
        return data.frames, data.size
    return PAPER_FRAMES, PAPER_SIZE


def profile_row(row: Row, *, num_classes: int, frames: int = 8, sizes: Sequence[int] = (112, 224)) -> dict[str, Any]:
    """Params and GFLOPs of one row on its paper backbone (ResNet-50 unless the row says 101), with ``frames``."""
    options = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in row.options.items()))
    result = _profile(row.block, options, row.backbone, num_classes, frames, tuple(sizes))
    return {**result, "gflops": dict(result["gflops"])}


def profile_study(study: Study, *, frames: int = 8, sizes: Sequence[int] = (112, 224)) -> list[dict[str, Any]]:
    """:func:`profile_row` of every row, each with its name, block and backbone."""
    out = []
    begin = time.perf_counter()
    for name, row in study.rows.items():
        start = time.perf_counter()
        prof = profile_row(row, num_classes=study.num_classes, frames=frames, sizes=sizes)
        log.info("profiled %-20s in %.1f s", name, time.perf_counter() - start)
        out.append({"row": name, "block": row.block, "backbone": row.backbone, **prof})
    log.info("profiled %d rows in %.1f s", len(out), time.perf_counter() - begin)
    return out


def study_table(study: Study, profiles: list[dict[str, Any]], sizes: Sequence[int]) -> pd.DataFrame:
    """:func:`to_frame` against the study's paper figures (``results/paper/``)."""
    return to_frame(profiles, paper.figures(study), sizes)


def skipped_ops(profiles: list[dict[str, Any]]) -> list[str]:
    """Every op fvcore skipped in any of the profiled rows, sorted."""
    return sorted({op for p in profiles for op in p["skipped_ops"]})


def to_frame(profiles: list[dict[str, Any]], paper: pd.DataFrame, sizes: Sequence[int]) -> pd.DataFrame:
    """One row per study row: measured figures, each next to the paper's where it gives one."""
    rows = []
    for p in profiles:
        ref = paper.loc[p["row"]] if p["row"] in paper.index else {}
        r = {"row": p["row"], "block": p["block"], "frames": p.get("frames"), "params": p["params"],
             "params_m": round(p["params"] / 1e6, 2), "paper_params_m": ref.get("paper_params_m")}
        r["delta_params_m"] = _delta(r["params_m"], r["paper_params_m"])
        for s in sizes:
            r[f"gflops_{s}"] = round(p["gflops"][str(s)], 3)
            r[f"paper_gflops_{s}"] = ref.get(f"paper_gflops_{s}")
            r[f"delta_gflops_{s}_pct"] = _delta(r[f"gflops_{s}"], r[f"paper_gflops_{s}"], percent=True)
        r.update({"fusion_params": p["fusion_params"], "paper_fusion_params_m": ref.get("paper_fusion_params_m"),
                  "ir_interactions": p["ir_interactions"], "ir_interactions_all": p["ir_interactions_all"],
                  "paper_ir_interactions": ref.get("paper_ir_interactions"),
                  "params_backbone": p["params_backbone"], "params_blocks": p["params_blocks"],
                  "params_head": p["params_head"]})
        for s in sizes:
            r[f"gflops_per_frame_{s}"] = round(p["gflops_per_frame"][str(s)], 4)
        rows.append(r)
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def _delta(ours: float, paper: Any, percent: bool = False) -> float | None:
    try:
        ref = float(paper)
    except (TypeError, ValueError):
        return None  # the paper gives no figure, or a bound such as "<1856"
    if pd.isna(ref):
        return None
    return round(100 * (ours - ref) / ref, 1) if percent else round(ours - ref, 2)


SPLIT = ("params_backbone", "params_blocks", "params_head")


def to_markdown(frame: pd.DataFrame, skipped: list[str], frames: int, classes: int,
                sizes: Sequence[int] = (112, 224)) -> str:
    # every row has `frames` here: the convention line states it once
    main_cols = [c for c in frame.columns
                 if c not in (*SPLIT, "frames") and not c.startswith("gflops_per_frame")]
    split_cols = ["row", *[c for c in frame.columns if c in SPLIT or c.startswith("gflops_per_frame")]]
    lines = [CONVENTION.format(frames=frames, classes=classes, sizes=", ".join(map(str, sizes))) + ".", "",
             frame[main_cols].astype(object).where(frame[main_cols].notna(), "").to_markdown(index=False),
             "", "Params split (backbone + blocks + head = params) and GFLOPs per frame:", "",
             frame[split_cols].to_markdown(index=False), "",
             "params_m is rounded once to 2 decimals (the paper's 23.87M for TSN is fvcore's '23.865M' "
             "rounded twice). ir_interactions sums i != j, ir_interactions_all includes i = j "
             "(blocks/fusion.py). Paper figures: " + "results/paper/; deltas are ours minus the paper's.",
             f"Ops fvcore skips, zero-cost by this convention: "
             f"{', '.join(op for op in skipped if op in ZERO_COST_OPS) or 'none'}.",
             f"Ops fvcore skipped that may hide real work (not counted above): "
             f"{', '.join(op for op in skipped if op not in ZERO_COST_OPS) or 'none'}."]
    return "\n".join(lines)
