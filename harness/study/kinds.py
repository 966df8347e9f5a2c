"""The kinds of study: each supplies its plan and its report, nothing else. A new kind is one entry in ``KINDS``.

The reports are imported when a report is written, not when a study is planned: a ``--dry-run`` imports
neither MLflow nor Ray.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import Profile, Study
from harness.study import grid, search
from harness.study.plan import Plan

if TYPE_CHECKING:
    from harness.tables.common import Report
    from harness.tracking import Tracker

Report_ = Callable[[Study, str, "Tracker", "str | None", Path], "Report"]


@dataclass(frozen=True)
class Kind:
    """``plan(study, profile name, resolved profile)`` and ``report(study, profile name, tracker, parent run, out)``."""

    plan: Callable[[Study, str, Profile], Plan]
    report: Report_


def table_report(study: Study, profile: str, tracker: Tracker, parent_id: str | None, out: Path) -> Report:
    from harness.tables import grid as report

    return report.write(study, profile, tracker, parent_id, out)


def probe_report(study: Study, profile: str, tracker: Tracker, parent_id: str | None, out: Path) -> Report:
    from harness.tables import probe as report

    return report.write(study, profile, tracker, parent_id, out)


def search_report(study: Study, profile: str, tracker: Tracker, parent_id: str | None, out: Path) -> Report:
    from harness.tables import search as report

    return report.write(study, profile, tracker, parent_id, out)


KINDS: dict[str, Kind] = {
    "table": Kind(grid.plan, table_report),
    "probe": Kind(grid.plan, probe_report),
    "search": Kind(search.plan, search_report),
}
