"""Shared fixtures. Data fixtures (``data_*``) write tiny media files with PyAV and Pillow.

PyAV is imported before anything can import decord: once decord's FFmpeg is
loaded, PyAV cannot open its VP8/VP9 encoders (see harness/data/video.py).
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av  # noqa: F401 - must precede decord, see the docstring
import numpy as np
import pytest
import torch


def frame_level(i: int) -> int:
    """Grey level that encodes frame index ``i`` (survives lossy coding: levels are 9 apart; up to 24 frames)."""
    return 16 + 9 * i


def indexed_frames(n: int, size: int = 32) -> np.ndarray:
    """``n`` frames whose grey level tells their index, with a small white square so codecs see content."""
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = frame_level(i)
    frames[:, :4, :4] = 255
    return frames


def decode_index(level: float) -> int:
    return int(round((level - 16) / 9))


def write_video(path, frames: np.ndarray, fps: int = 12) -> None:
    """``.webm`` -> VP9, anything else -> H.264 in MP4."""
    path.parent.mkdir(parents=True, exist_ok=True)
    webm = str(path).endswith(".webm")
    with av.open(str(path), "w", format="webm" if webm else "mp4") as c:
        s = c.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8", "threads": "1"} if webm else {"preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_frame_folder(folder, frames: np.ndarray, template: str = "{:05d}.jpg") -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / template.format(i + 1), quality=95)


def truncate(path, fraction: float = 0.6) -> None:
    """Cut a file: a 24-frame 32 px webm cut to 0.6 opens in decord with 9 frames (to 1/3, it fails to open)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


class DataMedia:
    """The helpers above, handed to tests as the ``data_media`` fixture."""

    frame_level = staticmethod(frame_level)
    indexed_frames = staticmethod(indexed_frames)
    decode_index = staticmethod(decode_index)
    write_video = staticmethod(write_video)
    write_frame_folder = staticmethod(write_frame_folder)
    truncate = staticmethod(truncate)


