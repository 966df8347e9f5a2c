"""Nothing a user loads runs code, and nothing listens beyond this machine unless asked.

* YAML: only SafeLoader (or a subclass) builds objects; a ``!!python`` tag is a config error.
* Checkpoints: every ``torch.load`` passes ``weights_only=True``; a pickle whose ``__reduce__`` runs a
  command is refused by every loader harness has (resume, --evaluate, backbone.pretrained).
* No ``shell=True``, ``eval``, ``exec``, ``os.system`` or pickle loads in the package.
* ``harness ui`` binds 127.0.0.1 unless ``--host`` says otherwise.
* Annotation paths cannot leave the data root.

The scans parse the package's source (``ast``), so a comment or a docstring
that mentions a forbidden call does not trip them, and an aliased call does.
"""
from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest
from conftest import tiny_train_text
import torch
import yaml

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "blocks")


def sources() -> list[Path]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) > 20, files  # the scan sees the package, or it proves nothing
    return files


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def calls(path: Path):
    """(call node, dotted callee) for every call in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call):
            yield node, dotted(node.func)


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


# ----------------------------------------------------------------------------- YAML


def test_yaml_is_only_loaded_with_a_safe_loader():
    unsafe = {"yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
    bad, checked = [], 0
    for path in sources():
        text = path.read_text(encoding="utf-8")
        for name in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader"):
            if any(dotted(n) == name for n in ast.walk(ast.parse(text))):
                bad.append(f"{path.relative_to(REPO)}: uses {name}")
        for call, name in calls(path):
            if name in unsafe:
                bad.append(f"{where(path, call)}: {name}")
            elif name in ("yaml.load", "yaml.load_all"):
                checked += 1
                loader = keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                resolved = getattr(importlib.import_module(module_name(path)), dotted(loader), None) \
                    if isinstance(loader, ast.Name) else _attr(loader)
                if not (isinstance(resolved, type) and issubclass(resolved, yaml.SafeLoader)):
                    bad.append(f"{where(path, call)}: {name} with Loader {ast.unparse(loader) if loader else None}")
    assert not bad, "unsafe YAML loading:\n" + "\n".join(bad)
    assert checked, "no yaml.load call found: harness.config.read_yaml should be one"


def _attr(node):
    return getattr(yaml, node.attr, None) if isinstance(node, ast.Attribute) and dotted(node.value) == "yaml" else None


@pytest.mark.parametrize("command", ["run", "train", "tables", "profile"])
def test_a_python_tag_that_runs_a_command_is_a_config_error(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.yaml").write_text(f"name: !!python/object/apply:os.system ['mkdir {marker}']\n"
                                        "rows: {TSN: {block: tsn}}\n")
    assert main([command, "evil.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: evil.yaml:1: yaml: could not determine a constructor for the tag "
                   "'tag:yaml.org,2002:python/object/apply:os.system'; YAML tags that build Python objects "
                   "are not allowed"], err
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yaml"]  # no work/, no results/


# ----------------------------------------------------------------------------- torch.load


def test_every_torch_load_passes_weights_only_true():
    found, bad = 0, []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization") \
                    and any(a.name == "load" for a in node.names):
                bad.append(f"{where(path, node)}: from {node.module} import load (scan cannot follow it)")
        for call, name in calls(path):
            if name in ("torch.load", "torch.serialization.load"):
                found += 1
                flag = keyword(call, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    bad.append(f"{where(path, call)}: {ast.unparse(call)}")
            if name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "marshal.loads"):
                bad.append(f"{where(path, call)}: {name}")
            if name in ("np.load", "numpy.load"):
                flag = keyword(call, "allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    bad.append(f"{where(path, call)}: {ast.unparse(call)}")
    assert not bad, "loads that may run code:\n" + "\n".join(bad)
    assert found >= 2, found  # harness.checkpoint.load and blocks.load_pretrained at least


class RunsCode:
    """Pickles to ``os.mkdir(path)``: unpickling it without the safe unpickler runs that call."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)




