"""The optimized feature fusion layer (PSN, arXiv 2007.11460, Eq. 2-4) and its special cases.

The spatial bag's output X = X_1 + ... + X_Gs (channel groups) is mixed into
the temporal bag's input Y = Y_1 + ... + Y_Gt by one matrix M (width x width),
Y = M X per pixel: a 1x1 conv. T_ij is the block of M that routes X_j into Y_i.

``fusion`` picks M:
  learned   a trained 1x1 conv, initialised to the identity (= grouping), so it
            starts as RF-L-Inception and learns its routes; regularised by
            L_interaction (Eq. 2) and L_capacity (Eq. 3). width^2 parameters.
  grouping  M = I: no routing between groups (RF-L-Inception). No op at all.
  shuffle   ShuffleNet's channel shuffle, a permutation matrix (Eq. 4). Zero FLOPs.
  dropout   dense channel-wise routing, T_ij = I / G (Y_i averages channel k of
            every X_j), with each link dropped w.p. ``rate`` at every training
            step (inverted dropout, so eval uses T_ij = I / G). Our reading of the
            paper's "channel dropout" (its supplement is not public): routing
            that discards ``rate`` of the spatial features while training.

ir-interactions (Table 2). The paper defines sum_{i != j} N(X_j -> Y_i) in
channels and reports 1856 for shuffle and dropout. With the block width c_j of
X_j counted whenever T_ij routes anything, ``ir_interactions()`` gives the
i != j sum: grouping 0, shuffle and dropout 1392 (= 3/4 of 1856 for G = 4) on
ResNet-50. ``ir_interactions(include_diagonal=True)`` sums over all i, j and
gives Table 2's 1856 for shuffle and dropout, but 464 for grouping where the
paper prints 0: no single formula matches both of its columns, so we show both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("learned", "grouping", "shuffle", "dropout")


def shuffle_permutation(width: int, groups: int) -> torch.Tensor:
    """Output channel o reads input channel perm[o] (ShuffleNet: reshape G x c, transpose)."""
    return torch.arange(width).view(groups, width // groups).t().reshape(-1)


def dense_routing(in_sizes: list[int], out_sizes: list[int]) -> torch.Tensor:
    """T_ij = I / G_in: output k of Y_i averages channel k (mod c_j) of every X_j."""
    width = sum(in_sizes)
    m = torch.zeros(width, width)
    in_starts = [sum(in_sizes[:j]) for j in range(len(in_sizes))]
    o = 0
    for size in out_sizes:
        for k in range(size):
            for start, c in zip(in_starts, in_sizes):
                m[o, start + k % c] = 1.0 / len(in_sizes)
            o += 1
    return m


class Fusion(nn.Module):
    """Mixes spatial groups into temporal groups with a matrix M (see module docstring).

    Args:
        in_sizes: channels of each spatial group X_j.
        out_sizes: channels of each temporal group Y_i (equal sizes, for L_capacity).
        num_frames: T, to average Y over space and time per clip.
        kind: learned | grouping | shuffle | dropout.
        rate: the dropout rate (only for kind="dropout").
    """

    perm: torch.Tensor  # buffers, set by kind: the shuffle's channel order, the dropout's dense routing
    dense: torch.Tensor

    def __init__(self, in_sizes: list[int], out_sizes: list[int], num_frames: int,
                 kind: str = "learned", rate: float | None = None):
        super().__init__()
        if kind not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {kind!r}")
        self.in_sizes, self.out_sizes = list(in_sizes), list(out_sizes)
        self.num_frames = num_frames
        self.kind = kind
        self.learnable = kind == "learned"
        width = sum(in_sizes)
        self._y_mean: torch.Tensor | None = None
        if kind == "learned":
            self.fc = nn.Conv2d(width, width, 1, bias=False)
        elif kind == "shuffle":
            self.register_buffer("perm", shuffle_permutation(width, len(in_sizes)), persistent=False)
        elif kind == "dropout":
            if rate is None or not 0 < rate < 1:
                raise ValueError(f"fusion='dropout' needs a dropout_rate in (0, 1), got {rate}")
            self.rate = rate
            self.register_buffer("dense", dense_routing(in_sizes, out_sizes), persistent=False)

    def init_weights(self) -> None:
        if self.learnable:
            with torch.no_grad():
                self.fc.weight.copy_(torch.eye(self.fc.in_channels)[:, :, None, None])

    def matrix(self) -> torch.Tensor:
        """M (width x width): Y[:, o] = sum_i M[o, i] X[:, i]."""
        width = sum(self.in_sizes)
        if self.kind == "learned":
            return self.fc.weight[:, :, 0, 0]
        if self.kind == "shuffle":
            return torch.eye(width, device=self.perm.device)[self.perm]
        if self.kind == "dropout":
            return self.dense
        return torch.eye(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "learned":
            y = self.fc(x)
        elif self.kind == "shuffle":
            y = x.index_select(1, self.perm)
        elif self.kind == "dropout":
            m = self.dense
            if self.training:
                keep = 1 - self.rate
                m = m * torch.bernoulli(torch.full_like(m, keep)) / keep
            y = F.conv2d(x, m[:, :, None, None])
        else:
            y = x
        if self.learnable:
            # avg(Y) over space and time per clip, kept for L_capacity.
            per_frame = y.mean(dim=(2, 3))
            self._y_mean = per_frame.view(-1, self.num_frames, per_frame.shape[1]).mean(dim=1)
        return y

    def block_norms(self) -> torch.Tensor:
        """||T_ij||_1 as a (Gt x Gs) matrix: rows are temporal groups Y_i, columns spatial X_j."""
        m = self.matrix().abs()
        rows = torch.split(m, self.out_sizes, dim=0)
        return torch.stack([torch.stack([b.sum() for b in torch.split(r, self.in_sizes, dim=1)])
                            for r in rows])

    def interaction_loss(self) -> torch.Tensor:
        """Eq. 2: -(1/G^2) sum_ij sigmoid(||T_ij||_1)."""
        return -torch.sigmoid(self.block_norms()).mean()

    def capacity_loss(self) -> torch.Tensor | None:
        """Eq. 3: (1/G^2) sum_ij cos(avg(Y_i), avg(Y_j)), averaged over the batch."""
        if self._y_mean is None:
            return None
        groups = torch.stack(torch.split(self._y_mean, self.out_sizes, dim=1), dim=1)  # (N, G, c)
        unit = F.normalize(groups, dim=2)
        return torch.einsum("ngc,nhc->ngh", unit, unit).mean()

    def ir_interactions(self, include_diagonal: bool = False) -> int:
        """sum over blocks that route anything of the source group's width c_j (i != j unless asked)."""
        routed = self.block_norms() > 1e-6
        total = 0
        for i in range(len(self.out_sizes)):
            for j, c in enumerate(self.in_sizes):
                if routed[i, j] and (include_diagonal or i != j):
                    total += c
        return total

    def extra_repr(self) -> str:
        return f"kind={self.kind}, in={self.in_sizes}, out={self.out_sizes}"
