"""Checkpoint files: atomic writes, safe loads, and the random state a resume needs.

A checkpoint is a plain dict of tensors, dicts, lists, strings, ints, floats,
bools and None, so it loads with ``torch.load(weights_only=True)``: opening a
checkpoint never runs code from the file. Random-number states are converted
to tensors and lists for that reason (numpy's and Python's states are tuples
of foreign types that the safe unpickler refuses).

Writes go through :func:`harness.files.write_atomic` (a temporary file,
fsynced, then renamed over the target): a crash or a failed epoch leaves the
old file or the new one, never half of each.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when the layout of the dict changes


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` so that readers see the old or the new file, never a torn one."""
    return write_atomic(lambda f: torch.save(state, f), path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with the safe unpickler; errors say which file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError by cause
        raise ValueError(
            f"cannot load checkpoint {path} with torch.load(weights_only=True): {refusal(e)}. "
            "It is damaged or was not written by harness.train; delete it or start without --resume."
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a harness checkpoint of format {FORMAT} "
            f"(found format {state.get('format') if isinstance(state, dict) else type(state).__name__})"
        )
    return state


def refusal(exc: BaseException) -> str:
    """The line of a ``torch.load(weights_only=True)`` error that says what was refused, without torch's
    advice to retry with ``weights_only=False`` (which would run the code in the file)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    noise = ("Weights only load failed", "Check the documentation", "Please file an issue", "In PyTorch 2.6")
    kept = [ln for ln in lines if not ln.startswith(noise)]
    return (kept or lines or [type(exc).__name__])[0].rstrip(".")


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, numpy and Python generator states, as weights_only-safe values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": None if py_gauss is None else float(py_gauss),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured, so a resumed run draws the same numbers."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d; not restored",
                        len(state["cuda"]), torch.cuda.device_count())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))


def generator_states(loader: Any) -> dict[str, torch.Tensor]:
    """States of the torch.Generators a DataLoader and its sampler own (shuffle order, worker seeds).

    A loader without its own generator draws from the global torch RNG, which
    :func:`rng_state` already covers.
    """
    out = {}
    for name, gen in _generators(loader).items():
        out[name] = gen.get_state()
    return out


def set_generator_states(loader: Any, states: dict[str, torch.Tensor]) -> None:
    """Restore :func:`generator_states`; a generator the new loader lacks is an error, not a silent skip."""
    gens = _generators(loader)
    for name, state in states.items():
        if name not in gens:
            raise ValueError(
                f"checkpoint holds the state of the loader's {name!r} generator but this loader has none; "
                "was the data configuration changed since the checkpoint was written?"
            )
        gens[name].set_state(state)


def _generators(loader: Any) -> dict[str, torch.Generator]:
    found: dict[str, torch.Generator] = {}
    for name, owner in (("loader", loader), ("sampler", getattr(loader, "sampler", None)),
                        ("batch_sampler", getattr(loader, "batch_sampler", None))):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found.values()):
            found[name] = gen
    return found
