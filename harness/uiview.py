"""What the MLflow UI shows of a study: a saved view of its trials, stored with the experiment.

The runs page of MLflow 3.17 shows run names, start and duration only, and
remembers columns, grouping and charts per browser. A *saved view* is the one
state the server keeps: an experiment tag ``mlflow.sharedViewState.<key>``
holding ``{name, createdAt, updatedAt, state}``. The UI lists it under
"Views" and opens it from a link with ``viewStateShareKey=<key>``. The
harness's view groups the trials by table line (the row, or row@regime),
shows row, seed, block, params and GFLOPs, top-1 as columns, and charts the
rows: top-1 at the last epoch, validation top-1 by epoch, top-1 against
GFLOPs.

Pure: names only, no MLflow (:mod:`harness.tracking` writes the tag).
"""
from __future__ import annotations

import json
from typing import Any

from harness import names

TRIALS_VIEW = "harness-trials"  # the view's key: the tag's suffix and the links' viewStateShareKey
TRIALS_VIEW_NAME = "trials by row"
GFLOPS_SIZE = 112  # every row is profiled at 112 px (harness.study.plan.profile_rows): the paper's column
SECTION = "harness-rows"


def _column(kind: str, key: str) -> str:
    """A runs-table column id as the UI writes it, e.g. ``tags.`harness.row```."""
    return f"{kind}.`{key}`"


COLUMNS = [_column("tags", names.ROW), _column("tags", names.SEED), _column("tags", names.BLOCK),
           _column("metrics", names.PROFILE_PARAMS), _column("metrics", names.profile_gflops(GFLOPS_SIZE)),
           _column("metrics", names.LAST_TOP1), _column("metrics", names.BEST_TOP1)]


def _chart(kind: str, title: str, **fields: Any) -> dict[str, Any]:
    # not "generated": the UI would otherwise regenerate (replace) the charts of the section
    return {"uuid": f"harness-{title}", "type": kind, "runsCountToCompare": 100, "metricSectionId": SECTION,
            "deleted": False, "isGenerated": False, "displayName": title, **fields}


def charts() -> list[dict[str, Any]]:
    """Bars of the table's number, the learning curves, and the trade-off the tables are about."""
    line = {"metricKey": names.VAL_TOP1, "selectedMetricKeys": [names.VAL_TOP1], "lineSmoothness": 0,
            "xAxisKey": "step", "xAxisScaleType": "linear", "scaleType": "linear", "selectedXAxisMetricKey": "",
            "yAxisKey": "metric", "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True, "range": {}}
    gflops = names.profile_gflops(GFLOPS_SIZE)
    return [_chart("BAR", "top-1 at the last epoch", metricKey=names.LAST_TOP1),
            _chart("LINE", "validation top-1 by epoch", **line),
            _chart("SCATTER", f"top-1 vs GFLOPs@{GFLOPS_SIZE}", xaxis={"key": gflops, "type": "METRIC"},
                   yaxis={"key": names.LAST_TOP1, "type": "METRIC"})]


def trials_state() -> dict[str, Any]:
    """The runs page's state: search facets and UI state, as the UI saves them."""
    return {
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": True,
        "selectedColumns": COLUMNS,
        # one group per table line, averaged over seeds: bars and curves compare rows, not trials
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": names.LABEL}]},
        "useGroupedValuesInCharts": True, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": True,
        "compareRunCharts": charts(),
        "isAccordionReordered": True,  # keep this section first; the UI appends charts of other metrics after it
        "compareRunSections": [{"uuid": SECTION, "name": "rows: mean over seeds", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
    }


def view_tag() -> dict[str, str]:
    """The experiment tag that saves the view. Its times only order the Views menu (a user's own views,
    newer, come first); 0 keeps the value the same on every write."""
    envelope = {"name": TRIALS_VIEW_NAME, "createdAt": 0, "updatedAt": 0, "state": json.dumps(trials_state())}
    return {names.SAVED_VIEW.format(key=TRIALS_VIEW): json.dumps(envelope)}
