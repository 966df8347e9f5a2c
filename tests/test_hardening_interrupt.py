"""Ctrl-C is a pause, not a failure: a real SIGINT to the driver's process group (what a terminal's Ctrl-C
sends) while its trials run, scheduled on the driver's first epoch line, never on a delay. The test stops
reading the driver's output at that line, so the driver blocks within a few KiB of output, and with it Tune's
loop and the trials (conftest.Driver); the trials are long enough that none can finish in those bytes, so the
signal lands while they run on a fast machine and on a slow one, however late this process gets to send it.

Expected: exit 130, one line saying how to continue, no Ray ``Tuner.restore`` hint (Tune's own SIGINT handler
is off: harness/tune/__init__.py), the parent run KILLED and tagged ``harness.interrupted=1``, the complete table
of an earlier run byte-identical (no trial finished in the interrupted invocation), and ``--resume`` ends with
a complete table.
"""
from __future__ import annotations

import os
import signal
import uuid

import pandas as pd
import pytest

from conftest import EPOCH_LINE, HELD_LEAD, Driver, clean_env, harness, kill_marked, tracker_for, wait_for, write_study

# A trial waits in each report until Tune's loop takes it (synchronous reporting), so it runs at most a
# report or two ahead of the driver's epoch lines: after the line the test holds at, a trial needs about
# EPOCHS - 1 more of them to finish, more bytes than a held driver can write (checked below on the lines of
# the first run). With fewer, a held driver could still finish its trials before the Ctrl-C lands.
EPOCHS = 48
AHEAD = 2


def latest_parent(folder):
    """(tracker, the study's latest parent run): two invocations here, each its own parent."""
    t = tracker_for(folder)
    return t, max(t.parents("tiny"), key=lambda p: p.start_time)


@pytest.mark.slow
def test_ctrl_c_pauses_the_study_and_resume_finishes_it(tmp_path, synth_root):
    write_study(tmp_path, synth_root, epochs=EPOCHS, seeds=1)
    marker = uuid.uuid4().hex
    env = clean_env(HARNESS_TEST_MARKER=marker)
    try:
        r = harness(["run", "tiny.yaml"], tmp_path, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        epoch_lines = [line for line in (r.stdout + r.stderr).splitlines() if EPOCH_LINE in line]
        assert (EPOCHS - 1 - AHEAD) * min(len(line) + 1 for line in epoch_lines) > HELD_LEAD, "raise EPOCHS"
        results = tmp_path / "results"
        before = {p.name: p.read_bytes() for p in results.iterdir()}
        assert "tiny.md" in before and "tiny.csv" in before

        driver = Driver(["run", "tiny.yaml"], tmp_path, env, tmp_path / "interrupted.log", hold=(EPOCH_LINE, 1))
        try:
            assert driver.wait_held(), f"the driver exited before its first epoch; see {driver.log}"
            os.killpg(driver.proc.pid, signal.SIGINT)  # the whole foreground group, as a terminal does
            driver.release()
            code = driver.proc.wait(180)
        finally:
            driver.release()
            if driver.proc.poll() is None:
                os.killpg(driver.proc.pid, signal.SIGKILL)
                driver.proc.wait(30)
        driver.reader.join(30)
        out = [line.rstrip("\n") for line in driver.lines if line is not None]
        text = "\n".join(out)
        assert code == 130, text[-3000:]
        said = [line for line in out if line.startswith("interrupted:")]
        assert said == ["interrupted: nothing lost; continue with `harness run tiny.yaml --resume`"], text[-3000:]
        assert "Tuner.restore" not in text and "Traceback" not in text, text[-3000:]
        assert " did not finish" not in text, text[-3000:]  # not reported as a failure

        t, parent = latest_parent(tmp_path)
        assert parent.status == "KILLED" and parent.tags.get("harness.interrupted") == "1", (parent.status,
                                                                                            parent.tags)
        after = {p.name: p.read_bytes() for p in results.iterdir()}
        assert after == before, "results/ changed although no trial finished in the interrupted invocation"
        # nothing of the interrupted driver's Ray is left running (its own shutdown, or zombies without env)
        wait_for(lambda: not kill_marked(marker), 60, "the interrupted driver's Ray processes to go", poll=0.5)

        r = harness(["run", "tiny.yaml", "--resume"], tmp_path, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    finally:
        kill_marked(marker)

    t, resumed = latest_parent(tmp_path)
    assert resumed.run_id == parent.run_id, "--resume reattaches to the interrupted parent"
    assert resumed.status == "FINISHED" and resumed.tags.get("harness.interrupted") == "0"
    children = t.children(resumed.run_id)
    assert sorted(children) == ["tiny/laptop/TSM/seed0", "tiny/laptop/TSN/seed0"]
    for key, run in children.items():
        assert run.status == "FINISHED", key
        steps = [step for step, _ in t.metric_history(run.run_id, "val_top1")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (key, steps)  # every epoch once
    assert not list(results.glob("tiny.incomplete*"))
    table = pd.read_csv(results / "tiny.csv")
    assert list(table["row"]) == ["TSN", "TSM"]
    assert "incomplete" not in (results / "tiny.md").read_text().lower()
