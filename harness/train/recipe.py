"""The recipe's arithmetic: the loss, the lr schedule and the optimiser's parameter groups."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Recipe

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, aux: dict[str, torch.Tensor], *,
                 alpha: float, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE + alpha * L_interaction + beta * L_capacity (paper Sec. End-to-end learning).

    A weight of 0 leaves its term out entirely (not multiplied by zero), so a
    disabled term that is NaN cannot poison the loss. A block without a fusion
    layer returns no aux terms and trains on CE alone. Returns the total and
    its detached parts (``ce``, ``interaction``, ``capacity``) for logging.
    """
    ce = F.cross_entropy(logits.float(), labels)
    total, parts = ce, {"ce": ce.detach()}
    for key, weight in (("interaction", alpha), ("capacity", beta)):
        if weight and key in aux:
            term = aux[key].float()
            total = total + weight * term
            parts[key] = term.detach()
    return total, parts


# ----------------------------------------------------------------------------- schedule and groups


def lr_lambda(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr factor for a global step: step decay (x0.1 every ``lr_step`` epochs) or cosine, times warmup.

    Step decay changes at epoch boundaries, as in the paper; cosine and the
    linear warmup move every step.
    """
    total = max(1, recipe.epochs * steps_per_epoch)
    warm = recipe.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if recipe.schedule == "step":
            f = 0.1 ** ((step // steps_per_epoch) // recipe.lr_step)
        else:
            f = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        if step < warm:
            f *= (step + 1) / warm
        return f

    return factor


def param_groups(model: nn.Module, recipe: Recipe, *, from_imagenet: bool) -> list[dict[str, Any]]:
    """One group with weight decay, or TSM's groups when ``recipe.tsm_param_groups``.

    TSM's groups (official ``get_optim_policies``): no weight decay on norm
    layers and biases; when starting from ImageNet the new fc learns faster
    (weight lr x5, bias lr x10), since it alone starts from scratch.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not recipe.tsm_param_groups:
        return [{"name": "all", "params": [p for _, p in params], "lr": recipe.effective_lr,
                 "weight_decay": recipe.weight_decay}]
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Module):
        raise ValueError("recipe.tsm_param_groups needs a model with an `fc` head; "
                         "set tsm_param_groups: false for this block")
    fc_ids = {id(p) for p in fc.parameters()}
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)}
    spec = {  # name: (lr multiplier, weight decay on?)
        "decay": (1.0, True), "no_decay": (1.0, False), "fc_weight": (5.0, True), "fc_bias": (10.0, False)}
    members: dict[str, list[nn.Parameter]] = {k: [] for k in spec}
    for name, p in params:
        is_bias = name.endswith("bias")
        if from_imagenet and id(p) in fc_ids:
            members["fc_bias" if is_bias else "fc_weight"].append(p)
        elif is_bias or id(p) in norm_ids:
            members["no_decay"].append(p)
        else:
            members["decay"].append(p)
    return [{"name": k, "params": members[k], "lr": recipe.effective_lr * mult,
             "weight_decay": recipe.weight_decay if decay else 0.0}
            for k, (mult, decay) in spec.items() if members[k]]
