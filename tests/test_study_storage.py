"""Ray's trial storage on a cluster of several nodes: a local folder that not every node sees is refused before
any trial (exit 2, one line saying what to pass). The cluster here is simulated: the per-node probe
(``harness.tune.session.seen_on_every_node``) answers as two nodes would, one of which does not mount the
folder. The end-to-end run on a real 2-node Ray cluster is in ``test_study_cluster.py``."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_study_text

from harness.preflight import STORAGE_FIX, storage_folder, storage_problem

ADDRESS = "10.0.0.1:6379"
HEAD, OTHER = "10.0.0.1/aaaaaaaa", "10.0.0.2/bbbbbbbb"


def test_a_folder_one_node_does_not_see_is_a_problem_naming_the_node_and_the_fix():
    problem = storage_problem("/scratch/ray", {HEAD: True, OTHER: False}, default=False)
    assert problem is not None and problem.keys == ("--storage",)
    assert "/scratch/ray (--storage) is not seen by 1 of the 2 nodes" in problem.message
    assert OTHER in problem.message and HEAD not in problem.message
    assert problem.message.endswith(STORAGE_FIX) and "\n" not in problem.message


def test_one_node_or_a_folder_every_node_sees_is_fine():
    assert storage_problem("/local/ray", {HEAD: False}, default=True) is None  # one node: its own disk is fine
    assert storage_problem("/nfs/ray", {HEAD: True, OTHER: True}, default=False) is None
    assert storage_problem("/nfs/ray", {}, default=False) is None  # no answer: not checked (a warning)


def test_the_default_storage_is_work_ray_and_an_object_store_is_not_probed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_folder(None, "table1") == tmp_path / "work" / "ray" / "table1"
    assert storage_folder("~/ray", "table1") == Path("~/ray").expanduser()
    assert storage_folder(f"file://{tmp_path}/r", "table1") == tmp_path / "r"
    assert storage_folder("s3://bucket/ray", "table1") is None
    problem = storage_problem(str(storage_folder(None, "t")), {HEAD: True, OTHER: False}, default=True)
    assert problem is not None and "(the default, under work/ray)" in problem.message


@pytest.fixture
def two_nodes(monkeypatch):
    """A 2-node cluster as ``harness run --address`` sees it: 2 CPUs; the head sees the driver's files, the other
    node sees none of them (``blind``) or all (``shared``). Records the paths each probe asked about."""
    import harness.tune.session as session

    asked: list[str] = []
    state = {"other_sees": False}

    def seen(address: str, path: str, timeout: float = 60) -> dict[str, bool]:
        assert address == ADDRESS
        asked.append(path)
        return {HEAD: Path(path).exists(), OTHER: state["other_sees"] and Path(path).exists()}

    monkeypatch.setattr(session, "cluster_resources", lambda address: (2.0, 0.0))
    monkeypatch.setattr(session, "seen_on_every_node", seen)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return asked, state


@pytest.mark.parametrize("storage", [None, "scratch/ray"])
def test_harness_run_refuses_storage_a_node_does_not_see_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                                             two_nodes, storage):
    from harness.cli import main

    asked, _ = two_nodes
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(tiny_study_text(tmp_path / "synth", seeds=1, rows={"TSN": "tsn"}))
    args = ["run", "tiny.yaml", "--address", ADDRESS] + (["--storage", storage] if storage else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    want = tmp_path / (storage or "work/ray/tiny")
    assert len(err) == 1 and err[0].startswith(f"error: Ray's trial storage {want} "), err
    assert "not seen by 1 of the 2 nodes" in err[0] and OTHER in err[0] and "--storage" in err[0], err
    [marker] = asked
    assert Path(marker).parent == want and not Path(marker).exists()  # the probe's marker is removed
    assert not (tmp_path / "work" / "mlflow.db").exists(), "refused before MLflow was touched"
    assert not (tmp_path / "synth").exists(), "refused before the data was generated"
    assert list(want.iterdir()) == [], "refused before any Ray experiment"


def test_harness_run_goes_on_when_every_node_sees_the_storage_or_it_is_a_uri(tmp_path, monkeypatch, two_nodes):
    """The check passes, and the run starts (stopped here, at the engine, by a stand-in)."""
    import harness.study.engine as engine
    from harness.cli import main

    asked, state = two_nodes
    state["other_sees"] = True
    monkeypatch.chdir(tmp_path)
    Path("tiny.yaml").write_text(tiny_study_text(tmp_path / "synth", seeds=1, rows={"TSN": "tsn"}))
    started = []
    monkeypatch.setattr(engine, "execute", lambda study, kind, plan, opts: started.append(opts.storage) or 0)
    assert main(["run", "tiny.yaml", "--address", ADDRESS, "--storage", str(tmp_path / "nfs")]) == 0
    assert main(["run", "tiny.yaml", "--address", ADDRESS, "--storage", "s3://bucket/ray"]) == 0
    assert started == [str(tmp_path / "nfs"), "s3://bucket/ray"]
    assert len(asked) == 1, "an object store URI is not probed"


def test_the_interrupted_line_repeats_the_cluster_and_the_storage(capsys):
    """After Ctrl-C on a cluster, the command to continue names the same --address and --storage (a resume
    without them would be refused: the default work/ray is not shared)."""
    from harness.study.engine import interrupted
    from harness.study.plan import RunOptions

    class Store:  # the tracker calls interrupted() makes, with no trial finished meanwhile
        def __init__(self):
            self.calls = []

        def set_tags(self, run_id, tags):
            self.calls.append(("tags", run_id, dict(tags)))

        def finish(self, run_id, status):
            self.calls.append(("finish", run_id, status))

        def children(self, run_id):
            return {}

    store = Store()
    opts = RunOptions("studies/table1.yaml", profile="paper", address=ADDRESS, storage="/nfs/ray")
    assert interrupted(None, None, store, "p1", opts, before={}) == 130
    assert store.calls == [("tags", "p1", {"harness.interrupted": "1"}), ("finish", "p1", "KILLED")]
    assert capsys.readouterr().err == ("interrupted: nothing lost; continue with `harness run studies/table1.yaml "
                                       f"--profile paper --address {ADDRESS} --storage /nfs/ray --resume`\n")
