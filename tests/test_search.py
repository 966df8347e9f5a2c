"""``kind: search`` studies: the schema, Optuna learning from what Tune reports, a search end to end, resume.

The fast tests drive the searcher stack ``harness run`` uses (``harness.tune.search_algorithm``: OptunaSearch
wrapped by TrialSpecSearcher and a ConcurrencyLimiter) with a fake objective: no Ray cluster, no training.
The slow ones run the real driver (``python -m harness.cli run``) on a tiny VPS search: 16 px clips, 1 epoch.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import clean_env, harness, kill_driver, start_harness, tiny_study_text, tracker_for
from pydantic import ValidationError

from harness import space
from harness.config import Search, Study, load_study
from harness.errors import describe
from harness.study import search as planning
from harness.tables import search as report

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- the schema


def test_rf_search_study_gives_optuna_a_static_space_with_zero_as_a_choice():
    study = load_study(REPO / "studies" / "rf_search.yaml")
    dists = space.distributions(study.search)
    assert set(dists) == {"spatial_rf", "temporal_rf", "proportion", "fusion", "alpha_zero", "alpha_log",
                          "beta_zero", "beta_log", "lr"}
    assert dists["proportion"].choices == (0.5, 0.25, 0.125, 0.0625)
    assert dists["alpha_zero"].choices == (False, True) and dists["alpha_log"].log
    params = {"spatial_rf": 7, "temporal_rf": 3, "proportion": 0.125, "fusion": "shuffle", "alpha_zero": True,
              "alpha_log": 0.003, "beta_zero": False, "beta_log": 2e-4, "lr": 0.02}
    values = space.decode(study.search, params)
    assert values["alpha"] == 0.0 and values["beta"] == 2e-4 and values["spatial_rf"] == 7
    cfg = planning.train_config(study, "laptop", study.profiles["laptop"], values, "k")
    assert cfg.row.block == "vps" and cfg.row.options["spatial_rf"] == 7 and cfg.row.options["fusion"] == "shuffle"
    assert (cfg.recipe.alpha, cfg.recipe.beta, cfg.recipe.lr) == (0.0, 2e-4, 0.02)
    assert cfg.recipe.epochs == study.profiles["laptop"].recipe.epochs  # the rest is the profile's


def _study_dict() -> dict:
    return yaml.safe_load((REPO / "studies" / "rf_search.yaml").read_text())


def _bad(edit):
    d = _study_dict()
    edit(d)
    return d


BAD = {
    "typo in a space key": (lambda d: d["search"]["space"].update(spatail_rf=[3, 5]),
                            "space.spatail_rf is neither a recipe key nor an option of block 'vps'; "
                            "did you mean 'spatial_rf'?"),
    "a refused choice": (lambda d: d["search"]["space"].update(proportion=[0.5, 1.5]),
                         "space.proportion: value 1.5 is refused"),
    "or_zero on a choice": (lambda d: d["search"]["space"].update(fusion={"choice": ["learned"], "or_zero": True}),
                            "or_zero is for loguniform"),
    "log range from 0": (lambda d: d["search"]["space"].update(lr={"loguniform": [0, 0.1]}), "0 < low < high"),
    "two kinds in one param": (lambda d: d["search"]["space"].update(lr={"loguniform": [0.01, 0.1],
                                                                          "uniform": [0.01, 0.1]}),
                               "exactly one of choice, loguniform, uniform"),
    "no budget for a profile": (lambda d: d["search"]["budget"].pop("paper"),
                                "budget: give a budget for every profile; missing: paper"),
    "grace beyond the epochs": (lambda d: d["search"]["budget"]["laptop"].update(grace_period=99),
                                "budget.laptop.grace_period 99 is above the profile's 8 epochs"),
    "two rows": (lambda d: d["rows"].update(Other={"block": "tsm"}), "a search study has one base row"),
    "reference outside the space": (lambda d: d["search"]["reference"].update(pool="max"),
                                    "reference names ['pool']"),
    "unknown search key": (lambda d: d["search"].update(num_sample=4), "unknown key"),
    "search on a table study": (lambda d: d.update(kind="table"), "search: is for kind: search studies"),
    "a search without search:": (lambda d: d.pop("search"), "kind: search needs a search: section"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_search_config_errors_name_the_key(case, tmp_path):
    edit, message = BAD[case]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_bad(edit), sort_keys=False))
    with pytest.raises(ValidationError) as err:
        load_study(path)
    line = describe(path, err.value)
    assert message in line, line
    if case not in ("search on a table study", "a search without search:"):
        assert f"{path}:" in line and ": search" in line, line  # file:line: search...: what to fix


def test_harness_run_refuses_a_bad_search_in_one_line_with_exit_2(tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_bad(BAD["typo in a space key"][0]), sort_keys=False))
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}:") and "did you mean 'spatial_rf'" in err[0]


def test_pareto_front_keeps_ties_and_drops_dominated_and_incomplete_trials():
    import pandas as pd

    frame = pd.DataFrame({"gflops": [9.0, 9.0, 10.0, 8.0, 8.5, 11.0],
                          "top1": [60.0, 60.0, 70.0, 40.0, 39.0, 99.0],
                          "complete": [True, True, True, True, True, False]})
    assert report.pareto_mask(frame).tolist() == [True, True, True, True, False, False]
    assert report.dominating(frame, frame.iloc[4]).index.tolist() == [3]


# ----------------------------------------------------------------------------- the sampler receives the results

SPACE = {"spatial_rf": [3, 5, 7], "proportion": [0.5, 0.25, 0.125], "lr": {"loguniform": [0.001, 0.1]},
         "alpha": {"loguniform": [1e-4, 1e-1], "or_zero": True}}
STARTUP, N = 5, 20


def _searcher(*, seed: int = 0, sampler=None, multi: bool = False):
    """The stack ``harness run`` builds (or the same with another Optuna sampler); GFLOPs = spatial_rf."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from harness.tune import search as tuning

    search = Search.model_validate({"space": SPACE, "budget": {"laptop": {}}, "seed": seed,
                                    "startup_trials": STARTUP})
    dists = space.distributions(search)

    def make_spec(trial_id, params, number):  # what the searcher reads of a TrialSpec
        return SimpleNamespace(gflops=float(params["spatial_rf"]))

    if sampler is None:
        return tuning.search_algorithm(dists, make_spec, metric="val_top1", multi_objective=multi, seed=seed,
                                       startup_trials=STARTUP, population_size=4, max_concurrent=1)
    inner = OptunaSearch(dists, metric="val_top1", mode="max", sampler=sampler)
    wrapped = tuning.TrialSpecSearcher(inner, make_spec, metric="val_top1", objectives=["val_top1"], worst=0.0)
    return ConcurrencyLimiter(wrapped, max_concurrent=1)