@pytest.fixture
def evil(tmp_path, monkeypatch):
    """(checkpoint whose loading would create ``marker``, pretrained file likewise, marker)."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    from harness import checkpoint

    ckpt, weights = tmp_path / "evil.pt", tmp_path / "evil_resnet.pth"
    torch.save({"format": checkpoint.FORMAT, "epoch": 1, "model": {"x": RunsCode(marker)}}, ckpt)
    torch.save({"conv1.weight": RunsCode(marker)}, weights)
    return ckpt, weights, marker


def refused_in_one_record(caplog, path) -> str:
    import logging

    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "\n" not in message and record.exc_info is None, message
    assert f"{path}" in message and "weights_only=True" in message and "posix.mkdir" in message, message
    assert "weights_only=False" not in message  # torch's advice to run the file's code is not passed on
    return message


def test_checkpoint_load_refuses_a_pickle_that_runs_code(evil):
    from harness import checkpoint

    ckpt, weights, marker = evil
    for path in (ckpt, weights):
        with pytest.raises(ValueError, match="weights_only=True.*unsupported GLOBAL posix.mkdir"):
            checkpoint.load(path)
    assert not marker.exists()


def test_pretrained_weights_that_run_code_are_refused_by_blocks(evil):
    import pickle

    import blocks

    _, weights, marker = evil
    model = blocks.create("tsn", backbone={"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]}, num_classes=4,
                          num_frames=4)
    with pytest.raises(pickle.UnpicklingError):
        blocks.load_pretrained(model, str(weights))
    assert not marker.exists()


@pytest.mark.parametrize("how", ["resume", "evaluate", "pretrained"])
def test_harness_train_refuses_a_pickle_that_runs_code(evil, tmp_path, caplog, how):
    import logging

    ckpt, weights, marker = evil
    pretrained = weights if how == "pretrained" else None
    (tmp_path / "small.yaml").write_text(tiny_train_text(tmp_path / "synth", epochs=1, videos=16,
                                                         pretrained=pretrained))
    argv = ["train", "small.yaml", "--out", "out"]
    if how == "resume":
        (tmp_path / "out" / "checkpoints").mkdir(parents=True)
        (tmp_path / "out" / "checkpoints" / "last.pt").write_bytes(ckpt.read_bytes())
        argv.append("--resume")
    if how == "evaluate":
        argv += ["--evaluate", str(ckpt)]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 2
    refused_in_one_record(caplog, "last.pt" if how == "resume" else ckpt if how == "evaluate" else weights)
    assert not marker.exists()


def test_the_payload_is_live(evil):
    """The files above really run code when loaded unsafely; otherwise the refusals would prove nothing."""
    ckpt, _, marker = evil
    torch.load(ckpt, weights_only=False)
    assert marker.is_dir()


# ----------------------------------------------------------------------------- shell, eval, exec


def test_no_shell_eval_or_exec_in_the_package():
    banned = {"eval", "exec", "os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
              "builtins.eval", "builtins.exec"}
    bad = []
    for path in sources():
        for call, name in calls(path):
            if name in banned:
                bad.append(f"{where(path, call)}: {name}")
            shell = keyword(call, "shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                bad.append(f"{where(path, call)}: shell={ast.unparse(shell)}")
    assert not bad, "\n".join(bad)


def test_the_scan_would_catch_them(tmp_path):
    """The scanners above flag what they are meant to (guards against a scan that can never fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess, torch, yaml\nsubprocess.run('ls', shell=True)\neval('1')\n"
                      "torch.load('x')\ntorch.load('x', weights_only=False)\nyaml.unsafe_load('a')\n")
    names = [name for _, name in calls(sample)]
    assert names.count("torch.load") == 2 and "eval" in names and "yaml.unsafe_load" in names
    shells = [keyword(c, "shell") for c, _ in calls(sample) if keyword(c, "shell") is not None]
    assert len(shells) == 1 and shells[0].value is True
    flags = [keyword(c, "weights_only") for c, n in calls(sample) if n == "torch.load"]
    assert flags[0] is None and flags[1].value is False


# ----------------------------------------------------------------------------- harness ui


def test_ui_binds_localhost_unless_host_is_given(tmp_path, monkeypatch):
    from harness import ui
    from harness.cli import build_parser
    from harness.tracking import Tracker

    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1"
    cmd = ui.mlflow_command("sqlite:////x/mlflow.db", host=args.host, port=args.port)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "0.0.0.0" not in cmd

    # main passes the host through unchanged: no server is started, `start` is replaced
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    Tracker(f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}").prepare()
    seen = []

    def fake_start(uri, *, host, port, log_file=None):
        seen.append(host)
        raise KeyboardInterrupt  # the user pressed Ctrl-C at once

    monkeypatch.setattr(ui, "start", fake_start)
    for argv, host in ((["ui"], "127.0.0.1"), (["ui", "--host", "0.0.0.0"], "0.0.0.0")):
        with pytest.raises(KeyboardInterrupt):
            main(argv)
        assert seen[-1] == host


# ----------------------------------------------------------------------------- annotation paths


ESCAPES = {
    "sthv2 ../../etc/passwd": ("sthv2", {"labels.json": '{"a": "0"}',
                                         "train.json": '[{"id": "../../etc/passwd", "template": "a"}]'},
                               "train.json#0", "../../etc/passwd.webm"),
    "sthv2 absolute": ("sthv2", {"labels.json": '{"a": "0"}', "train.json": '[{"id": "/etc/passwd", "template": "a"}]'},
                       "train.json#0", "/etc/passwd.webm"),
    "list ../../etc/passwd": ("list", {"train.txt": "../../etc/passwd 3 0\n"}, "train.txt:1", "../../etc/passwd"),
    "list windows drive": ("list", {"train.txt": "C:\\\\Windows 3 0\n"}, "train.txt:1", "C:\\\\Windows"),
    "k400 label ../..": ("k400", {"train.csv": "label,youtube_id,time_start,time_end,split\n"
                                               "../../etc,abc,0,10,train\n"},
                         "train.csv:2", "../../etc/abc_000000_000010.mp4"),
}


@pytest.mark.parametrize("case", ESCAPES)
def test_an_annotation_path_leaving_the_data_root_is_one_line_and_exit_2(tmp_path, capsys, case):
    fmt, files, line, shown = ESCAPES[case]
    root = tmp_path / "data"
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    assert main(["data", "inspect", "--format", fmt, "--root", str(root), "--annotations", str(root),
                 "--split", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {line}: path {shown!r} would leave the data root {root}; "
                   "annotation paths must be relative and must not contain '..'"], err