class IndexedClips(torch.utils.data.Dataset):
    """In-memory val clips as the harness's val loader yields them: ``(clip, label, entry index)``, with
    ``entries`` (one :class:`harness.data.formats.Entry` per clip) for the per-clip predictions."""

    def __init__(self, clips, labels):
        from harness.data.formats import Entry

        self.clips, self.labels = clips, labels
        self.entries = [Entry(Path(f"clip{i:03d}.webm"), int(y)) for i, y in enumerate(labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.clips[i], self.labels[i], i


@pytest.fixture(scope="session")
def data_media() -> DataMedia:
    return DataMedia()


SYNTH_ARGS = {"videos": 40, "frames": 16, "size": 32, "seed": 3}


@pytest.fixture(scope="session")
def data_synth_dir(tmp_path_factory):
    """A small synth set written by ``harness data synth`` (40 clips of 16 x 32 x 32), shared by the data tests."""
    from harness.cli import main

    out = tmp_path_factory.mktemp("synth") / "set"
    argv = ["data", "synth", str(out)] + [x for k, v in SYNTH_ARGS.items() for x in (f"--{k}", str(v))]
    assert main(argv) == 0
    return out


# ----------------------------------------------------------------------------- studies run as a subprocess
# Shared by the end-to-end tests (test_study_run, test_hardening_crash): a tiny study, the real driver
# (`python -m harness.cli run`) in its own session, and the look-ups into its MLflow store.

TINY_STUDY = """\
name: {name}
num_classes: 10
profiles:
  laptop:
    backbone: {{arch: tiny, width: 4, depths: [1, 1, 1, 1]}}
    data:
      format: synth
      root: {root}
      frames: 4
      size: 16
      scale_size: 16
      synth: {{videos: 32, frames: 8, size: 32, seed: 1}}
    recipe: {{epochs: {epochs}, batch_size: 8, lr: 0.05, schedule: cosine, threads: 1}}
    seeds: {seeds}
    resources: {{cpu: 1}}
rows:
{rows}"""
TINY_ROWS = {"TSN": "tsn", "TSM": "tsm"}

TINY_TRAIN = """\
name: small
backbone: {{arch: tiny, width: 4, depths: [1, 1, 1, 1]{pretrained}}}
row: {{block: tsn}}
data: {{format: synth, root: {root}, frames: 4, size: 16, scale_size: 16,
        synth: {{videos: {videos}, frames: 8, size: 32, seed: 1}}}}
recipe: {{epochs: {epochs}, batch_size: 8, lr: 0.05, threads: 1}}
"""


def tiny_train_text(root, *, epochs: int, videos: int, pretrained: str | None = None) -> str:
    """A `harness train` file: TSN on the tiny backbone and a small synthetic set (``pretrained``: a weights path)."""
    extra = f", pretrained: {pretrained}" if pretrained else ""
    return TINY_TRAIN.format(root=root, epochs=epochs, videos=videos, pretrained=extra)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """Where the tiny study's synthetic set lives; the first run generates it, later ones reuse it."""
    return tmp_path_factory.mktemp("study-synth") / "set"


def tiny_study_text(root, *, name: str = "tiny", epochs: int = 2, seeds: int = 2,
                    rows: dict[str, str] | None = None) -> str:
    """The tiny study's YAML; ``rows`` maps row names to a block name or a flow mapping of the row."""
    def row(spec: str) -> str:
        return spec if spec.startswith("{") else f"{{block: {spec}}}"

    lines = "".join(f"  {n}: {row(spec)}\n" for n, spec in (rows or TINY_ROWS).items())
    return TINY_STUDY.format(name=name, root=root, epochs=epochs, seeds=seeds, rows=lines)


def write_study(folder, root, *, epochs: int = 2, seeds: int = 2, rows: dict[str, str] | None = None,
                **extra: str):
    """``folder/tiny.yaml``: the tiny study (rows TSN, TSM unless ``rows`` maps other names to blocks)."""
    text = tiny_study_text(root, epochs=epochs, seeds=seeds, rows=rows)
    for key, value in extra.items():
        text += f"{key}: {value}\n"
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus a Ray cluster or MLflow store the caller may have set (the store is cwd/work)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def harness(args: list[str], cwd, *, timeout: float = 300, env: dict | None = None):
    """Run ``harness ARGS`` to completion in ``cwd``; the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_harness(args: list[str], cwd, env: dict, log):
    """Start ``harness ARGS`` in a new session (its own process group), output to the open file ``log``."""
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries ``HARNESS_TEST_MARKER=marker``: a driver and the Ray processes it started."""
    needle = f"HARNESS_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_marked(marker: str) -> list[int]:
    """SIGKILL every marked process (Ray's raylet, GCS and workers outlive a killed driver otherwise)."""
    killed = []
    for pid in marked_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    return killed


def kill_driver(proc, marker: str) -> None:
    """SIGKILL a driver started by :func:`start_harness`: its process group, then whatever else is marked."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(30)
    kill_marked(marker)


# ----------------------------------------------------------------------------- drivers watched line by line
# A kill, a Ctrl-C or a check is scheduled on what the driver has written, never on a delay: the same point
# of the work on a fast machine and on a slow one.

EPOCH_LINE = ": epoch  "  # the driver's line for each new epoch it logs to MLflow ("INFO harness.tune: epoch  TSN-seed0  1/2 ...")
# A driver's output goes through a pipe of the least size Linux allows, read this many bytes at a time. A
# driver held at a line (the reader stops reading) can write at most PIPE_BYTES + READ_BYTES past it, then
# blocks in write(); Tune's loop is the driver's main thread and a trial waits in each report until the loop
# takes it, so the trials stop within that many bytes of the driver's lines too, however slow this process is.
PIPE_BYTES = 4096
READ_BYTES = 256
HELD_LEAD = PIPE_BYTES + READ_BYTES
# `python -m harness.cli` with Ctrl-C as a terminal's foreground job has it. A signal ignored at exec stays
# ignored, and a suite started as `nohup make test &` hands every child SIGINT ignored: the driver would then
# run through a Ctrl-C and exit 0 (seen here). Python installs its KeyboardInterrupt handler only where SIGINT
# is not ignored at start-up, so the driver's first statement installs it.
HARNESS_CLI = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "runpy.run_module('harness.cli', run_name='__main__', alter_sys=True)")


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)


class Driver:
    """``harness ARGS`` in its own session, its output read line by line (and copied to ``log``) as it comes.

    ``hold=(text, n)``: the reader stops at the n-th line holding ``text`` until :meth:`release`, so the
    driver gets at most :data:`HELD_LEAD` bytes of output further (see :data:`PIPE_BYTES`).
    """

    def __init__(self, args: list[str], cwd: Path, env: dict, log: Path,
                 hold: tuple[str, int] | None = None) -> None:
        read_end, write_end = os.pipe()
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", HARNESS_CLI, *args], cwd=cwd, env=env,
                                         stdout=write_end, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(write_end)
        self.lines: list[str | None] = []
        self.seen = threading.Condition()
        self.log = log
        self.hold = hold
        self.held = threading.Event()
        self.released = threading.Event()
        self.reader = threading.Thread(target=self._read, args=(read_end,), daemon=True)
        self.reader.start()

    def _read(self, fd: int) -> None:
        pending = b""
        with open(self.log, "w") as out:
            while chunk := os.read(fd, READ_BYTES):
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    self._take(raw.decode(errors="replace") + "\n", out)
            if pending:
                self._take(pending.decode(errors="replace"), out)
        os.close(fd)
        with self.seen:
            self.lines.append(None)  # end of output: the driver exited
            self.seen.notify_all()

    def _take(self, line: str, out) -> None:
        out.write(line)
        out.flush()
        with self.seen:
            self.lines.append(line)
            self.seen.notify_all()
        if self.hold and self.hold[0] in line and self.count(self.hold[0]) == self.hold[1]:
            self.held.set()
            self.released.wait()  # the pipe fills behind this line: the driver stops within HELD_LEAD bytes

    def release(self) -> None:
        self.released.set()

    def count(self, text: str) -> int:
        return sum(1 for line in self.lines if line is not None and text in line)

    def wait_line(self, text: str, n: int = 1, timeout: float = 300) -> bool:
        """Block until the n-th line holding ``text`` is written; False if the driver exits first."""
        with self.seen:
            ok = self.seen.wait_for(lambda: self.count(text) >= n or None in self.lines, timeout)
            assert ok, f"timed out after {timeout:.0f} s waiting for line {n} with {text!r}; see {self.log}"
            return self.count(text) >= n

    def wait_held(self, timeout: float = 300) -> bool:
        """Block until the reader holds at its ``hold`` line; False if the driver exits first."""
        assert self.hold, "a Driver made without hold=(text, n)"
        return self.wait_line(*self.hold, timeout=timeout) and self.held.wait(timeout)


def kill_on(driver: Driver, marker: str) -> str:
    """SIGKILL the driver held at its ``hold`` line (see :class:`Driver`); where the kill landed."""
    seen = driver.wait_held()
    phase = "after exit" if not seen or driver.proc.poll() is not None else (
        "trials" if driver.count(EPOCH_LINE) else "setup")
    kill_driver(driver.proc, marker)
    driver.release()
    # nothing of Ray outlives the kill (zombies have no environment, so they are not counted)
    wait_for(lambda: not kill_marked(marker), 30, "the marked processes to die", poll=0.5)
    return phase


def tracker_for(folder):
    from harness.tracking import Tracker

    return Tracker(f"sqlite:///{folder / 'work' / 'mlflow.db'}")


def study_runs(folder, study: str = "tiny"):
    """(tracker, parents, {trial key: child run}) of a study in the folder's store (``RunRecord`` each)."""
    t = tracker_for(folder)
    parents = t.parents(study)
    children = {}
    for p in parents:
        for key, run in t.children(p.run_id).items():
            assert key not in children, f"trial {key} has child runs under two parents"
            children[key] = run
    return t, parents, children



# ----------------------------------------------------------------------------- hand-made runs for table tests


def trial_run(key: str, *, tags: dict, metrics: dict, status: str = "FINISHED", params: dict | None = None,
              history: dict | None = None, run_id: str | None = None):
    """A child run as :meth:`harness.tracking.Tracker.read_study` returns it, without a store."""
    from harness.tracking import RunRecord, TrialRun
    from harness.trial import TrialIdentity

    tags = {"harness.trial_key": key, **tags}
    record = RunRecord(run_id or key, key, "1", status, 0, 1, tags, dict(params or {}), dict(metrics))
    return TrialRun(TrialIdentity.from_tags(tags), record, dict(history or {}))


def study_runs_of(*trials, tags: dict | None = None, status: str = "FINISHED", end_time: int = 1_700_000_000_000):
    """A parent run and its trials, as :meth:`harness.tracking.Tracker.read_study` returns them."""
    from harness.tracking import RunRecord, StudyRuns

    return StudyRuns(RunRecord("p1", "parent", "1", status, 0, end_time, dict(tags or {}), {}, {}), list(trials))


@pytest.fixture(autouse=True)
def no_ray_left_connected(request):
    """A test that leaves this process joined to a Ray would hand its Ray to the next test (whose trials then
    run on the wrong cluster); disconnect it and fail the test that leaked it."""
    yield
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    ray.shutdown()
    pytest.fail(f"{request.node.nodeid} left this process connected to Ray; disconnect in the test")
