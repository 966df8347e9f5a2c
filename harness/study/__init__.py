"""The study engine: a study file in, tables out, through Ray Tune trials tracked in MLflow.

    harness run studies/table1.yaml                 # a table: rows x seeds
    harness run studies/scale_probe.yaml            # a probe: rows x regimes x seeds
    harness run studies/rf_search.yaml              # a search: Optuna samples the trials

One lifecycle for every kind of study (:mod:`harness.study.engine`): plan,
prepare the data, start or resume the MLflow parent run, run the trials on Ray,
close the parent, write the report. A kind (:mod:`harness.study.kinds`) supplies
only its plan (:mod:`harness.study.grid`, :mod:`harness.study.search`) and its
report (:mod:`harness.tables`); adding one is a new entry in ``KINDS``.
"""