def _drive(alg, objective, n: int = N, budget: float | None = None) -> list[dict]:
    """Suggest, report one epoch and complete, one trial at a time, as Tune does; the suggestions in order."""
    seen = []
    for i in range(n):
        cfg = alg.suggest(f"t{i}")
        params = {k: v for k, v in cfg.items() if k != "trial"}
        seen.append(params)
        if budget is not None and cfg["trial"].gflops > budget:  # what the trainable reports
            alg.on_trial_complete(f"t{i}", {"final": 1, "pruned_flops": 1})
            continue
        alg.on_trial_result(f"t{i}", {"epoch": 1, "training_iteration": 1, "val_top1": objective(params)})
        alg.on_trial_complete(f"t{i}", {"final": 1, "best_top1": 0.0})  # the summary: no per-epoch metric
    return seen


def _rf7(seq: list[dict]) -> int:
    return sum(p["spatial_rf"] == 7 for p in seq[STARTUP:])


def best_at_7(p):
    return (90.0 if p["spatial_rf"] == 7 else 30.0) + 10 * p["proportion"]


def best_at_3(p):
    return (90.0 if p["spatial_rf"] == 3 else 30.0) + 10 * p["proportion"]


@pytest.fixture(autouse=True)
def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_same_seed_gives_the_same_suggestions_and_another_seed_others():
    first, again = _drive(_searcher(seed=3), best_at_7), _drive(_searcher(seed=3), best_at_7)
    assert first == again
    assert _drive(_searcher(seed=4), best_at_7, n=STARTUP) != first[:STARTUP]


def test_tpe_after_warm_up_suggests_otherwise_than_random_given_the_same_results():
    import optuna

    tpe = _drive(_searcher(seed=0), best_at_7)
    rnd = _drive(_searcher(sampler=optuna.samplers.RandomSampler(seed=0)), best_at_7)
    assert tpe[:STARTUP] == rnd[:STARTUP]  # the warm-up is TPE's own random draws, same seed
    assert all(a != b for a, b in zip(tpe[STARTUP:], rnd[STARTUP:]))
    assert _rf7(tpe) > _rf7(rnd) + 3, (_rf7(tpe), _rf7(rnd))  # and it went where the results were good


