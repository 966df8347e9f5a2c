"""Data-parallel ranks: the process group a launcher set up (Ray Train, torchrun), each rank's share of
the data, and what the ranks must agree on (a finite loss, the epoch's sums, rank 0's validation).

Without a process group, or with one rank, nothing here is called.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def process_group() -> tuple[int, int]:
    """(rank, world size) of the ``torch.distributed`` group a launcher set up; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochOrder(Protocol):
    """A sampler whose order depends on the epoch (``harness.data.dataset.SeededSampler``)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class RankShard(torch.utils.data.Sampler[Any]):
    """Rank ``rank``'s share of a sampler's order: every ``world``-th item, the same count on every rank.

    ``DistributedSampler(drop_last=True)`` over our seeded sampler, whose items
    carry each clip's augmentation seed (torch's would drop the seeds). The up
    to ``world - 1`` clips left over skip that epoch; the order, and so which
    ones, changes with the epoch.
    """

    def __init__(self, base: EpochOrder, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base) // self.world

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.base), self.rank, self.world * len(self), self.world)


# DataLoader settings a sharded copy keeps; batch_size is divided, the sampler wrapped.
LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn",
                   "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
                   "pin_memory_device", "in_order")


def shard_loader(loader: Any, rank: int, world: int) -> Any:
    """The train loader of one rank: ``batch_size / world`` clips a step from :class:`RankShard` of its order.

    The global batch stays ``recipe.batch_size``; scaling it with the world
    size would silently change the recipe (and the lr it was tuned for).
    """
    per_rank, left = divmod(loader.batch_size, world)
    if left:
        raise ValueError(f"recipe.batch_size {loader.batch_size} is the global batch and must split evenly "
                         f"over {world} data-parallel workers; pick a multiple of {world}")
    return type(loader)(loader.dataset, batch_size=per_rank, sampler=RankShard(loader.sampler, rank, world),
                        **{k: getattr(loader, k) for k in LOADER_SETTINGS})


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank: a rank that stopped alone would leave the others
    waiting in the gradient all-reduce until the group's timeout."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def sum_over_ranks(seen: int, correct: int, sums: dict[str, float],
                   device: torch.device) -> tuple[int, int, dict[str, float]]:
    """An epoch's clips seen, correct and loss sums added up over the group (the same on every rank)."""
    keys = sorted(sums)
    total = torch.tensor([seen, correct, *(sums[k] for k in keys)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    seen_all, correct_all, *rest = total.tolist()
    return int(seen_all), int(correct_all), dict(zip(keys, rest))


def from_rank0(rank: int, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its result on every rank (the others wait in the broadcast)."""
    box = [compute() if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]  # rank 0's value, broadcast
