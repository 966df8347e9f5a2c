"""One behaviour per block: what moves where, what stays unchanged, what the fusion losses compute."""
import math

import pytest
import torch

import blocks
from blocks.fusion import Fusion, shuffle_permutation
from blocks.resnet import Bottleneck
from blocks.tsm import TemporalShift, temporal_shift

TINY = {"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]}


def test_tsm_shift_moves_one_eighth_each_way_with_zero_ends():
    n, t, c = 2, 4, 16
    x = torch.arange(n * t * c, dtype=torch.float).view(n * t, c, 1, 1) + 1  # no zeros in the input
    y = temporal_shift(x, num_frames=t, fold=c // 8).view(n, t, c)
    v = x.view(n, t, c)
    # channels [0, 2): frame t takes frame t+1; the last frame is zero
    assert torch.equal(y[:, :-1, 0:2], v[:, 1:, 0:2]) and (y[:, -1, 0:2] == 0).all()
    # channels [2, 4): frame t takes frame t-1; the first frame is zero
    assert torch.equal(y[:, 1:, 2:4], v[:, :-1, 2:4]) and (y[:, 0, 2:4] == 0).all()
    # the other 3/4 of the channels are untouched, and clips never leak into each other
    assert torch.equal(y[:, :, 4:], v[:, :, 4:])


def test_tsm_shift_gradient_is_the_opposite_shift():
    x = torch.randn(2 * 4, 16, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, num_frames=4, fold=2), (x,))
    g = torch.randn(8, 16, 3, 3, dtype=torch.double)
    temporal_shift(x, num_frames=4, fold=2).backward(g)
    # <shift(x), g> == <x, grad>: the hand-written backward is the adjoint of the forward
    assert torch.allclose((temporal_shift(x.detach(), 4, 2) * g).sum(), (x.detach() * x.grad).sum())


def test_tsm_shift_is_on_the_residual_branch_only():
    torch.manual_seed(0)
    block = Bottleneck(16, 4, temporal=TemporalShift(channels=16, num_frames=4)).eval()
    x = torch.randn(8, 16, 3, 3)
    shifted = temporal_shift(x, 4, fold=2)
    residual = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(
        block.relu(block.bn1(block.conv1(shifted))))))))
    assert torch.allclose(block(x), torch.relu(residual + x), atol=1e-6)  # identity path: unshifted x


@pytest.mark.parametrize("name, options", [
    ("vps", {}), ("vps", {"fusion": "shuffle"}), ("rf_s", {}), ("rf_l", {}),
    ("rf_l_inception", {}), ("rf_l_inception_t", {})])
def test_stage_blocks_leave_the_pretrained_output_unchanged_at_init(name, options):
    torch.manual_seed(1)
    model = blocks.create(name, backbone=TINY, num_classes=5, num_frames=4, **options).eval()
    plain = blocks.create("tsn", backbone=TINY, num_classes=5, num_frames=4).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("inserts.") for k in unexpected)
    clip = torch.randn(2, 4, 3, 16, 16)
    assert torch.allclose(model(clip), plain(clip), atol=1e-6)


def _fusion_pair(kind, **kw):
    sizes = [3, 3, 3, 3]
    fixed = Fusion(sizes, sizes, num_frames=2, kind=kind, **kw).eval()
    learned = Fusion(sizes, sizes, num_frames=2, kind="learned").eval()
    with torch.no_grad():
        learned.fc.weight.copy_(fixed.matrix()[:, :, None, None])
    return fixed, learned


@pytest.mark.parametrize("kind, kw", [("shuffle", {}), ("dropout", {"rate": 0.75}), ("grouping", {})])
def test_fixed_fusions_equal_the_learned_layer_with_their_matrix(kind, kw):
    fixed, learned = _fusion_pair(kind, **kw)
    x = torch.randn(4, 12, 5, 5)
    assert torch.allclose(fixed(x), learned(x), atol=1e-6)


def test_shuffle_is_shufflenets_permutation():
    assert shuffle_permutation(6, 2).tolist() == [0, 3, 1, 4, 2, 5]
    fixed = Fusion([2, 2], [2, 2], num_frames=1, kind="shuffle")
    x = torch.arange(4.0).view(1, 4, 1, 1)
    assert fixed(x).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


def test_dropout_fusion_drops_links_while_training_only():
    torch.manual_seed(0)
    fusion = Fusion([4, 4], [4, 4], num_frames=1, kind="dropout", rate=0.5)
    x = torch.randn(2, 8, 3, 3)
    fusion.train()
    assert not torch.allclose(fusion(x), fusion(x))  # a new mask every step
    fusion.eval()
    assert torch.allclose(fusion(x), fusion(x))


def test_interaction_loss_on_a_hand_made_matrix():
    fusion = Fusion([1, 1], [1, 1], num_frames=1, kind="learned")
    with torch.no_grad():
        fusion.fc.weight.copy_(torch.tensor([[2.0, 0.0], [-1.0, 0.5]])[:, :, None, None])
    expected = -(torch.sigmoid(torch.tensor(2.0)) + 0.5 + torch.sigmoid(torch.tensor(1.0))
                 + torch.sigmoid(torch.tensor(0.5))) / 4
    assert torch.allclose(fusion.interaction_loss(), expected)
    assert fusion.block_norms().tolist() == [[2.0, 0.0], [1.0, 0.5]]