def test_tpe_follows_the_values_it_is_told():
    to_7, to_3 = _drive(_searcher(seed=0), best_at_7), _drive(_searcher(seed=0), best_at_3)
    assert to_7[:STARTUP] == to_3[:STARTUP]
    assert _rf7(to_7) >= N // 2 > _rf7(to_3), (_rf7(to_7), _rf7(to_3))
    assert sum(p["spatial_rf"] == 3 for p in to_3[STARTUP:]) >= N // 2


def test_configurations_over_the_flops_budget_are_told_worst_and_avoided():
    free = _drive(_searcher(seed=0), best_at_7)
    capped = _drive(_searcher(seed=0), best_at_7, budget=6.0)  # spatial_rf 7 is 7 "GFLOPs": never trained
    assert _rf7(capped) < _rf7(free) - 3, (_rf7(capped), _rf7(free))


def test_multi_objective_tells_nsga2_top1_and_gflops():
    alg = _searcher(seed=0, multi=True)
    seq = _drive(alg, best_at_7, n=8, budget=6.0)
    study = alg.searcher.searcher._ot_study  # what Optuna holds: the one place to see what it was told
    assert type(study.sampler).__name__ == "NSGAIISampler"
    for params, trial in zip(seq, study.trials):
        expected = [0.0 if params["spatial_rf"] > 6 else best_at_7(params), float(params["spatial_rf"])]
        assert trial.values == expected


# ----------------------------------------------------------------------------- end to end (slow)

TINY_SEARCH = """\
kind: search
search:
  space:
    proportion: [0.5, 0.0625]
    lr: {{loguniform: [0.01, 0.1]}}
    alpha: {{loguniform: [1.0e-4, 1.0e-1], or_zero: true}}
  flops_budget: {budget}
  seed: 0
  startup_trials: 2
  reference: {{proportion: 0.0625}}
  budget:
    laptop: {{num_samples: {samples}, max_concurrent: {concurrent}, grace_period: 1}}
"""
# GFLOPs of the base row on ResNet-50 at 4 x 16 px (10 classes): proportion 1/2 0.148, 1/16 0.129.
BUDGET = 0.14


def write_search(folder: Path, root: Path, *, samples: int, concurrent: int, budget: float | None) -> Path:
    path = folder / "tiny.yaml"
    base = {"base": "{block: vps, spatial_rf: 3, temporal_rf: 3}"}
    path.write_text(tiny_study_text(root, name="tiny_search", epochs=1, seeds=1, rows=base)
                    + TINY_SEARCH.format(samples=samples, concurrent=concurrent,
                                         budget="null" if budget is None else budget))
    return path


def _children(folder: Path):
    t = tracker_for(folder)
    parents = t.parents("tiny_search")
    children = {k: r for p in parents for k, r in t.children(p.run_id).items()}
    return t, parents, children


def _raw(run) -> dict:
    return {k.removeprefix("search."): json.loads(v) for k, v in run.params.items() if k.startswith("search.")}


