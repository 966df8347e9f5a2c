"""``make gpu-check``: what only a GPU can show, in one prepared run of a few minutes -> results/gpu-check.md.

    python -m harness.gpucheck                        # on one CUDA GPU (make gpu-check)
    python -m harness.gpucheck --device cpu --tiny    # its CPU-safe parts on a tiny model (tests/test_gpucheck.py)

No machine of this project had a GPU when the CUDA branches were written, so
this is the first thing to run on one. Sections, each pass or fail:

1. **train**: every row of the study (Table 1) under its paper profile's
   recipe (parameter groups, gradient clipping, loss weights), ResNet-50 at
   8x112, batch 8, a few steps through ``harness.train``'s own device choice,
   autocast (bf16, or fp16 with a GradScaler), channels_last and optimizer
   step: finite loss, finite non-zero gradients, weights that moved; median
   step time and peak GPU memory per block.
2. **eval**: 2 clips x 3 crops per video through ``harness.train.view_logits``
   under autocast: finite logits of the right shape.
3. **ddp**: the model under DDP in spawned processes: 2 ranks on the one GPU
   with nccl (NCCL refuses two ranks on one device in its recent versions; the
   refusal is recorded, not a failure), gloo over 2 ranks, and nccl on 1 rank;
   every rank's parameters must agree after the steps. Then
   ``harness.tune.ddp.ddp_smoke``: the Ray Train path, 1 rank on nccl.
4. **bench**: ``harness bench blocks --device cuda`` (``harness.bench.bench_blocks``)
   with its time ratios and goals. Its table has the bench's own title and
   columns, so ``harness run --dry-run --throughput results/gpu-check.md``
   costs a study with the measured rates.
5. **gpu decoder**: where torchcodec is installed, ``data.decoder: gpu`` against
   decord on real-size WebM and MP4 files (``harness.data.gpu.compare``): frame
   counts, pixel difference, time. Without torchcodec it says so and passes
   (decord stays the default decoder).

Exit 0 when every section passed, 1 otherwise, 2 when there is no CUDA device
to check (``--device cuda`` on a machine without one).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from .config import Study
    from .train.setup import Setup as TrialSetup

NO_CUDA = "error: no CUDA device: run this on a GPU machine (or --device cpu --tiny for its CPU-safe parts)"


@dataclass
class Section:
    """One part of the check: pass/fail, its markdown body, and how long it took."""

    name: str
    ok: bool
    body: str
    seconds: float = 0.0


@dataclass
class StepResult:
    row: str
    block: str
    backbone: str
    losses: list[float]
    grads_finite: bool
    grads_nonzero: bool
    moved: bool
    step_ms: float
    peak_mb: float | None
    eval_ok: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return (not self.error and all(math.isfinite(v) for v in self.losses) and self.grads_finite
                and self.grads_nonzero and self.moved and self.eval_ok)


@dataclass
class Setup:
    """What every section runs with: the study, its profile (paper, or laptop with --tiny), device and sizes."""

    study: Study
    profile: str
    device: str
    batch: int
    steps: int
    frames: int = 8
    size: int = 112
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- 1 + 2: train and eval per row


def row_config(setup: Setup, row: str) -> Any:
    """The trial config of ``row`` under the setup's profile: its recipe, at the setup's batch, no weights file
    (the check needs the layout, not ImageNet), on the row's own paper backbone (GST-R101 is a ResNet-101)."""
    from .config import Recipe, trial_config

    cfg = trial_config(setup.study, setup.profile, row, seed=0)
    recipe = Recipe.model_validate({**cfg.recipe.model_dump(), "batch_size": setup.batch})
    backbone = cfg.backbone.model_copy(update={"pretrained": None})
    if backbone.arch != "tiny":
        backbone = backbone.model_copy(update={"arch": setup.study.rows[row].backbone})
    data = cfg.data.model_copy(update={"frames": setup.frames, "size": setup.size})
    return cfg.model_copy(update={"recipe": recipe, "backbone": backbone, "data": data})


def _device(name: str) -> tuple[Any, Any]:
    """harness.train's own choice on CUDA (bf16 or fp16 autocast); the CPU in full precision."""
    import torch

    from . import train

    if name == "cuda":
        return train.device()
    return torch.device("cpu"), None


