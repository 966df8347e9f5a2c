"""Plugin blocks: discovered through the `harness.blocks` entry point, without forking the harness.

Each test installs a tiny plugin the way pip would lay it out (package + .dist-info
with entry_points.txt) into a temporary folder on PYTHONPATH, and runs the harness
in a subprocess so the registry starts clean.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugins" / "dwt-block"
GATE = Path(__file__).parent / "plugins" / "gate-block"  # src layout, placement pre_conv2, flop_handles
DOC = Path(__file__).parents[1] / "docs" / "adding-a-block.md"


def install(site: Path, dist: str, module: str, source: str | Path, names: dict[str, str]) -> None:
    """Lay out an installed distribution: the module and a dist-info naming its entry points."""
    if isinstance(source, Path):
        shutil.copytree(source, site / module)
    else:
        (site / module).mkdir(parents=True)
        (site / module / "__init__.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    entries = "\n".join(f"{k} = {v}" for k, v in names.items())
    (info / "entry_points.txt").write_text(f"[harness.blocks]\n{entries}\n")


def harness(site: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


@pytest.fixture
def site(tmp_path):
    install(tmp_path, "dwt-block", "dwt_block", PLUGIN / "dwt_block", {"dw_temporal": "dwt_block"})
    return tmp_path


def test_plugin_block_is_discovered_with_its_origin_and_options(site):
    listed = {b["block"]: b for b in json.loads(harness(site, "blocks", "--format", "json").stdout)}
    assert listed["dw_temporal"]["origin"] == "dwt-block"
    assert listed["dw_temporal"]["options"][0] == {"name": "kernel", "type": "int", "default": 3}
    assert listed["vps"]["origin"] == "built-in"


def test_plugin_block_profiles_in_a_study(site, tmp_path):
    study = tmp_path / "two.yaml"
    study.write_text("name: two\nprofiles:\n  laptop:\n    backbone: {arch: tiny}\n"
                     "    data: {format: synth, root: x}\nrows:\n  TSN: {block: tsn}\n"
                     "  DWT: {block: dw_temporal, kernel: 5}\n")
    rows = json.loads(harness(site, "profile", str(study), "--size", "112", "--format", "json").stdout)
    dwt = rows[1]
    # depthwise k5 at widths 64, 256, 512, 1024: 5 * 1856 extra params over ResNet-50 + head
    assert dwt["params"] - rows[0]["params"] == 5 * (64 + 256 + 512 + 1024)


def test_two_packages_registering_one_name_is_one_line_naming_both_in_every_command(site):
    install(site, "dup-block", "dup_block", "import blocks, torch\n"
            "@blocks.register('dw_temporal')\nclass D(torch.nn.Module):\n    placement = 'none'\n",
            {"dw_temporal": "dup_block"})
    study = study_file(site, "  DWT: {block: dw_temporal}\n")
    for args in (["blocks"], ["blocks", "--profile"], ["profile", str(study)], ["run", str(study), "--dry-run"]):
        proc = harness(site, *args, check=False)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, lines  # not blamed on a study row either
        assert re.fullmatch(r"error: block 'dw_temporal' is registered twice: by (dwt-block|dup-block) and by "
                            r"(dup-block|dwt-block); uninstall one of them \(pip uninstall \S+ or \S+\) .+",
                            lines[0]), lines[0]


def test_unknown_block_lists_the_plugins_that_failed_to_load(site):
    install(site, "broken-block", "broken_block", "raise ImportError('needs libfoo')\n", {"broken": "broken_block"})
    install(site, "empty-block", "empty_block", "", {"empty": "empty_block"})  # imports, registers nothing
    study = study_file(site, "  B: {block: broken}\n")
    proc = harness(site, "profile", str(study), check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {study}:8: rows.B: unknown block 'broken'.")
    assert "Plugins that failed to load: " in line and "dw_temporal" in line
    assert "broken-block (broken = broken_block): failed to import: ImportError('needs libfoo')" in line
    assert "empty-block (empty = empty_block): " in line and "registered no block 'empty'" in line


def test_a_broken_plugin_warns_and_the_rest_keeps_working(site):
    install(site, "broken-block", "broken_block", "raise ImportError('needs libfoo')\n",
            {"broken": "broken_block"})
    proc = harness(site, "blocks", "--format", "json")
    assert "broken-block" in proc.stderr and "needs libfoo" in proc.stderr
    names = [b["block"] for b in json.loads(proc.stdout)]
    assert "dw_temporal" in names and "vps" in names and "broken" not in names


def test_blocks_json_lists_every_builtin_block_with_its_options(capsys):
    from harness.cli import main

    assert main(["blocks", "--format", "json"]) == 0
    listed = {b["block"]: b for b in json.loads(capsys.readouterr().out)}
    assert {"tsn", "tsm", "gst", "rf_s", "rf_l", "rf_l_inception", "rf_l_inception_t", "vps"} <= set(listed)
    vps = {o["name"]: o for o in listed["vps"]["options"]}
    assert vps["proportion"] == {"name": "proportion", "type": "float", "default": 0.25}
    assert vps["fusion"]["default"] == "learned" and vps["stages"]["default"] == [0, 1, 2, 3]
    assert [o["name"] for o in listed["tsm"]["options"]] == ["fold_div", "every"]


def doc_files() -> dict[str, str]:
    """Code blocks of the walkthrough that start with a `# file: PATH` line."""
    blocks = re.findall(r"```\w*\n# file: (\S+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {path: body for path, body in blocks}


def test_walkthrough_code_is_the_tested_plugin():
    files = doc_files()
    tested = {"my-blocks": PLUGIN, "my-gate": GATE}
    assert set(files) == {"my-blocks/pyproject.toml", "my-blocks/dwt_block/__init__.py",
                          "my-gate/pyproject.toml", "my-gate/src/gate_block/__init__.py"}
    for path, body in files.items():
        project, rest = path.split("/", 1)
        assert body == (tested[project] / rest).read_text(), path


def study_file(folder: Path, rows: str) -> Path:
    """A two-row study (TSN + ``rows``) the profile and the dry-run read; nothing is trained."""
    path = folder / "study.yaml"
    path.write_text("name: two\nprofiles:\n  laptop:\n    backbone: {arch: tiny}\n"
                    f"    data: {{format: synth, root: {folder / 'synth'}}}\nrows:\n  TSN: {{block: tsn}}\n{rows}")
    return path


@pytest.fixture
def gate_site(tmp_path):
    install(tmp_path, "gate-block", "gate_block", GATE / "src" / "gate_block", {"temporal_gate": "gate_block"})
    return tmp_path


def test_pre_conv2_plugin_profiles_its_own_params_with_its_flops_counted(gate_site):
    study = study_file(gate_site, "  Gate: {block: temporal_gate, kernel: 5}\n")
    proc = harness(gate_site, "profile", str(study), "--size", "112", "--format", "json")
    tsn, gate = json.loads(proc.stdout)
    widths = 3 * 64 + 4 * 128 + 6 * 256 + 3 * 512  # ResNet-50's bottleneck widths: a depthwise k5 conv on each
    assert gate["params_blocks"] == gate["params"] - tsn["params"] == 5 * widths
    assert gate["params_backbone"] == tsn["params_backbone"]
    assert gate["frames"] == 8 and gate["gflops"]["112"] > tsn["gflops"]["112"]
    assert "fvcore skipped" not in proc.stderr  # its flop_handles count aten::mul and aten::sigmoid
    assert not {"aten::mul", "aten::sigmoid"} & set(gate["skipped_ops"])


SKIPPED = re.compile(r"WARNING .*block 'temporal_gate': fvcore skipped aten::mul, aten::sigmoid;.*flop_handles")


@pytest.fixture
def gate_without_handles(gate_site):
    """The gate plugin with its ``flop_handles`` line removed: fvcore skips its products and sigmoids."""
    source = gate_site / "gate_block" / "__init__.py"
    source.write_text(re.sub(r"\n    flop_handles = .*\n", "\n", source.read_text()))
    return gate_site


def test_skipped_ops_warn_in_profile_and_in_the_dry_run_plan_which_states_its_frames(gate_without_handles):
    site = gate_without_handles
    study = study_file(site, "  Gate: {block: temporal_gate}\n")
    assert SKIPPED.search(harness(site, "profile", str(study), "--size", "112").stderr)
    proc = harness(site, "run", str(study), "--dry-run")
    assert SKIPPED.search(proc.stderr), proc.stderr[-2000:]
    # A study without a paper profile is profiled at the paper's 8 frames x 112 px, not its laptop 4 x 28,
    # and the plan says so.
    lines = proc.stdout.splitlines()
    cells = [c.strip() for c in next(ln for ln in lines if "profile frames" in ln).strip("|").split("|")]
    rows = [dict(zip(cells, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines if "/laptop/" in ln]
    assert len(rows) == 2 and all(r["profile frames"] == "8" and "GFLOPs@112" in r for r in rows)


@pytest.mark.slow
def test_skipped_ops_warn_in_blocks_profile(gate_without_handles):
    assert SKIPPED.search(harness(gate_without_handles, "blocks", "--profile").stderr)


def test_a_wrong_option_type_is_one_line_with_file_line_and_key(gate_site):
    study = study_file(gate_site, "  Gate:\n    block: temporal_gate\n    kernel: '3'\n")
    proc = harness(gate_site, "run", str(study), "--dry-run", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {study}:10: rows.Gate.kernel: block 'temporal_gate' option kernel must be int, got str '3' "
        f"(declared at {gate_site / 'gate_block' / '__init__.py'}:26)")


@pytest.mark.slow
def test_walkthrough_plugin_trains_next_to_tsn_and_lands_in_mlflow(site, tmp_path):
    """The walkthrough's step 3: a two-row laptop study with the plugin block, through Ray and MLflow."""
    study = tmp_path / "my-study.yaml"
    study.write_text(
        "name: my-study\nkind: table\nprofiles:\n  laptop:\n"
        "    backbone: {arch: tiny, width: 4, depths: [1, 1, 1, 1], stem_stride: 2}\n"
        f"    data: {{format: synth, root: {tmp_path / 'synth'}, frames: 4, size: 16, scale_size: 18,\n"
        "           synth: {videos: 40, frames: 8, size: 32, style: plain}}\n"
        "    recipe: {epochs: 1, batch_size: 8, lr: 0.05, threads: 1}\n"
        "    seeds: 1\nrows:\n  TSN: {block: tsn}\n  DWT-k5: {block: dw_temporal, kernel: 5}\n")
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--max-concurrent", "2"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "results" / "my-study.csv").read_text()
    assert "DWT-k5" in table and "TSN" in table

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("my-study")
    runs = client.search_runs([exp.experiment_id])
    blocks_logged = sorted(r.data.tags.get("harness.block", "") for r in runs if "harness.block" in r.data.tags)
    assert blocks_logged == ["dw_temporal", "tsn"]