@pytest.mark.slow
def test_search_of_four_trials_end_to_end(tmp_path, synth_root):
    write_search(tmp_path, synth_root, samples=4, concurrent=2, budget=BUDGET)
    r = harness(["run", "tiny.yaml"], tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "# tiny_search: search over proportion, lr, alpha" in r.stdout

    t, parents, children = _children(tmp_path)
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    parent = parents[0]
    assert parent.metrics["reference_gflops"] > 0 and "TPE" in parent.params["sampler"]
    assert len(children) == 4
    assert {k.rsplit("/", 1)[0] for k in children} == {"tiny_search/laptop"}
    assert sorted(int(c.tags["harness.search_trial"]) for c in children.values()) == [1, 2, 3, 4]
    pruned = {k for k, c in children.items() if c.tags.get("harness.pruned") == "flops"}
    for key, run in children.items():
        m, p = run.metrics, run.params
        assert run.status == "FINISHED", key
        assert run.tags["mlflow.parentRunId"] == parent.run_id
        assert float(p["row.proportion"]) == _raw(run)["proportion"]  # the sampled value is what trained
        assert float(p["recipe.alpha"]) == (0.0 if _raw(run)["alpha_zero"] else _raw(run)["alpha_log"])
        over = m["profile_gflops_16"] > BUDGET
        assert (key in pruned) == over, (key, m["profile_gflops_16"])
        history = t.client.get_metric_history(run.run_id, "val_top1")
        if over:
            assert history == [] and "over the budget" in run.tags["harness.reason"]
        else:
            assert [h.step for h in history] == [1]
            assert m["best_top1"] == m["val_top1"]  # the closing summary arrived (ASHA let it finish)
    assert pruned and len(pruned) < 4, "seed 0 samples both proportions; the test needs one of each"

    results = tmp_path / "results"
    md = (results / "tiny_search.md").read_text()
    for key, run in children.items():
        if key not in pruned:
            assert f"| #{run.tags['harness.search_trial']} " in md
    assert "## Pareto front" in md and "## The paper's choice" in md
    for png in ("tiny_search_pareto.png", "tiny_search_importance.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((results / "tiny_search.csv").read_text().strip().splitlines()) == 1 + 4
    artifacts = {a.path for a in t.client.list_artifacts(parent.run_id, "results")}
    assert {"results/tiny_search.md", "results/tiny_search_pareto.png",
            "results/tiny_search_importance.png"} <= artifacts

    # the outputs come from MLflow alone: `harness tables` rebuilds the same report
    rebuilt = report.write(load_study(tmp_path / "tiny.yaml"), "laptop", t, None, tmp_path / "rebuilt")
    assert rebuilt.paths["md"].read_text() == md


@pytest.mark.slow
def test_resume_after_sigkill_finishes_the_search_and_optuna_keeps_what_it_learnt(tmp_path, synth_root):
    from harness.tune import search as tuning

    write_search(tmp_path, synth_root, samples=5, concurrent=1, budget=None)
    marker = uuid.uuid4().hex
    env = clean_env(HARNESS_TEST_MARKER=marker)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = start_harness(["run", "tiny.yaml"], tmp_path, env, log)
        try:
            deadline, before = time.monotonic() + 600, {}
            while time.monotonic() < deadline and proc.poll() is None:
                if "Ray experiment" in log_path.read_text():  # the store exists: safe to open
                    try:
                        before = {k: r for k, r in _children(tmp_path)[2].items() if r.status == "FINISHED"}
                    except Exception:  # noqa: BLE001 - the store may be mid-write
                        before = {}
                    if len(before) >= 2:
                        break
                time.sleep(0.5)
            assert proc.poll() is None, "the search ended before it could be killed:\n" + log_path.read_text()[-3000:]
        finally:
            kill_driver(proc, marker)
    assert 2 <= len(before) < 5

    r = harness(["run", "tiny.yaml", "--resume"], tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "restoring Ray experiment" in r.stderr
    t, parents, children = _children(tmp_path)
    assert len(parents) == 1 and parents[0].status == "FINISHED"
    finished = {k: c for k, c in children.items() if c.status == "FINISHED"}
    for key, run in children.items():  # a trial sampled after the last saved state is re-sampled, not kept
        assert key in finished or (run.status == "KILLED" and run.tags["harness.lost"] == "1"), key
    numbers = sorted(int(c.tags["harness.search_trial"]) for c in finished.values())
    assert numbers == [1, 2, 3, 4, 5]
    for key, run in before.items():  # finished before the kill: the same child, not logged again
        assert finished[key].run_id == run.run_id
        assert finished[key].metrics["val_top1"] == run.metrics["val_top1"]

    # An Optuna that remembers every result before the kill, fed the stored results in order, suggests
    # exactly what the resumed search trained. One that had started afresh would have suggested its
    # first (random) draws again after the resume.
    study: Study = load_study(tmp_path / "tiny.yaml")
    s = study.search
    replay = tuning.search_algorithm(space.distributions(s), lambda *a: SimpleNamespace(gflops=0.0),
                                     metric=s.metric, multi_objective=False, seed=s.seed, startup_trials=s.startup_trials,
                                     population_size=s.population_size, max_concurrent=1)
    for run in sorted(finished.values(), key=lambda c: int(c.tags["harness.search_trial"])):
        n = run.tags["harness.search_trial"]
        cfg = replay.suggest(f"replay{n}")
        assert {k: v for k, v in cfg.items() if k != "trial"} == _raw(run), f"trial #{n}"
        replay.on_trial_result(f"replay{n}", {"epoch": 1, "training_iteration": 1,
                                              "val_top1": run.metrics["val_top1"]})
        replay.on_trial_complete(f"replay{n}", {"final": 1})
