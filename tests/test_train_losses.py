"""The training loss, schedule, parameter groups and view averaging, on hand-made tensors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import Recipe
from harness.train import compute_loss, lr_lambda, param_groups, view_logits

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
LABELS = torch.tensor([0, 2])
CE = F.cross_entropy(LOGITS, LABELS).item()


def test_loss_is_cross_entropy_plus_weighted_aux_terms():
    aux = {"interaction": torch.tensor(-0.75), "capacity": torch.tensor(0.5)}
    total, parts = compute_loss(LOGITS, LABELS, aux, alpha=0.01, beta=0.001)
    assert total.item() == pytest.approx(CE + 0.01 * -0.75 + 0.001 * 0.5)
    assert parts["ce"].item() == pytest.approx(CE)
    assert parts["interaction"].item() == pytest.approx(-0.75)
    assert parts["capacity"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("alpha, beta, expected", [
    (0.0, 0.001, CE + 0.001 * 0.5),
    (0.01, 0.0, CE + 0.01 * -0.75),
    (0.0, 0.0, CE),
])
def test_a_zero_weight_disables_its_term(alpha, beta, expected):
    aux = {"interaction": torch.tensor(-0.75), "capacity": torch.tensor(0.5)}
    total, parts = compute_loss(LOGITS, LABELS, aux, alpha=alpha, beta=beta)
    assert total.item() == pytest.approx(expected)
    assert ("interaction" in parts) == (alpha > 0) and ("capacity" in parts) == (beta > 0)


def test_a_disabled_nan_term_does_not_poison_the_loss():
    """0 * NaN is NaN, so a disabled term must be left out, not multiplied by zero."""
    aux = {"interaction": torch.tensor(float("nan")), "capacity": torch.tensor(float("inf"))}
    total, _ = compute_loss(LOGITS, LABELS, aux, alpha=0.0, beta=0.0)
    assert total.item() == pytest.approx(CE)


def test_blocks_without_fusion_train_on_cross_entropy_alone():
    total, parts = compute_loss(LOGITS, LABELS, {}, alpha=0.01, beta=0.001)
    assert total.item() == pytest.approx(CE) and set(parts) == {"ce"}


def test_aux_terms_receive_their_weighted_gradient():
    w = torch.tensor(2.0, requires_grad=True)
    aux = {"interaction": -torch.sigmoid(w), "capacity": w * 3}
    total, _ = compute_loss(LOGITS, LABELS, aux, alpha=0.01, beta=0.001)
    total.backward()
    s = torch.sigmoid(torch.tensor(2.0))
    assert w.grad.item() == pytest.approx(0.01 * -(s * (1 - s)).item() + 0.001 * 3, rel=1e-5)


def test_step_schedule_decays_tenfold_every_lr_step_epochs():
    f = lr_lambda(Recipe(epochs=50, lr_step=10), steps_per_epoch=4)
    assert [f(e * 4) for e in (0, 9, 10, 19, 20, 49)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 1e-4])
    assert (f(39), f(40)) == pytest.approx((1.0, 0.1))  # the decay falls on the epoch boundary


def test_cosine_with_warmup():
    f = lr_lambda(Recipe(epochs=10, schedule="cosine", warmup_epochs=1), steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert f(9) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


def _groups(**kw):
    recipe = Recipe(lr=0.01, weight_decay=5e-4, tsm_param_groups=True)
    return {g["name"]: g for g in param_groups(_Net(), recipe, **kw)}


def test_tsm_groups_from_imagenet():
    g = _groups(from_imagenet=True)
    assert (g["decay"]["lr"], g["decay"]["weight_decay"], len(g["decay"]["params"])) == (0.01, 5e-4, 1)
    assert g["no_decay"]["weight_decay"] == 0 and len(g["no_decay"]["params"]) == 3  # conv bias, bn w+b
    assert g["fc_weight"]["lr"] == pytest.approx(0.05) and g["fc_weight"]["weight_decay"] == 5e-4
    assert g["fc_bias"]["lr"] == pytest.approx(0.1) and g["fc_bias"]["weight_decay"] == 0


def test_tsm_groups_from_scratch_keep_fc_at_base_lr():
    g = _groups(from_imagenet=False)
    assert set(g) == {"decay", "no_decay"}
    assert len(g["decay"]["params"]) == 2 and len(g["no_decay"]["params"]) == 4


def test_without_tsm_groups_everything_decays():
    (g,) = param_groups(_Net(), Recipe(weight_decay=1e-4), from_imagenet=True)
    assert g["weight_decay"] == 1e-4 and len(g["params"]) == 6


class _Echo(nn.Module):
    """Logits = the first pixel of each frame, averaged over T: easy to predict by hand."""

    def forward(self, x):
        return x[:, :, :, 0, 0].mean(1)


def test_view_logits_average_over_views():
    clips = torch.zeros(2, 3, 4, 3, 2, 2)  # N=2, V=3, T=4
    for v in range(3):
        clips[:, v, :, :, 0, 0] = torch.tensor([v, 2 * v, -v], dtype=torch.float)
    clips[1] += 1
    out = view_logits(_Echo(), clips)
    assert out.shape == (2, 3)
    assert torch.allclose(out[0], torch.tensor([1.0, 2.0, -1.0]))
    assert torch.allclose(out[1], torch.tensor([2.0, 3.0, 0.0]))


def test_view_logits_take_a_single_view_batch_and_reject_other_shapes():
    clips = torch.randn(2, 4, 3, 2, 2)
    assert torch.equal(view_logits(_Echo(), clips), _Echo()(clips))
    with pytest.raises(ValueError, match="N, V, T, 3, H, W"):
        view_logits(_Echo(), torch.randn(2, 3, 2, 2))
