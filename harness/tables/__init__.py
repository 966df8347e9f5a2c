"""Reports: a study's tables and figures, built with pandas from MLflow alone (never from a run's memory).

    harness tables studies/table1.yaml       # -> results/table1.{md,csv,tex,png}
    harness tables studies/rf_search.yaml    # -> results/rf_search.{md,csv} and its two PNGs

One module per kind of study (``grid``: tables and Fig. 5, ``probe``: the
action-scale probe, ``search``: an Optuna search), each with a ``write`` that
reads the study's latest invocation from the store and writes its files all or
nothing (``common.write_set``); ``harness.study.kinds`` names which one a study uses.
"""