def train_row(setup: Setup, row: str, num_classes: int) -> StepResult:
    """``setup.steps`` training steps of one row as harness.train takes them, then one 2x3-view evaluation."""
    import torch

    from . import train

    cfg = row_config(setup, row)
    device, amp = _device(setup.device)
    torch.set_num_threads(cfg.recipe.threads)  # as harness.train does
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = train.create_model(cfg, num_classes).to(device)
    if cuda:
        # Module.to takes memory_format (torch's docs); its typed overloads leave it out
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    groups = train.param_groups(model, cfg.recipe, from_imagenet=True)  # the paper profile starts from ImageNet
    optimizer = torch.optim.SGD(groups, lr=cfg.recipe.effective_lr, momentum=cfg.recipe.momentum,
                                weight_decay=cfg.recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, train.lr_lambda(cfg.recipe, setup.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    # optimizer_step reads only these five of a trial's Setup; the check has no loaders to build one from
    trial = cast("TrialSetup", SimpleNamespace(cfg=cfg, model=model, optimizer=optimizer, scheduler=scheduler,
                                          scaler=scaler))
    before = [p.detach().clone() for p in model.parameters()]
    losses, times = [], []
    shape = (setup.batch, setup.frames, 3, setup.size, setup.size)
    for step in range(setup.steps):
        clips = torch.randn(shape, device=device)
        labels = torch.randint(0, num_classes, (setup.batch,), device=device)
        start = time.perf_counter()
        with train.autocast(device, amp):
            logits = model(clips)
        aux_losses = getattr(model, "aux_losses", None)  # the VideoResNet's; nn.Module has none
        aux = aux_losses() if aux_losses is not None else {}
        loss, _ = train.compute_loss(logits, labels, aux, alpha=cfg.recipe.alpha, beta=cfg.recipe.beta)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        train.optimizer_step(trial, loss, 0, step)  # backward (scaled), unscale + clip, optimizer and schedule step
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    result = StepResult(
        row, cfg.row.block, cfg.backbone.arch, losses,
        grads_finite=bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads),
        grads_nonzero=any(bool(g.abs().sum() > 0) for g in grads),
        moved=any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters())),
        step_ms=1000 * statistics.median(times[1:] or times) if times else float("nan"),
        peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else None)
    result.eval_ok = eval_views(model, setup, device, amp, num_classes)
    return result


def eval_views(model: Any, setup: Setup, device: Any, amp: Any, num_classes: int, clips: int = 2,
               crops: int = 3) -> bool:
    """Two videos of ``clips x crops`` views through view_logits, as a 2-clip 3-crop test protocol feeds them."""
    import torch

    from . import train

    views = torch.randn(2, clips * crops, setup.frames, 3, setup.size, setup.size, device=device)
    model.eval()
    with torch.no_grad(), train.autocast(device, amp):
        logits = train.view_logits(model, views).float()
    model.train()
    return tuple(logits.shape) == (2, num_classes) and bool(torch.isfinite(logits).all())


def train_section(setup: Setup) -> tuple[Section, list[StepResult]]:
    results = []
    for row in setup.study.rows:
        try:
            results.append(train_row(setup, row, setup.study.num_classes))
        except Exception as exc:  # noqa: BLE001 - one row's crash is that row's failure, the others still run
            results.append(StepResult(row, setup.study.rows[row].block, "?", [], False, False, False,
                                      float("nan"), None, False, f"{type(exc).__name__}: {exc}"))
        _free(setup.device)
    return Section("train + eval", all(r.ok for r in results), train_table(results, setup)), results


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def train_table(results: list[StepResult], setup: Setup) -> str:
    """Markdown: one line per row. Columns avoid the bench's (``median_s``), so this table is not read as one."""
    lines = [f"{setup.steps} steps of batch {setup.batch} at {setup.frames}x{setup.size} per row, then 2 videos x "
             "(2 clips x 3 crops) through view_logits.", "",
             "| table row | block | backbone | losses | grads finite | grads non-zero | weights moved | eval 2x3 "
             "| step ms (median) | peak MiB | verdict |",
             "|---|---|---|---|---|---|---|---|---:|---:|---|"]
    for r in results:
        losses = ", ".join(f"{v:.3f}" for v in r.losses) or "-"
        peak = f"{r.peak_mb:,.0f}" if r.peak_mb is not None else "-"
        verdict = "pass" if r.ok else f"FAIL {r.error}".strip()
        lines.append(f"| {r.row} | {r.block} | {r.backbone} | {losses} | {_yes(r.grads_finite)} | "
                     f"{_yes(r.grads_nonzero)} | {_yes(r.moved)} | {_yes(r.eval_ok)} | {r.step_ms:.1f} | {peak} | "
                     f"{verdict} |")
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


