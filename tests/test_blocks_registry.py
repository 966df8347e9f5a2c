"""Every registered block: builds, runs forward and backward, every parameter learns, options are checked."""
import pytest
import torch

import blocks

TINY = {"arch": "tiny", "width": 4, "depths": [1, 1, 1, 1]}


def tiny_model(name, frames=4, **options):
    torch.manual_seed(0)
    return blocks.create(name, backbone=TINY, num_classes=6, num_frames=frames, **options)


@pytest.mark.parametrize("name", blocks.available())
def test_forward_shape_and_finite(name):
    model = tiny_model(name)
    logits = model(torch.randn(2, 4, 3, 16, 16))
    assert logits.shape == (2, 6)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", blocks.available())
def test_every_parameter_gets_a_gradient(name):
    model = tiny_model(name)
    # Zero-initialised residual outputs block the gradient at init by design; perturb them so
    # that every upstream parameter must receive a non-zero gradient.
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "expand"):
                module.expand.weight.normal_(0, 0.1)
    model(torch.randn(2, 4, 3, 16, 16)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == [], f"{name}: parameters without gradient: {dead}"


def test_unknown_block_lists_valid_names_and_suggests():
    with pytest.raises(KeyError) as err:
        blocks.create("vsp", num_classes=2, num_frames=2)
    msg = str(err.value)
    assert "'vps'" in msg and "tsm" in msg and "rf_l_inception_t" in msg


def test_unknown_option_lists_valid_options():
    with pytest.raises(TypeError) as err:
        blocks.create("vps", backbone=TINY, num_classes=2, num_frames=2, proprtion=0.5)
    msg = str(err.value)
    assert "proprtion" in msg and "proportion" in msg and "fusion" in msg and "stages" in msg


def test_contradictory_fusion_options_are_rejected():
    with pytest.raises(ValueError, match="dropout_rate"):
        blocks.check("vps", {"fusion": "dropout"})
    with pytest.raises(ValueError, match="only used by fusion='dropout'"):
        blocks.check("vps", {"fusion": "learned", "dropout_rate": 0.5})


def test_duplicate_registration_names_both_origins():
    with pytest.raises(ValueError, match="built-in.*other-package"):
        blocks.register("tsm", origin="other-package")(type("X", (torch.nn.Module,), {"placement": "none"}))


def test_wrong_clip_length_is_refused():
    with pytest.raises(ValueError, match="T=4"):
        tiny_model("tsn")(torch.randn(2, 3, 3, 16, 16))


def test_insertion_stages_are_configurable():
    model = blocks.create("vps", backbone=TINY, num_classes=2, num_frames=4, stages=[1, 2])
    kinds = [type(m).__name__ for m in model.inserts]
    assert kinds == ["Identity", "VPS", "VPS", "Identity"]


@pytest.mark.parametrize("name, options, option", [
    ("tsm", {"fold_div": "8"}, "fold_div"),  # a quoted number in YAML
    ("tsm", {"fold_div": 8.0}, "fold_div"),  # a float for an int
    ("tsm", {"every": True}, "every"),  # a bool is not an int here
    ("vps", {"proportion": "quarter"}, "proportion"),
    ("vps", {"inter_relu": 1}, "inter_relu"),
    ("vps", {"stages": [0, "1"]}, "stages"),
])
def test_option_values_are_checked_against_their_annotations(name, options, option):
    with pytest.raises(blocks.registry.OptionError) as err:
        blocks.check(name, options)
    assert err.value.option == option
    msg = str(err.value)
    assert f"option {option} must be" in msg and "got " in msg
    assert len(msg.splitlines()) == 1 and ".py:" in msg  # file:line of the block's constructor


@pytest.mark.parametrize("name, options", [
    ("tsm", {"fold_div": 4, "every": None}),
    ("vps", {"proportion": 1}),  # an int is a float
    ("vps", {"fusion": "dropout", "dropout_rate": 0.5, "stages": [1, 2]}),  # float | None; a list for a tuple
])
def test_well_typed_options_pass(name, options):
    blocks.check(name, options)


def test_a_wrong_type_is_reported_before_validate_options_trips_on_it():
    with pytest.raises(TypeError, match="proportion must be float"):
        blocks.create("vps", backbone=TINY, num_classes=2, num_frames=4, proportion="0.5")
