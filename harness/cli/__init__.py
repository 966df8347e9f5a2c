"""The ``harness`` command: parse, call one function, exit with its code.

Each sub-command names its handler as ``target="module:function"``; the
handlers live beside this file (``commands``: run, tables, train; ``data``;
``bench``; ``profile``: profile, blocks; ``doctor``) and turn the parsed flags
into typed calls of the domain modules. A handler's module is imported only
when its sub-command runs, and heavy modules (torch, Ray, MLflow) only inside
the handler, so ``harness --help`` and config errors answer in a second.
Exit codes: 0 ok, 1 the work ran and failed, 2 unusable input.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="params and FLOPs of every row of a study on the paper backbone (no data needed)",
        description="Profile every row of a study on the paper backbone with fvcore "
        "(one multiply-add = one FLOP, per clip of T frames, batch 1).",
    )
    p.add_argument("study", help="study YAML, e.g. studies/table1.yaml")
    p.add_argument("--frames", type=int, default=8, help="frames per clip T (default 8)")
    p.add_argument("--size", type=int, nargs="+", default=[112, 224], help="input sides (default 112 224)")
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.set_defaults(target="harness.cli.profile:profile")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect or fingerprint a dataset, or write the synthetic one")
    dsub = p.add_subparsers(dest="data_command", required=True)

    i = dsub.add_parser("inspect", help="open every entry of a split and report what is readable")
    i.add_argument("--format", required=True, choices=["sthv1", "sthv2", "k400", "diving48", "list"])
    i.add_argument("--root", required=True, help="folder of videos or frame folders")
    i.add_argument("--annotations", required=True, help="folder holding the annotation files")
    i.add_argument("--split", choices=["train", "val"], default="val")
    i.add_argument("--max-bad-fraction", type=float, default=0.01)
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(target="harness.cli.data:inspect")

    f = dsub.add_parser("fingerprint", help="hash a split's annotation files and the decoded pixels of a fixed sample",
                        description="One short hash that changes when the annotations or the decoded frames of "
                        "the sampled clips change (not when timestamps or paths do); the decoder is reported.")
    f.add_argument("--format", required=True, choices=["sthv1", "sthv2", "k400", "diving48", "list", "synth"])
    f.add_argument("--root", required=True, help="folder of videos or frame folders (synth: the set's folder)")
    f.add_argument("--annotations", default=None, help="folder holding the annotation files (default: --root)")
    f.add_argument("--split", choices=["train", "val"], default="val")
    f.add_argument("--sample", type=int, default=16, help="clips decoded, every k-th by sorted id (default 16)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(target="harness.cli.data:fingerprint")

    s = dsub.add_parser("synth", help="write the reversal-paired synthetic set (Something-Something v2 layout)")
    s.add_argument("out_dir")
    s.add_argument("--videos", type=int, default=2000)
    s.add_argument("--frames", type=int, default=16)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.25, help="share of clips in validation.json (default 0.25)")
    for split in ("train", "val"):  # defaults (None): the generator's full ranges
        s.add_argument(f"--{split}-size", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help=f"{split} object side / frame side (default: the generator's full range)")
        s.add_argument(f"--{split}-speed", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                       help=f"{split} displacement per frame / frame side (default: the generator's full range)")
    s.set_defaults(target="harness.cli.data:synth")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train and evaluate one configuration without Ray")
    p.add_argument("config", help="train YAML, e.g. studies/smoke.yaml")
    p.add_argument("--out", default=None, help="output folder (default work/train/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    p.add_argument("--evaluate", metavar="CKPT", default=None,
                   help="no training: evaluate CKPT on the val split, write OUT/eval.json")
    p.add_argument("--clips", type=int, default=None, help="with --evaluate: clips per video (data.test_clips)")
    p.add_argument("--crops", type=int, choices=[1, 3, 5, 10], default=None,
                   help="with --evaluate: crops per clip (data.test_crops)")
    p.set_defaults(target="harness.cli.commands:train")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="every row x seed of a study as a Ray Tune trial, tracked in MLflow, then tables",
                       description="Run a study: each row x seed is a Ray Tune trial; metrics go to MLflow "
                       "(MLFLOW_TRACKING_URI, default sqlite:///<abs>/work/mlflow.db); tables and a plot are "
                       "rebuilt from MLflow into results/.")
    p.add_argument("study", help="study YAML, e.g. studies/table1.yaml")
    p.add_argument("--profile", default="laptop", help="profile of the study (default laptop)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per row (default: the profile's)")
    p.add_argument("--address", default=None, help="existing Ray cluster (default RAY_ADDRESS, else a local Ray)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as the cluster's resources fit)")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest run of this study and profile (same MLflow parent run)")
    p.add_argument("--until-resolved", action="store_true",
                   help="after the planned seeds, add seeds to the rows of unresolved orderings, a wave at a time, "
                        "until they resolve or --max-trials is spent (tables; docs/statistics.md)")
    p.add_argument("--max-trials", type=int, default=None,
                   help="with --until-resolved: the study's trials in all (default: 3x the planned trials)")
    p.add_argument("--storage", default=None, metavar="PATH|URI",
                   help="where Ray keeps trials and checkpoints (default work/ray/<study>); on a cluster of "
                        "several nodes a folder every node sees, or an object store URI")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, profile and print the trial plan; starts no Ray, writes nothing")
    p.add_argument("--gpus", type=float, default=None,
                   help="with --dry-run: GPUs of the cluster to cost the plan on (default: the cluster's, or this "
                        "machine's)")
    p.add_argument("--throughput", default=None, metavar="CLIPS_PER_S|BENCH_FILE",
                   help="with --dry-run: training clips/s per device of the first row, or a `harness bench blocks` "
                        "report (md or json) for each row's (default: the profile's throughput)")
    p.set_defaults(target="harness.cli.commands:run")


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="is this machine (and cluster) ready? one screen of ok / warn / fail",
                       description="Check Python, torch (CUDA, cuDNN, GPUs), the video decoders on clips written "
                       "now, Ray, the MLflow store, and with --study a profile's data, ImageNet weights and GPUs. "
                       "Exit 0 when nothing fails, else 1. Ray is not started unless --ray or --address says so.")
    p.add_argument("--study", default=None, help="also check this study's profile, e.g. studies/table1.yaml")
    p.add_argument("--profile", default="paper", help="profile of --study (default paper)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to check node by node, shared storage included (default RAY_ADDRESS)")
    p.add_argument("--ray", action="store_true", help="start a local Ray to see that it starts (5-10 s)")
    p.set_defaults(target="harness.cli.doctor:doctor")


def _add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="rebuild a study's tables and plot from MLflow alone")
    p.add_argument("study", help="study YAML, e.g. studies/table1.yaml")
    p.add_argument("--profile", default="laptop", help="profile of the study (default laptop)")
    p.add_argument("--out", default="results", help="output folder (default results)")
    p.set_defaults(target="harness.cli.commands:tables")


def _add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="serve the MLflow UI for the project's tracking store")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; others expose the runs)")
    p.add_argument("--study", default=None, help="only this study's links; opens its compare page in a browser")
    p.add_argument("--no-browser", action="store_true", help="with --study: print the links, open nothing")
    p.set_defaults(target="harness.ui:main")


def _add_blocks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("blocks", help="list every available block (built-in and plugins) with its options")
    p.add_argument("--format", choices=["md", "json"], default="md")
    p.add_argument("--profile", action="store_true",
                   help="add params and GFLOPs at 8x112 on ResNet-50 (174 classes)")
    p.set_defaults(target="harness.cli.profile:blocks")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time, memory and throughput, as ratios measured in one run")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    b = bsub.add_parser("blocks", help="forward+backward step time of every row on the paper backbone")
    b.add_argument("--study", default="studies/table1.yaml", help="rows to time (default Table 1)")
    b.add_argument("--size", type=int, default=112)
    b.add_argument("--frames", type=int, default=8)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    b.add_argument("--repeats", type=int, default=15)
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    b.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's malloc thresholds alone instead of setting them as training does "
                        "(the 'before' of that change)")
    b.add_argument("--format", choices=["md", "json"], default="md")
    b.set_defaults(target="harness.cli.bench:blocks")
    d = bsub.add_parser("data", help="the laptop loader vs its model, then real formats: loader vs raw decode, "
                        "cores per GPU")
    d.add_argument("--study", default="studies/table1.yaml")
    d.add_argument("--profile", default="laptop")
    d.add_argument("--batches", type=int, default=20, help="batches timed per laptop loader")
    d.add_argument("--steps", type=int, default=10, help="model steps timed")
    d.add_argument("--epoch-rounds", type=int, default=2, help="1-epoch laptop trials per cache mode (default 2)")
    d.add_argument("--formats", default="laptop,sthv1,sthv2,k400",
                   help="comma-separated: laptop (the study's profile) and real formats sthv1, sthv2, k400")
    d.add_argument("--root", default=None, help="take the files of the one real format here (official layout) "
                   "instead of writing them")
    d.add_argument("--annotations", default=None, help="with --root: the annotations folder (default --root)")
    d.add_argument("--data-dir", default="work/bench-data", help="where written sets go (reused when present)")
    d.add_argument("--clips", type=int, default=16, help="clips per written set (default 16)")
    d.add_argument("--seconds", type=float, default=2.0,
                   help="with --rounds: rounds x seconds of raw/loader pairs per format, one epoch each (default 2)")
    d.add_argument("--rounds", type=int, default=10, help="at least this many raw/loader pairs (default 10)")
    d.add_argument("--gpu-clips-per-s", type=float, default=1000.0,
                   help="what one GPU trains, clips/s, for the cores-per-GPU column (default 1000)")
    d.add_argument("--format", choices=["md", "json"], default="md")
    d.set_defaults(target="harness.cli.bench:data")
    h = bsub.add_parser("harness", help="the same trials through Ray Tune + MLflow and through a plain "
                        "process pool of equal concurrency: wall ratio and per-trial overhead")
    h.add_argument("--study", default="studies/table1.yaml")
    h.add_argument("--profile", default="laptop")
    h.add_argument("--rows", default="TSN,TSM,Ours", help="comma-separated rows, repeated over seeds")
    h.add_argument("--trials", type=int, default=6)
    h.add_argument("--epochs", type=int, default=None,
                   help="epochs per trial, i.e. the trial length (default: the profile's)")
    h.add_argument("--concurrency", type=int, default=None,
                   help="trials at a time in both paths (default: cores / the profile's CPUs per trial)")
    h.add_argument("--format", choices=["md", "json"], default="md")
    h.set_defaults(target="harness.cli.bench:harness")
    r = bsub.add_parser("report", help="assemble bench outputs (md files) into one report with the machine")
    r.add_argument("sections", nargs="+", help="md files, one section each, titled by file name")
    r.add_argument("--out", default="results/bench.md")
    r.set_defaults(target="harness.cli.bench:report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Which spatio-temporal block is worth its FLOPs: profile, train and "
        "tabulate the blocks of the Perceptron Synthesis Network paper (arXiv 2007.11460).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_doctor, _add_profile, _add_blocks, _add_data, _add_train, _add_run, _add_tables, _add_ui,
                _add_bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    module, func = args.target.split(":")
    try:
        return int(getattr(importlib.import_module(module), func)(args) or 0)
    except Exception as exc:  # a broken plugin setup is one line in every command, not a traceback
        from harness.errors import setup_error

        if setup_error(exc) is None:
            raise
        print(f"error: {setup_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