# ----------------------------------------------------------------------------- 3: data-parallel


def ddp_rank(rank: int, world: int, backend: str, device: str, init_file: str, cfg_json: dict[str, Any],
             num_classes: int, steps: int, queue: Any) -> None:
    """One spawned rank: the model under DDP, ``steps`` SGD steps on its own random clips, then every rank's
    parameter checksum (all_gather). Puts a dict with ``checksums`` (or ``error``) on ``queue``."""
    import datetime

    import torch
    import torch.distributed as dist

    from .config import TrainConfig
    from .train import compute_loss, create_model, seed_everything

    try:
        dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        torch.set_num_threads(1)
        cfg = TrainConfig.model_validate(cfg_json)
        seed_everything(0)  # the same initial weights on every rank; DDP would broadcast rank 0's anyway
        dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        model = create_model(cfg, num_classes).to(dev)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own clips
        batch = max(1, cfg.recipe.batch_size // world)
        losses = []
        for _ in range(steps):
            clips = torch.randn(batch, cfg.data.frames, 3, cfg.data.size, cfg.data.size, generator=gen).to(dev)
            labels = torch.randint(0, num_classes, (batch,), generator=gen).to(dev)
            loss, _ = compute_loss(ddp(clips), labels, {}, alpha=0.0, beta=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # the gradient all-reduce
            opt.step()
            losses.append(loss.item())
        # all_gather on CUDA tensors is nccl's; gloo gathers CPU tensors (its CUDA support is all_reduce/broadcast)
        where = dev if backend == "nccl" else torch.device("cpu")
        checksum = torch.tensor([sum(p.detach().double().sum().item() for p in model.parameters())], device=where)
        gathered = [torch.zeros_like(checksum) for _ in range(world)]
        dist.all_gather(gathered, checksum)
        queue.put({"rank": rank, "losses": losses, "checksums": [g.item() for g in gathered]})
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which words it
        queue.put({"rank": rank, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ddp(cfg_json: dict[str, Any], num_classes: int, *, backend: str, world: int, device: str, steps: int,
            timeout: float = 180) -> dict[str, Any]:
    """``world`` spawned ranks; {"ok", "detail"}. Ranks still alive after ``timeout`` are killed (by our pids)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="gpucheck-ddp-") as tmp:
        init = str(Path(tmp) / "init")
        procs = [ctx.Process(target=ddp_rank, args=(r, world, backend, device, init, cfg_json, num_classes, steps,
                                                     queue)) for r in range(world)]
        for p in procs:
            p.start()
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(answers) < world and time.monotonic() < deadline:
            try:
                answers.append(queue.get(timeout=max(0.1, deadline - time.monotonic())))
            except Empty:
                break
            if "error" in answers[-1]:  # the other ranks would only wait in a collective until its timeout
                break
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return ddp_verdict(answers, world)


def ddp_verdict(answers: list[dict[str, Any]], world: int) -> dict[str, Any]:
    """Pass when every rank answered, none erred, and all saw the same parameter checksums."""
    errors = sorted({a["error"] for a in answers if "error" in a})
    if errors:
        return {"ok": False, "detail": "; ".join(errors)}
    if len(answers) < world:
        return {"ok": False, "detail": f"{world - len(answers)} of {world} ranks did not answer (hung or died)"}
    sums = [tuple(round(c, 6) for c in a["checksums"]) for a in answers]
    agree = len(set(sums)) == 1 and len(set(sums[0])) == 1
    losses = ", ".join(f"{v:.3f}" for v in answers[0]["losses"])
    detail = f"losses (rank {answers[0]['rank']}) {losses}; parameters {'identical' if agree else 'DIFFER'} " \
             f"on the {world} rank(s) (checksum {sums[0][0]:.6g})"
    return {"ok": agree and all(math.isfinite(v) for a in answers for v in a["losses"]), "detail": detail}


def ddp_section(setup: Setup, row: str, ray_smoke: bool) -> Section:
    cfg_json = row_config(setup, row).model_dump(mode="json")
    n = setup.study.num_classes
    lines, ok = [f"Row {row}, batch {setup.batch} split over the ranks, 2 SGD steps, spawned processes.", ""], True
    if setup.device == "cuda":
        two = run_ddp(cfg_json, n, backend="nccl", world=2, device="cuda", steps=2, timeout=90)  # may hang: short
        if two["ok"]:
            lines.append(f"- nccl, 2 ranks on one GPU: pass: {two['detail']}")
        else:
            lines.append(f"- nccl, 2 ranks on one GPU: refused ({two['detail']}); not a failure, gloo stands in")
        runs = [] if two["ok"] else [("gloo", 2)]
        runs.append(("nccl", 1))
    else:
        runs = [("gloo", 2)]
    for backend, world in runs:
        out = run_ddp(cfg_json, n, backend=backend, world=world, device=setup.device, steps=2)
        ok &= out["ok"]
        lines.append(f"- {backend}, {world} rank(s) on {setup.device}: {'pass' if out['ok'] else 'FAIL'}: "
                     f"{out['detail']}")
    if ray_smoke:
        out = ray_ddp_smoke(cfg_json, n, use_gpu=setup.device == "cuda")
        ok &= out["ok"]
        lines.append(f"- Ray Train (harness.tune.ddp.ddp_smoke), 1 rank: {'pass' if out['ok'] else 'FAIL'}: "
                     f"{out['detail']}")
    return Section("ddp", ok, "\n".join(lines))


def ray_ddp_smoke(cfg_json: dict[str, Any], num_classes: int, *, use_gpu: bool) -> dict[str, Any]:
    """The data-parallel path a trial with ``resources.workers`` takes: Ray Train, here one rank (nccl on a GPU)."""
    from .tune.ddp import ddp_smoke
    from .tune.session import session

    try:
        with tempfile.TemporaryDirectory(prefix="gpucheck-ray-") as tmp, session(num_cpus=2):
            out = ddp_smoke(cfg_json, num_classes=num_classes, workers=1, use_gpu=use_gpu, steps=2,
                                 storage=tmp)
    except Exception as exc:  # noqa: BLE001 - the finding
        return {"ok": False, "detail": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
    ok = all(math.isfinite(v) for v in out["losses"])
    return {"ok": ok, "detail": f"backend {out['backend']} on {out['device']}, losses "
                                f"{', '.join(f'{v:.3f}' for v in out['losses'])}"}


# ----------------------------------------------------------------------------- 4: bench blocks


def bench_section(setup: Setup, repeats: int) -> Section:
    """harness bench blocks --device cuda, printed as the bench prints it (harness.cost.parse_bench reads it)."""
    import pandas as pd

    from .bench import bench_blocks, block_goals, machine

    rows = bench_blocks(setup.study.rows, size=setup.size, frames=setup.frames, batch=setup.batch,
                        device=setup.device, repeats=repeats, num_classes=setup.study.num_classes)
    memory = "peak CUDA memory" if setup.device == "cuda" else "activations saved for backward"
    title = (f"Forward+backward step, {setup.frames}x{setup.size}, batch {setup.batch}, {setup.device} "
             f"({machine()}); median and IQR of {repeats} interleaved, rotated repeats; time_ratio = median of the "
             f"per-repeat ratios against {rows[0]['row']}; memory_mb = {memory}.")
    body = "\n".join([f"`harness bench blocks --device {setup.device} --batch {setup.batch} --repeats {repeats}`",
                      "", title, "", pd.DataFrame(rows).round(3).to_markdown(index=False), "",
                      *block_goals(rows)])
    return Section("bench blocks", True, body)


def decoder_section() -> Section:
    """``data.decoder: gpu`` against decord on real-size WebM and MP4 files (written once into work/bench-data);
    passes with a note where torchcodec is not installed: the GPU decoder is optional, decord is the default."""
    from .config import Data
    from .data.formats import DataError
    from .data.gpu import check, compare
    from .data.realsize import ensure_set

    try:
        check(Data(format="sthv2", root=".", decoder="gpu"))
    except DataError as e:
        return Section("gpu decoder", True, f"not checked (only `data.decoder: gpu` needs it): {e}")
    files = [*sorted(ensure_set("sthv2", "work/bench-data/sthv2", 16).glob("*.webm")),
             *sorted(ensure_set("k400", "work/bench-data/k400", 16).glob("*/*.mp4"))]
    return Section("gpu decoder", True, "\n".join(f"- {line}" for line in compare([str(f) for f in files])))


# ----------------------------------------------------------------------------- the report


def device_line(device: str) -> str:
    """What ran it: the GPU with its memory and capability, and the software stack, or the CPU."""
    import torch

    if device != "cuda":
        from .device import cpu_model

        return f"cpu: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
    p = torch.cuda.get_device_properties(0)
    version = torch.cuda.nccl.version() if hasattr(torch.cuda, "nccl") else "?"
    nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16 + GradScaler"
    return (f"cuda: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute {p.major}.{p.minor}; torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}; "
            f"autocast {amp}")


def render(device: str, sections: list[Section], *, commit: str, wall_s: float, tiny: bool) -> str:
    """results/gpu-check.md: the device in the header, a verdict, then one part per section."""
    verdict = "all passed" if all(s.ok for s in sections) else \
        "FAILED: " + ", ".join(s.name for s in sections if not s.ok)
    head = [f"# GPU check{' (tiny, CPU-safe parts)' if tiny else ''}", "",
            f"- device: {device}", f"- commit: {commit}", f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- wall time: {wall_s:.0f} s", f"- verdict: {verdict}", ""]
    body = [f"## {s.name}: {'pass' if s.ok else 'FAIL'} ({s.seconds:.0f} s)\n\n{s.body}\n" for s in sections]
    return "\n".join(head + body)


def _timed(run: Any) -> Any:
    start = time.perf_counter()
    out = run()
    section = out[0] if isinstance(out, tuple) else out
    section.seconds = time.perf_counter() - start
    return out


def setup_for(study_path: str, *, device: str, tiny: bool = False, batch: int | None = None,
              steps: int = 3) -> Setup:
    """The study's paper profile at 8x112, batch 8 (``batch`` overrides); ``tiny``: its laptop profile's backbone
    and input, batch 2, the CPU-safe parts in seconds."""
    from .config import load_study

    study = load_study(study_path)
    if tiny:
        data = study.profiles["laptop"].data
        return Setup(study, "laptop", device, batch or 2, steps, data.frames, data.size)
    return Setup(study, "paper", device, batch or 8, steps)


def run_sections(setup: Setup, *, skip: set[str], repeats: int) -> list[Section]:
    """Train and eval every row, then DDP (Ray Train's path unless ``ray`` is skipped) and the block bench."""
    steps, _ = _timed(lambda: train_section(setup))
    sections = [steps]
    rows = list(setup.study.rows)
    ddp_row = next((r for r in rows if setup.study.rows[r].block == "vps"), rows[0])
    if "ddp" not in skip:
        sections.append(_guarded("ddp", lambda: ddp_section(setup, ddp_row, "ray" not in skip)))
    if "bench" not in skip:
        sections.append(_guarded("bench blocks", lambda: bench_section(setup, repeats)))
    if "decoder" not in skip:
        sections.append(_guarded("gpu decoder", decoder_section))
    return sections


def _guarded(name: str, run: Any) -> Section:
    """A section that crashes fails with its traceback in the report instead of ending the run."""
    start = time.perf_counter()
    try:
        section = run()
    except Exception:  # noqa: BLE001 - written into the report
        section = Section(name, False, f"```\n{traceback.format_exc()[-3000:]}```")
    section.seconds = time.perf_counter() - start
    return section


# ----------------------------------------------------------------------------- python -m harness.gpucheck
# Its own entry point rather than a `harness` sub-command: `make gpu-check` runs it on a GPU machine, and its flags
# are read here, next to the sections they choose.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.gpucheck", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true",
                   help="the laptop profile's tiny backbone at 4x28, batch 2: the CPU-safe parts in seconds")
    p.add_argument("--study", default="studies/table1.yaml", help="rows to check (default Table 1)")
    p.add_argument("--steps", type=int, default=3, help="training steps per row (default 3)")
    p.add_argument("--batch", type=int, default=None, help="clips a step (default 8; 2 with --tiny)")
    p.add_argument("--repeats", type=int, default=10, help="bench repeats (default 10)")
    p.add_argument("--skip", nargs="*", default=[], choices=["ddp", "ray", "bench", "decoder"],
                   help="sections to leave out (--tiny leaves out ray, bench and decoder)")
    p.add_argument("--out", default="results/gpu-check.md")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sections, write the report to ``--out`` and print it: 0 all passed, 1 one failed, 2 no CUDA."""
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    from .files import write_atomic
    from .tracking import git_commit

    start = time.perf_counter()
    setup = setup_for(args.study, device=args.device, tiny=args.tiny, batch=args.batch, steps=args.steps)
    skip = set(args.skip) | ({"ray", "bench", "decoder"} if args.tiny else set())
    sections = run_sections(setup, skip=skip, repeats=args.repeats)
    text = render(device_line(args.device), sections, commit=git_commit(), wall_s=time.perf_counter() - start,
                  tiny=args.tiny)
    path = write_atomic(text, args.out)
    print(text)
    print(f"written to {path}")
    return 0 if all(s.ok for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
