"""``harness doctor`` on this machine (no GPU, CPU torch), the GPU preflight, and the no-CPU-fallback rule.

Each check is a function of what it looks at, so the tests hand them folders, files and a fake MLflow server
made here; nothing reaches the network and no Ray is started (the cluster checks are fed node reports).
"""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from harness import device, doctor
from harness.cli import main
from harness.config import Profile
from harness.preflight import PreflightError, check_profile, problems
from harness.tune.session import NodeProbe, node_probe


# ----------------------------------------------------------------------------- the whole screen


def test_doctor_answers_on_this_machine_with_cuda_as_a_warning(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its probe goes to tmp_path/work
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "WARN  torch     2.13.0+cpu: a CPU build, no CUDA" in out
    assert "OK    decord    0.6.0: decodes VP9 webm, H.264 mp4" in out
    assert "OK    pyav" in out and "OK    pillow" in out and "decodes JPEG frames" in out
    assert "a local Ray would get" in out and "not started" in out
    assert "OK    mlflow    sqlite:///" in out
    assert "ready: 0 failure(s), 1 warning(s)" in out


def test_doctor_on_table1_paper_profile_here_fails_with_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for var in ("STHV1_ROOT", "STHV1_ANNOTATIONS", "IMAGENET_R50", "IMAGENET_R101", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert main(["doctor", "--study", "studies/table1.yaml", "--profile", "paper"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "FAIL  torch     2.13.0+cpu: a CPU build, no CUDA; trains on the CPU only -> on a GPU machine install " \
           "a CUDA build: pip install torch==2.13.0 (PyPI's Linux wheel; see pytorch.org for other CUDA versions)" \
           in lines
    assert "FAIL  data      environment variable STHV1_ROOT is not set -> export STHV1_ROOT=/path/to/data folder" \
           in lines
    assert "FAIL  weights   environment variable IMAGENET_R50 is not set -> export IMAGENET_R50=/path/to/checkpoint" \
           in lines
    # GST-R101 trains ResNet-101: its weights are checked too
    assert "FAIL  weights   environment variable IMAGENET_R101 is not set -> export IMAGENET_R101=/path/to/checkpoint" \
           in lines
    assert "FAIL  resources a trial asks for 1 GPUs: torch 2.13.0+cpu here is a CPU build -> install a CUDA build " \
           "of torch on a GPU machine, pass --address of a GPU cluster, or set resources.gpu: 0" in lines


# ----------------------------------------------------------------------------- MLflow


def test_naming_the_store_does_not_import_mlflow(tmp_path):
    """The doctor names the store harness run writes to (harness.files.default_uri) without MLflow's 3 s import."""
    import subprocess
    import sys

    code = ("import sys; from harness.files import default_uri; from harness import doctor; "
            "print(default_uri(), 'mlflow' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"sqlite:///{tmp_path.resolve() / 'work' / 'mlflow.db'}", "False"]


def test_mlflow_sqlite_store_new_existing_and_broken(tmp_path):
    from harness.tracking import Tracker

    new = doctor.mlflow_check(f"sqlite:///{tmp_path}/a/mlflow.db")
    assert (new.level, new.detail.endswith("the store is created by the first run")) == ("ok", True)
    Tracker(f"sqlite:///{tmp_path}/b/mlflow.db").prepare()
    assert doctor.mlflow_check(f"sqlite:///{tmp_path}/b/mlflow.db").level == "ok"
    (tmp_path / "c").write_text("a file where the store's folder should be")
    broken = doctor.mlflow_check(f"sqlite:///{tmp_path}/c/mlflow.db")
    assert broken.level == "fail" and "not a folder" in broken.detail
    (tmp_path / "d").mkdir()
    import sqlite3

    sqlite3.connect(tmp_path / "d" / "mlflow.db").execute("CREATE TABLE t (x)").connection.close()
    assert doctor.mlflow_check(f"sqlite:///{tmp_path}/d/mlflow.db").detail.endswith("is not an MLflow store")


class FakeMlflow(BaseHTTPRequestHandler):
    """The four REST calls the doctor makes; ``read_only`` refuses the writes as a server without rights would."""

    read_only = False
    calls: list[str] = []

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.calls.append(f"GET {self.path.split('?')[0]}")
        if self.path.startswith("/api/2.0/mlflow/experiments/search"):
            self._answer(200, {"experiments": []})
        else:
            self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.calls.append(f"POST {self.path}")
        if self.read_only:
            self._answer(403, {"error_code": "PERMISSION_DENIED"})
        else:
            self._answer(200, {"experiment_id": "7"} if self.path.endswith("/create") else {})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_server():
    FakeMlflow.calls, FakeMlflow.read_only = [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_mlflow_http_server_reachable_and_writable(fake_server):
    check = doctor.mlflow_check(fake_server)
    assert (check.level, check.detail) == ("ok", f"{fake_server}: reachable and writable (tagged experiment "
                                                 "'harness-doctor')")
    assert FakeMlflow.calls == ["GET /api/2.0/mlflow/experiments/search", "GET /api/2.0/mlflow/experiments/get-by-name",
                                "POST /api/2.0/mlflow/experiments/create",
                                "POST /api/2.0/mlflow/experiments/set-experiment-tag"]


def test_mlflow_http_server_read_only_or_down(fake_server):
    FakeMlflow.read_only = True
    check = doctor.mlflow_check(fake_server)
    assert check.level == "fail" and "a write answered HTTP 403 PERMISSION_DENIED" in check.detail
    down = doctor.mlflow_check("http://127.0.0.1:9")  # the discard port: nothing listens
    assert down.level == "fail" and "not reachable" in down.detail


# ----------------------------------------------------------------------------- weights


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory) -> Path:
    """A state_dict with torchvision ResNet-50's keys and shapes (zeros: only the layout is checked)."""
    path = tmp_path_factory.mktemp("weights") / "my-resnet50.pth"
    torch.save({k: torch.zeros(shape) for k, shape in doctor.resnet_keys("resnet50").items()}, path)
    return path


def test_weights_of_unknown_origin_with_the_right_keys_warn(r50_file):
    check = doctor.weights_check(str(r50_file), "resnet50")
    assert check.level == "warn" and "the keys of a torchvision resnet50, origin unknown" in check.detail
    assert check.fix.endswith("use resnet50-0676ba61.pth")


def test_weights_with_the_wrong_layout_fail(r50_file):
    check = doctor.weights_check(str(r50_file), "resnet101")
    assert check.level == "fail" and "not a torchvision resnet101 state_dict" in check.detail


def test_weights_known_by_their_sha256(r50_file, monkeypatch, tmp_path):
    prefix = doctor.file_sha256(r50_file)[:8]
    monkeypatch.setitem(doctor.KNOWN_WEIGHTS, prefix, ("resnet50", "torchvision IMAGENET1K_V1", "ok"))
    ok = doctor.weights_check(str(r50_file), "resnet50")
    assert (ok.level, ok.detail) == ("ok", f"my-resnet50.pth: torchvision IMAGENET1K_V1 (resnet50, sha256 {prefix}...)")
    assert doctor.weights_check(str(r50_file), "resnet101").level == "fail"  # a ResNet-50 file for a ResNet-101
    fake = tmp_path / "resnet50-0676ba61.pth"
    fake.write_bytes(b"half a download")
    bad = doctor.weights_check(str(fake), "resnet50")
    assert bad.level == "fail" and "named as torchvision's file but its SHA-256 begins" in bad.detail


def test_v2_weights_warn_that_the_paper_used_v1(r50_file, monkeypatch):
    monkeypatch.setitem(doctor.KNOWN_WEIGHTS, doctor.file_sha256(r50_file)[:8],
                        ("resnet50", "torchvision IMAGENET1K_V2", "warn"))
    check = doctor.weights_check(str(r50_file), "resnet50")
    assert check.level == "warn" and "the paper's code loaded the V1 weights" in check.fix


# ----------------------------------------------------------------------------- data, nodes, storage


def test_annotation_files_found_under_any_accepted_name(tmp_path):
    from harness.config import Data

    root, ann = tmp_path / "frames", tmp_path / "ann"
    root.mkdir()
    ann.mkdir()
    data = Data(format="sthv1", root=str(root), annotations=str(ann))
    missing = doctor.annotation_checks(data)
    assert missing[0].level == "fail" and "no labels (something-something-v1-labels.csv or labels.csv)" in \
        missing[0].detail
    for name in ("something-something-v1-labels.csv", "train.csv", "something-something-v1-validation.csv"):
        (ann / name).write_text("")
    found = doctor.annotation_checks(data)
    assert (found[0].level, found[0].detail) == ("ok", f"sthv1 at {root}: something-something-v1-labels.csv, "
                                                       "train.csv, something-something-v1-validation.csv")


def node(host: str, gpus: float, cuda: str | None, seen: dict[str, bool]) -> NodeProbe:
    return NodeProbe(f"id-{host}", f"10.0.0.{len(host)}", 16, gpus, host, "2.13.0", cuda, seen)


def test_nodes_with_gpus_need_a_cuda_torch():
    checks = doctor.node_checks([node("a", 8, "12.8", {}), node("bb", 8, None, {}), node("ccc", 0, None, {})])
    assert [c.level for c in checks] == ["ok", "fail", "ok"]
    assert "8 GPUs, torch 2.13.0 (CPU build)" in checks[1].detail


def test_storage_is_shared_when_every_node_sees_every_path():
    marker, data = "/shared/work/ray/.doctor-1", "/data/sthv1"
    nodes = [node("a", 8, "12.8", {marker: True, data: True}), node("bb", 8, "12.8", {marker: False, data: True})]
    checks = doctor.storage_checks(nodes, marker, [data])
    assert [c.level for c in checks] == ["fail", "ok"]
    assert checks[0].detail == "work/ray (Tune's experiments; marker .doctor-1): not seen by bb of 2 nodes"
    assert doctor.storage_checks(nodes[:1], marker, [data]) == []  # one node shares with itself


def test_node_probe_reports_this_node():
    out = node_probe(["/", "/no/such/path"])
    assert out["seen"] == {"/": True, "/no/such/path": False} and out["torch"] == torch.__version__


# ----------------------------------------------------------------------------- GPU preflight and device rule


def gpu_profile(**resources) -> Profile:
    return Profile.model_validate({
        "backbone": {"arch": "tiny", "width": 4}, "data": {"format": "synth", "root": "/unused", "frames": 4},
        "recipe": {"batch_size": 8}, "resources": {"cpu": 1, "gpu": 1, **resources}})


def test_gpu_profile_on_a_cpu_torch_names_the_fix():
    with pytest.raises(PreflightError, match="torch 2.13.0[+]cpu here is a CPU build; install a CUDA build") as e:
        check_profile(gpu_profile(), "paper", cluster_cpus=64, cluster_gpus=0)
    assert e.value.keys == ("profiles", "paper", "resources", "gpu")


def test_gpu_profile_on_a_cluster_without_gpus_names_the_fix():
    found = problems(gpu_profile(), "paper", cluster_cpus=64, cluster_gpus=0, cluster="head:6379")
    assert [(p.kind, p.message) for p in found] == [("resources", (
        "a trial asks for 1 GPUs: the Ray cluster at head:6379 has no GPU to give; start its nodes with "
        "`ray start ... --num-gpus=N`, or set resources.gpu: 0"))]


def test_problems_lists_everything_a_dry_run_may_downgrade():
    p = Profile.model_validate({
        "backbone": {"arch": "resnet50", "pretrained": "${NO_SUCH_VARIABLE_X}"},
        "data": {"format": "sthv1", "root": "/no/such/root", "annotations": "/no/such/ann", "frames": 8},
        "recipe": {"batch_size": 64}, "resources": {"cpu": 8, "gpu": 1, "workers": 3}})
    kinds = [(p.keys[-1], p.kind) for p in problems(p, "paper", cluster_cpus=2, cluster_gpus=0)]
    assert kinds == [("root", "data"), ("annotations", "data"), ("pretrained", "data"), ("workers", "config"),
                     ("gpu", "resources"), ("cpu", "resources")]


def test_run_stops_a_gpu_profile_here_with_exit_2(tmp_path, monkeypatch, capsys):
    """Data and weights present, no GPU: `harness run` stops before anything with the GPU fix."""
    for var, name in (("STHV1_ROOT", "frames"), ("STHV1_ANNOTATIONS", "ann")):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(var, str(tmp_path / name))
    for var, name in (("IMAGENET_R50", "r50.pth"), ("IMAGENET_R101", "r101.pth")):
        (tmp_path / name).write_bytes(b"")
        monkeypatch.setenv(var, str(tmp_path / name))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(Path(__file__).parents[1])
    assert main(["run", "studies/table1.yaml", "--profile", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: studies/table1.yaml:") and "profiles.paper.resources.gpu: a trial asks for 1 " \
        "GPUs: torch 2.13.0+cpu here is a CPU build" in err


def test_a_trial_given_a_gpu_never_trains_on_the_cpu(monkeypatch):
    from harness import train

    assert device.for_trial([0]) == "cuda" and device.for_trial([]) == "auto"
    assert device.choose(False, "auto") == "cpu" and device.choose(True, "cpu") == "cpu"
    assert device.choose(True, "auto") == "cuda"
    monkeypatch.setenv(device.ENV, "cuda")
    with pytest.raises(device.DeviceError, match="this trial was given a GPU but torch 2.13.0[+]cpu"):
        train.device()
    monkeypatch.setenv(device.ENV, "tpu")
    with pytest.raises(device.DeviceError, match="HARNESS_DEVICE='tpu' is not one of auto, cpu, cuda"):
        device.requested()
    monkeypatch.delenv(device.ENV)
    assert train.device() == (torch.device("cpu"), None)


@pytest.mark.slow
def test_doctor_on_a_two_node_cluster_probes_each_node_and_the_storage(tmp_path, monkeypatch, capsys):
    """A local 2-node cluster (both on this machine, so they share its files): a line per node, shared work/ray."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    study = Path(__file__).parents[1] / "studies" / "table1.yaml"
    monkeypatch.chdir(tmp_path)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    address = c.address
    try:
        code = main(["doctor", "--address", address, "--study", str(study), "--profile", "laptop"])
    finally:
        ray.shutdown()
        c.shutdown()
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"joined the Ray cluster at {address}" in out and "2 node(s), 2 CPUs, 0 GPUs" in out
    assert out.count("OK    node      ") == 2
    assert "work/ray (Tune's experiments; marker .doctor-" in out and "seen by all 2 nodes" in out
    assert not list((tmp_path / "work" / "ray").glob(".doctor-*"))  # the marker is removed