def test_capacity_loss_on_hand_made_features():
    fusion = Fusion([2, 2], [2, 2], num_frames=2, kind="learned")
    fusion.init_weights()  # identity: Y = X
    # one clip of 2 frames; avg(Y_1) = (1, 0), avg(Y_2) = (1, 1) -> cos = 1/sqrt(2)
    x = torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 2.0]])[:, :, None, None]
    fusion(x)
    cos = 1 / math.sqrt(2)
    assert torch.allclose(fusion.capacity_loss(), torch.tensor((1 + cos + cos + 1) / 4))


def test_model_reports_aux_losses_and_fusion_matrices():
    model = blocks.create("vps", backbone=TINY, num_classes=3, num_frames=2)
    assert set(model.aux_losses()) == {"interaction"}  # L_capacity needs a forward's activations
    model(torch.randn(1, 2, 3, 16, 16))
    losses = model.aux_losses()
    assert set(losses) == {"interaction", "capacity"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert [tuple(m.shape) for m in model.fusion_matrices()] == [(4, 4)] * 4
    assert blocks.create("tsm", backbone=TINY, num_classes=3, num_frames=2).aux_losses() == {}


def torchvision_resnet50_keys():
    """torchvision's resnet50 state_dict names, written out from its layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = ["conv1.weight", *(f"bn1.{k}" for k in bn)]
    for s, depth in enumerate([3, 4, 6, 3], start=1):
        for i in range(depth):
            p = f"layer{s}.{i}"
            for j in (1, 2, 3):
                keys += [f"{p}.conv{j}.weight", *(f"{p}.bn{j}.{k}" for k in bn)]
            if i == 0:
                keys += [f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{k}" for k in bn)]
    return keys + ["fc.weight", "fc.bias"]


def test_state_dict_names_are_torchvisions():
    model = blocks.create("tsm", num_classes=174, num_frames=8)
    assert list(model.state_dict()) == torchvision_resnet50_keys()


def test_loads_a_torchvision_checkpoint_from_a_local_file(tmp_path):
    imagenet = blocks.create("tsn", num_classes=1000, num_frames=1)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet.state_dict(), path)
    model = blocks.create("vps", num_classes=174, num_frames=8, pretrained=str(path))
    missing, unexpected = blocks.load_pretrained(model, str(path))
    assert unexpected == []
    assert {k.split(".")[0] for k in missing} == {"fc", "inserts"}  # the new head and the block
    assert torch.equal(model.layer3[2].conv2.weight, imagenet.layer3[2].conv2.weight)


def test_gst_takes_its_spatial_kernel_from_the_pretrained_3x3(tmp_path):
    imagenet = blocks.create("tsn", num_classes=1000, num_frames=1)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet.state_dict(), path)
    gst = blocks.create("gst", num_classes=174, num_frames=8)
    missing, unexpected = blocks.load_pretrained(gst, str(path))
    assert unexpected == [] and all(k.endswith("temporal.weight") or k.startswith("fc.") for k in missing)
    w = imagenet.layer2[0].conv2.weight  # 128 x 128 x 3 x 3: GST keeps 96 outputs of the first 64 inputs
    assert torch.equal(gst.layer2[0].conv2.spatial.weight, w[:96, :64])


@pytest.mark.parametrize("pool", ["max", "avg", "none"])
@pytest.mark.parametrize("dilation", [True, False])
def test_temporal_bag_equals_per_group_conv3d_and_pool3d_over_time(pool, dilation):
    """The temporal bag (run as 2D ops for speed) computes its definition: on (N, C, T, H, W), per group,
    identity | (k,1,1) conv3d | (k,1,1) dilated conv3d | 3-frame pool; clips never mix."""
    from blocks.vps import TemporalBag, rf_kernels

    torch.manual_seed(0)
    n, t, h, w = 2, 4, 3, 5
    bag = TemporalBag([3, 3, 3, 3], rf_kernels(5), t, pool=pool, dilation=dilation)
    x = torch.randn(n * t, 12, h, w, requires_grad=True)
    v = x.view(n, t, 12, h, w).transpose(1, 2)  # (N, C, T, H, W)
    ident, k3, k5, p = torch.split(v, 3, dim=1)
    pool3d = {"max": lambda z: torch.nn.functional.max_pool3d(z, (3, 1, 1), 1, (1, 0, 0)),
              "avg": lambda z: torch.nn.functional.avg_pool3d(z, (3, 1, 1), 1, (1, 0, 0), count_include_pad=False),
              "none": lambda z: z}[pool]
    c3, c5 = bag.branches[1], bag.branches[2]
    assert c3.weight.shape == (3, 3, 3, 1, 1)  # Conv3d weights: checkpoints keep their shapes
    expected = torch.cat([
        ident,
        torch.nn.functional.conv3d(k3, c3.weight, padding=(1, 0, 0)),
        torch.nn.functional.conv3d(k5, c5.weight, padding=c5.padding, dilation=c5.dilation),
        pool3d(p)], dim=1).transpose(1, 2).reshape(n * t, 12, h, w)
    assert c5.weight.shape[2] == (3 if dilation else 5)
    y = bag(x)
    assert torch.allclose(y, expected, atol=1e-6)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g, retain_graph=True)
    (grad_expected,) = torch.autograd.grad(expected, x, g)
    assert torch.allclose(grad, grad_expected, atol=1e-6)
