"""``harness doctor``: is this machine, and its cluster, ready for a study? One screen of ok / warn / fail.

    harness doctor                                           # Python, torch, decoders, Ray, MLflow
    harness doctor --study studies/table1.yaml               # + the paper profile: data, weights, GPUs
    harness doctor --study studies/table1.yaml --address HEAD:6379   # + every node, shared storage
    harness doctor --ray                                     # also start a local Ray (5-10 s)

Each line is ``OK``, ``WARN`` or ``FAIL``, what was found, and after ``->``
what to do. Exit 0 when no line is FAIL, else 1.

It answers in seconds because it does not start Ray unless asked: without
``--address`` (or ``RAY_ADDRESS``) it reports what a local Ray would get
(this process's CPUs, torch's GPUs), which is what ``harness run`` gives
Ray; ``--ray`` starts one to see that it starts. With an address it joins
the cluster, and one zero-CPU task pinned to each node reports that node's
torch build and whether it sees a marker file written under ``work/ray``
(where Tune keeps its experiments) and the study's data and weights paths:
on several nodes they must be the same shared storage.

What it writes: the decoders' test clips in a temporary folder (removed),
the marker file (removed), and the MLflow probe: for a sqlite store a write
transaction that is rolled back; for an ``http(s)://`` server the experiment
``harness-doctor`` (created once) gets the tag ``harness.doctor.checked``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from harness.files import WORK, default_uri, sqlite_path

if TYPE_CHECKING:  # Ray is imported only when a cluster is probed (harness.tune)
    from harness.tune.session import NodeProbe

Level = Literal["ok", "warn", "fail"]

CUDA_FIX = ("on a GPU machine install a CUDA build: pip install torch==2.13.0 (PyPI's Linux wheel; "
            "see pytorch.org for other CUDA versions)")

# The formats' codecs: Something-Something v1 and list files are JPEG frames, v2 (and the synth set) VP9 webm,
# Kinetics and Diving48 H.264 mp4.
FORMAT_CODECS = {"sthv1": "jpeg", "list": "jpeg", "sthv2": "vp9", "synth": "vp9", "k400": "h264", "diving48": "h264"}
CODEC_NAMES = {"vp9": "VP9 webm", "h264": "H.264 mp4", "jpeg": "JPEG frames"}

# torchvision's ImageNet ResNets, by the first 8 hex digits of the file's SHA-256 (torchvision names its
# files after them, resnet50-0676ba61.pth, and torch.hub checks them). Verified against torchvision's
# ResNet50_Weights / ResNet101_Weights URLs (IMAGENET1K_V1, _V2) and timm's tv_in1k (the first uploads).
KNOWN_WEIGHTS: dict[str, tuple[str, str, Level]] = {
    "19c8e357": ("resnet50", "torchvision's first upload (pretrained=True before torchvision 0.13)", "ok"),
    "0676ba61": ("resnet50", "torchvision IMAGENET1K_V1", "ok"),
    "11ad3fa6": ("resnet50", "torchvision IMAGENET1K_V2", "warn"),
    "5d3b4d8f": ("resnet101", "torchvision's first upload (pretrained=True before torchvision 0.13)", "ok"),
    "63fe2227": ("resnet101", "torchvision IMAGENET1K_V1", "ok"),
    "cd907fc2": ("resnet101", "torchvision IMAGENET1K_V2", "warn"),
}
V2_NOTE = ("trained with torchvision's 2021 recipe (80.9% ImageNet top-1 for ResNet-50 against 76.1%); "
           "the paper's code loaded the V1 weights, so results may not compare")
V1_FILE = {"resnet50": "resnet50-0676ba61.pth", "resnet101": "resnet101-63fe2227.pth"}


@dataclass(frozen=True)
class Check:
    level: Level
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level.upper():<4}  {self.name:<9} {self.detail}" + (f" -> {self.fix}" if self.fix else "")


def _guard(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """A check that crashes is a FAIL line naming the crash, not a traceback that hides the other lines."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported, with what to do
        return [Check("fail", name, f"the check itself failed: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                      "run `harness -v doctor` and report the traceback")]


# ----------------------------------------------------------------------------- Python and torch


def python_check() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 11):
        return Check("fail", "python", f"{version} ({sys.executable})", "use Python 3.11 or newer (pyproject.toml)")
    return Check("ok", "python", f"{version} ({sys.executable})")


def torch_checks(gpu_needed_here: bool) -> list[Check]:
    """Version and build; CUDA, cuDNN and the GPUs torch sees. A CPU build is a WARN, or a FAIL when a
    profile that runs here (no cluster) asks for GPUs."""
    import torch

    version = torch.__version__
    if torch.version.cuda is None:
        level: Level = "fail" if gpu_needed_here else "warn"
        return [Check(level, "torch", f"{version}: a CPU build, no CUDA; trains on the CPU only", CUDA_FIX)]
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    head = f"{version}: CUDA {torch.version.cuda}, cuDNN {cudnn or 'absent'}"
    count = torch.cuda.device_count()
    if count == 0:
        level = "fail" if gpu_needed_here else "warn"
        return [Check(level, "torch", f"{head}, but no GPU visible (CUDA_VISIBLE_DEVICES="
                      f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})", "check nvidia-smi and the driver")]
    out = [Check("ok" if cudnn else "warn", "torch", f"{head}, {count} GPU(s)",
                 "" if cudnn else "install a torch wheel that ships cuDNN")]
    for i in range(count):
        p = torch.cuda.get_device_properties(i)
        out.append(Check("ok", "gpu", f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, "
                                      f"compute {p.major}.{p.minor}, bf16 {torch.cuda.is_bf16_supported()}"))
    return out


# ----------------------------------------------------------------------------- decoders


def _frames(n: int = 8, size: int = 64) -> Any:
    import numpy as np

    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = 16 + 9 * i  # a grey level per frame, and a white square so the codec sees content
    frames[:, :8, :8] = 255
    return frames


# The clips the video decoders are tried on: codec, file, container, PyAV encoder and its options.
TEST_CLIPS: tuple[tuple[str, str, str, Literal["libvpx-vp9", "libx264"], dict[str, object]], ...] = (
    ("vp9", "clip.webm", "webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
    ("h264", "clip.mp4", "mp4", "libx264", {"preset": "ultrafast"}))


def write_test_media(folder: Path) -> dict[str, Path | str]:
    """A VP9 webm, an H.264 mp4 (PyAV) and a folder of JPEG frames (Pillow); a codec that cannot be
    written maps to the reason instead of a path."""
    import av
    from PIL import Image

    frames = _frames()
    out: dict[str, Path | str] = {}
    for codec, name, fmt, encoder, options in TEST_CLIPS:
        path = folder / name
        try:
            with av.open(str(path), "w", format=fmt) as c:
                s = c.add_stream(encoder, rate=12)
                s.width, s.height, s.pix_fmt, s.options = 64, 64, "yuv420p", options
                for f in frames:
                    for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
            out[codec] = path
        except Exception as exc:  # noqa: BLE001 - any encoder failure only means this codec goes unchecked
            out[codec] = f"PyAV could not write a {CODEC_NAMES[codec]} test clip ({exc})"
    jpegs = folder / "frames"
    jpegs.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(jpegs / f"{i + 1:05d}.jpg", quality=90)
    out["jpeg"] = jpegs
    return out


def _decord_frames(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    n = len(reader)
    batch = reader.get_batch([0, n - 1]).asnumpy()
    if batch.shape != (2, 64, 64, 3):
        raise ValueError(f"decoded shape {batch.shape}, expected (2, 64, 64, 3)")
    return n


def _pyav_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for f in c.decode(video=0) if f.to_ndarray(format="rgb24").shape == (64, 64, 3))


def _pillow_frames(folder: Path) -> int:
    """Through the harness's own frame-folder reader (Pillow), as Something-Something v1 is read."""
    import numpy as np

    from harness.data.formats import Entry
    from harness.data.video import open_entry

    clip = open_entry(Entry(folder, 0, num_frames=8, frames=True))
    return len(clip.get(np.arange(8)))


def decoder_checks(needed: set[str] | None) -> list[Check]:
    """Each decoder on a clip of each codec it reads, written now. A failure on a codec the study uses
    (``needed``; None: any format may be used) is a FAIL, on another a WARN."""
    import av  # before decord: decord's FFmpeg loaded first breaks PyAV's VP9 encoder (harness.data.video)
    import PIL

    try:
        import decord
    except ImportError:
        decord = None
    with tempfile.TemporaryDirectory(prefix="harness-doctor-") as tmp:
        media = write_test_media(Path(tmp))
        readers: list[tuple[str, str | None, Callable[[Path], int], tuple[str, ...]]] = [
            ("decord", decord.__version__ if decord else None, _decord_frames, ("vp9", "h264")),
            ("pyav", av.__version__, _pyav_frames, ("vp9", "h264")),
            ("pillow", PIL.__version__, _pillow_frames, ("jpeg",))]
        return [_decoder_check(name, version, read, codecs, media, needed)
                for name, version, read, codecs in readers]


def _decoder_check(name: str, version: str | None, read: Callable[[Path], int], codecs: tuple[str, ...],
                   media: dict[str, Path | str], needed: set[str] | None) -> Check:
    if version is None:
        return Check("fail", name, "not installed", "pip install -e . (pyproject.toml pins it)")
    good: list[str] = []
    bad: list[str] = []
    unchecked: list[str] = []
    for codec in codecs:
        clip = media[codec]
        if isinstance(clip, str):  # the reason it could not be written
            unchecked.append(clip)
            continue
        try:
            n = read(clip)
            (good if n == 8 else bad).append(CODEC_NAMES[codec] + ("" if n == 8 else f" ({n} of 8 frames)"))
        except Exception as exc:  # noqa: BLE001 - the decoder's own words are the finding
            bad.append(f"{CODEC_NAMES[codec]} ({str(exc).splitlines()[0][:120]})")
    relevant = needed is None or any(CODEC_NAMES[c] in " ".join(bad) for c in needed)
    detail = f"{version}: decodes {', '.join(good) or 'nothing'}" + (f"; fails on {'; '.join(bad)}" if bad else "")
    if bad:
        return Check("fail" if relevant else "warn", name, detail, "reinstall it from pyproject.toml's pin; "
                     "`harness data inspect` shows which of your files it cannot read")
    if unchecked:
        return Check("warn", name, f"{detail}; {'; '.join(unchecked)}")
    return Check("ok", name, detail)


# ----------------------------------------------------------------------------- Ray


@dataclass
class RayInfo:
    """What trials can get: CPUs and GPUs, per node when Ray was joined (``nodes`` empty when not started)."""

    cpus: float
    gpus: float
    where: str  # "this machine" or "the Ray cluster at ADDR"
    nodes: list[NodeProbe] = field(default_factory=list)
    marker: str | None = None


def _marker() -> Path:
    """A file under work/ray, where Tune writes every trial's checkpoints: every node must see it."""
    folder = (WORK / "ray").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".doctor-{uuid.uuid4().hex[:12]}"
    path.write_text("harness doctor: shared-storage probe; safe to delete\n")
    return path


def ray_checks(address: str | None, start_local: bool, shared: list[str]) -> tuple[list[Check], RayInfo]:
    """Ray's version and what trials can get; with a cluster (or ``start_local``), every node probed."""
    from importlib.metadata import PackageNotFoundError, version

    from .preflight import local_resources

    if not address and not start_local:  # the installed version, without importing Ray (a second or more)
        try:
            installed = version("ray")
        except PackageNotFoundError:
            return [Check("fail", "ray", "not installed", "pip install -e . (pyproject.toml pins it)")], \
                RayInfo(0, 0, "this machine")
        cpus, gpus = local_resources()
        return [Check("ok", "ray", f"{installed}; not started (--ray starts one): a local Ray would get "
                                   f"{cpus:g} CPUs, {gpus:g} GPUs")], RayInfo(cpus, gpus, "this machine")
    from harness.tune.session import probe_cluster

    marker = _marker()
    try:
        found = probe_cluster(address, [str(marker), *shared], num_cpus=int(local_resources()[0]))
    finally:
        marker.unlink(missing_ok=True)
    nodes = found.nodes
    where = f"the Ray cluster at {address}" if address else "this machine"
    info = RayInfo(found.cpus, found.gpus, where, nodes, str(marker))
    head = Check("ok", "ray", f"{found.version}: {'joined' if address else 'started a local Ray on'} {where} in "
                              f"{found.started_s:.1f} s: {len(nodes)} node(s), {info.cpus:g} CPUs, {info.gpus:g} GPUs")
    return [head, *node_checks(nodes), *storage_checks(nodes, str(marker), shared)], info


def node_checks(nodes: list[NodeProbe]) -> list[Check]:
    """One line per node; a node with GPUs whose torch cannot use them is a FAIL (its trials would fail)."""
    out = []
    for n in nodes:
        build = "no torch" if n.torch is None else f"torch {n.torch} ({f'CUDA {n.cuda}' if n.cuda else 'CPU build'})"
        detail = f"{n.host} ({n.address}): {n.cpus:g} CPUs, {n.gpus:g} GPUs, {build}"
        if n.torch is None:
            out.append(Check("fail", "node", detail, "install this project in the environment Ray runs on that node"))
        elif n.gpus > 0 and not n.cuda:
            out.append(Check("fail", "node", detail, f"its GPUs are unusable by a CPU build; {CUDA_FIX}"))
        else:
            out.append(Check("ok", "node", detail))
    return out


def storage_checks(nodes: list[NodeProbe], marker: str, shared: list[str]) -> list[Check]:
    """Whether every node sees the marker under work/ray and the study's paths (same path on every node)."""
    if len(nodes) < 2:
        return []
    out = []
    for path in [marker, *shared]:
        blind = [n.host for n in nodes if not n.seen.get(path, False)]
        what = f"work/ray (Tune's experiments; marker {Path(marker).name})" if path == marker else path
        if blind:
            out.append(Check("fail", "storage", f"{what}: not seen by {', '.join(blind)} of {len(nodes)} nodes",
                             "mount it on shared storage (NFS) at the same path on every node"))
        else:
            out.append(Check("ok", "storage", f"{what}: seen by all {len(nodes)} nodes"))
    return out


# ----------------------------------------------------------------------------- MLflow


def mlflow_check(uri: str) -> Check:
    """The tracking store reachable and writable: sqlite (the default), http(s) servers, others reached only."""
    db = sqlite_path(uri)
    if db is not None:
        return _sqlite_check(uri, db)
    if uri.startswith(("http://", "https://")):
        return _http_check(uri)
    from harness.tracking import Tracker

    Tracker(uri).experiments()
    return Check("warn", "mlflow", f"{uri}: reachable; writing not checked for this kind of store",
                 "use sqlite (default) or an http(s) server for a checked store")


def _sqlite_check(uri: str, db: Path) -> Check:
    import sqlite3

    from .errors import describe_environment
    from .preflight import check_writable

    try:
        check_writable(db.parent)
    except OSError as exc:
        return Check("fail", "mlflow", f"{uri}: {describe_environment(exc)}",
                     "or set MLFLOW_TRACKING_URI to a writable store")
    if not db.exists():
        return Check("ok", "mlflow", f"{uri}: folder writable; the store is created by the first run")
    try:
        with sqlite3.connect(db, timeout=5) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "experiments" not in tables:
                return Check("fail", "mlflow", f"{uri}: {db} is not an MLflow store",
                             "move it away or point MLFLOW_TRACKING_URI elsewhere")
            n = con.execute("SELECT count(*) FROM experiments WHERE lifecycle_stage = 'active'").fetchone()[0]
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: what a run's first write needs
            con.rollback()
    except sqlite3.Error as exc:
        return Check("fail", "mlflow", f"{uri}: {exc}", "check the file's permissions, or that no other "
                     "process holds a write lock for long (a stuck driver: ray stop)")
    return Check("ok", "mlflow", f"{uri}: writable, {n} experiment(s)")


def _http(method: str, url: str, body: dict | None = None, timeout: float = 5) -> tuple[int, dict]:
    """One MLflow REST call; (status, JSON body). Uses the token or user the MLflow client would use."""
    import base64
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310 - the user's own server
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}


def _http_check(uri: str) -> Check:
    import urllib.parse

    api = uri.rstrip("/") + "/api/2.0/mlflow/experiments/"
    try:
        status, _ = _http("GET", api + "search?max_results=1")
    except OSError as exc:  # refused, DNS, timeout
        return Check("fail", "mlflow", f"{uri}: not reachable ({getattr(exc, 'reason', exc)})",
                     "start the server or fix MLFLOW_TRACKING_URI")
    if status != 200:
        return Check("fail", "mlflow", f"{uri}: answered HTTP {status} to a read",
                     "check the URI and MLFLOW_TRACKING_TOKEN / _USERNAME")
    name = "harness-doctor"
    status, body = _http("GET", api + "get-by-name?experiment_name=" + urllib.parse.quote(name))
    if status == 404:
        status, body = _http("POST", api + "create", {"name": name})
        exp_id = body.get("experiment_id")
    else:
        exp_id = body.get("experiment", {}).get("experiment_id")
    if status == 200 and exp_id:
        status, body = _http("POST", api + "set-experiment-tag", {
            "experiment_id": exp_id, "key": "harness.doctor.checked", "value": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if status != 200:
        return Check("fail", "mlflow", f"{uri}: readable, but a write answered HTTP {status} "
                                       f"{body.get('error_code', '')}".rstrip(),
                     "get write access to the server (MLFLOW_TRACKING_TOKEN / _USERNAME)")
    return Check("ok", "mlflow", f"{uri}: reachable and writable (tagged experiment {name!r})")


# ----------------------------------------------------------------------------- a study's profile


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resnet_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """A torchvision ResNet's state_dict keys and shapes (blocks' ResNet keeps torchvision's names)."""
    import blocks

    model = blocks.create("tsn", backbone=arch, num_classes=1000, num_frames=1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def state_dict_mismatch(path: Path, arch: str) -> list[str]:
    """Keys of a torchvision ``arch`` that ``path`` lacks or holds in another shape (the fc aside)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a file in torch's legacy (pre-zip) format cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    want = resnet_keys(arch)
    return [k for k, shape in want.items()
            if not k.startswith("fc.") and (k not in state or tuple(state[k].shape) != shape)]


def weights_check(path: str | None, arch: str) -> Check:
    """The ImageNet file: a torchvision release for ``arch`` by its SHA-256, else a state_dict of its layout."""
    if path is None:
        level: Level = "ok" if arch == "tiny" else "warn"
        return Check(level, "weights", f"none: {arch} trains from scratch",
                     "" if arch == "tiny" else f"set backbone.pretrained to {V1_FILE.get(arch, 'a torchvision file')}")
    file = Path(path)
    if not file.is_file():
        return Check("fail", "weights", f"{path} is not a file", "give the path of the .pth file itself")
    digest = file_sha256(file)
    known = KNOWN_WEIGHTS.get(digest[:8])
    named = file.stem.rsplit("-", 1)[-1] if "-" in file.stem else ""
    if known is None and named in KNOWN_WEIGHTS:
        return Check("fail", "weights", f"{file.name} is named as torchvision's file but its SHA-256 begins "
                                        f"{digest[:8]}: a partial or corrupted download", "download it again")
    if known is not None:
        file_arch, what, level = known
        if file_arch != arch:
            return Check("fail", "weights", f"{file.name}: {what} for {file_arch}, but the backbone is {arch}",
                         f"use {V1_FILE.get(arch, 'the ' + arch + ' file')}")
        return Check(level, "weights", f"{file.name}: {what} ({arch}, sha256 {digest[:8]}...)",
                     V2_NOTE + f"; {V1_FILE[arch]} is V1" if level == "warn" else "")
    bad = state_dict_mismatch(file, arch)
    if bad:
        return Check("fail", "weights", f"{file.name}: not a torchvision {arch} state_dict ({len(bad)} keys missing "
                                        f"or reshaped, e.g. {bad[0]})", f"use {V1_FILE.get(arch, 'a torchvision file')}")
    return Check("warn", "weights", f"{file.name}: the keys of a torchvision {arch}, origin unknown (sha256 "
                                    f"{digest[:8]}... is none of torchvision's files)",
                 f"fine if you made it on purpose; else use {V1_FILE.get(arch, 'a torchvision file')}")


def _weights_arch(profile: Any, keys: tuple) -> str:
    """The arch a checkpoint is for: its key under ``pretrained: {arch: path}``, else the profile's arch."""
    return str(keys[-1]) if keys[-1] != "pretrained" else profile.backbone.arch


def weights_findings(profile: Any, profile_name: str, archs: Any) -> list[tuple[tuple, Check]]:
    """Each ImageNet file the rows of a resolved profile load, checked as ``harness doctor`` checks it (SHA-256
    against torchvision's releases, else the state_dict's keys): (its key path in the study file, the check).
    ``harness run`` stops on a FAIL and warns on a WARN before any trial; paths not given or not there are
    :func:`harness.preflight.problems`' to report."""
    from .preflight import weight_paths

    out = []
    for path, keys, _ in weight_paths(profile, ("profiles", profile_name), archs):
        if path and "${" not in path and Path(path).exists():
            out.append((keys, weights_check(path, _weights_arch(profile, keys))))
    return out


def annotation_checks(data: Any) -> list[Check]:
    """The data folder and each annotation file the format reads, under any of the names it accepts."""
    from .data.formats import ANNOTATION_FILES, AnnotationError, find_file
    from .preflight import path_problem

    if data.format == "synth":
        return [Check("ok", "data", f"synthetic set at {data.root}, generated by the first run")]
    out = []
    for value, what in ((data.root, "data folder"), (data.annotations or data.root, "annotation folder")):
        problem = path_problem(value, (), what)
        if problem is not None:
            fix = problem.message.split("; ", 1)
            out.append(Check("fail", "data", fix[0], fix[1] if len(fix) > 1 else ""))
    if out:
        return out
    folder = Path(data.annotations or data.root)
    found, missing = [], []
    for role, names in ANNOTATION_FILES[data.format].items():
        try:
            found.append(find_file(folder, names, role).name)
        except AnnotationError:
            missing.append(f"{role} ({' or '.join(names)})")
    if missing:
        return [Check("fail", "data", f"{data.format} at {data.root}: no {'; no '.join(missing)} in {folder}",
                      "put the owners' annotation files there (docs/paper-profile.md, section 1)")]
    return [Check("ok", "data", f"{data.format} at {data.root}: {', '.join(found)}")]


def study_checks(study_path: str, profile_name: str, ray: RayInfo, address: str | None) -> list[Check]:
    """The profile's data, weights and resources, checked where the study will run."""
    from .config import load_study, trained_archs
    from .errors import describe
    from .preflight import path_problem, problems, weight_paths
    from .study.plan import resolve_profile

    try:
        study = load_study(study_path)
        profile = resolve_profile(study, profile_name)
        archs = trained_archs(study, profile_name)
    except Exception as exc:  # noqa: BLE001 - a config error is the finding
        return [Check("fail", "study", describe(study_path, exc), "fix the study file")]
    out = [Check("ok", "study", f"{study.name} ({study_path}), profile {profile_name}: {len(study.rows)} rows x "
                                f"{profile.seeds} seed(s), {profile.resources.gpu:g} GPU(s) a trial")]
    out += annotation_checks(profile.data)
    for path, keys, what in weight_paths(profile, ("profiles", profile_name), archs):  # one per arch trained
        problem = path_problem(path, keys, what)
        if problem is not None:
            out.append(Check("fail", "weights", *problem.message.split("; ", 1)))
        else:
            out.append(weights_check(path, _weights_arch(profile, keys)))
    for p in problems(profile, profile_name, cluster_cpus=ray.cpus, cluster_gpus=ray.gpus, cluster=address,
                      archs=archs):
        if p.kind != "data":
            out.append(Check("fail", "resources", *p.message.split("; ", 1)))
    return out


def shared_paths(study_path: str | None, profile_name: str) -> list[str]:
    """The study's data and weights paths that exist here: every node must see them at the same place."""
    if not study_path:
        return []
    from .config import load_study
    from .study.plan import resolve_profile

    try:
        profile = resolve_profile(load_study(study_path), profile_name)
    except Exception:  # noqa: BLE001 - study_checks reports it
        return []
    weights = profile.backbone.pretrained
    paths = [profile.data.root, profile.data.annotations,
             *(weights.values() if isinstance(weights, dict) else [weights])]
    return list(dict.fromkeys(p for p in paths if p and "${" not in p and Path(p).exists()))


def _needed_codecs(study_path: str | None, profile_name: str) -> set[str] | None:
    if not study_path:
        return None
    from .config import load_study

    try:
        study = load_study(study_path)
        return {FORMAT_CODECS[study.profiles[profile_name].data.format]}
    except Exception:  # noqa: BLE001 - study_checks reports it
        return None


def _gpu_needed_here(study_path: str | None, profile_name: str, address: str | None) -> bool:
    """A profile asking for GPUs that will run on this machine (no cluster): then no CUDA is a FAIL."""
    if not study_path or address:
        return False
    from .config import load_study

    try:
        return load_study(study_path).profiles[profile_name].resources.gpu > 0
    except Exception:  # noqa: BLE001 - study_checks reports it
        return False


# ----------------------------------------------------------------------------- all together


def run_checks(study: str | None = None, profile: str = "paper", address: str | None = None,
               start_ray: bool = False) -> list[Check]:
    address = address or os.environ.get("RAY_ADDRESS")
    checks = [python_check()]
    checks += _guard("torch", lambda: torch_checks(_gpu_needed_here(study, profile, address)))
    checks += _guard("decoders", lambda: decoder_checks(_needed_codecs(study, profile)))
    info = RayInfo(0, 0, "unknown")

    def ray_part() -> list[Check]:
        nonlocal info
        lines, info = ray_checks(address, start_ray, shared_paths(study, profile))
        return lines

    checks += _guard("ray", ray_part)
    checks += _guard("mlflow", lambda: [mlflow_check(default_uri())])
    if study:
        checks += _guard("study", lambda: study_checks(study, profile, info, address))
    return checks


def report(checks: list[Check], seconds: float) -> str:
    fails = sum(c.level == "fail" for c in checks)
    warns = sum(c.level == "warn" for c in checks)
    verdict = "ready" if not fails else "not ready"
    return "\n".join([*(c.line() for c in checks), "",
                      f"{verdict}: {fails} failure(s), {warns} warning(s) in {seconds:.1f} s"])
