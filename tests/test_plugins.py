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


def test_two_packages_registering_one_name_is_an_error_naming_both(site):
    install(site, "dup-block", "dup_block", "import blocks, torch\n"
            "@blocks.register('dw_temporal')\nclass D(torch.nn.Module):\n    placement = 'none'\n",
            {"dw_temporal": "dup_block"})
    proc = harness(site, "blocks", check=False)
    assert proc.returncode != 0
    assert re.search(r"registered twice: by (dwt-block|dup-block) and by (dup-block|dwt-block)", proc.stderr)


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
    assert set(files) == {"my-blocks/pyproject.toml", "my-blocks/dwt_block/__init__.py"}
    assert files["my-blocks/pyproject.toml"] == (PLUGIN / "pyproject.toml").read_text()
    assert files["my-blocks/dwt_block/__init__.py"] == (PLUGIN / "dwt_block" / "__init__.py").read_text()


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
    blocks_logged = sorted(r.tags.get("harness.block", "") for r in runs if "harness.block" in r.tags)
    assert blocks_logged == ["dw_temporal", "tsn"]
