"""AttentionUNet3D: shapes, deep supervision, input checks, gating, init, and that it can learn."""
from __future__ import annotations

import math

import pytest
import torch

from brats_seg.seg3d.losses import build_loss
from brats_seg.models import create_model
from brats_seg.models.attention_unet3d import AttentionGate, AttentionUNet3D

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "features, in_ch, out_ch, size",
    [
        ((4, 8, 16), 4, 3, (16, 16, 16)),
        ((4, 8, 16, 32), 2, 4, (16, 24, 8)),
        ((2, 4, 8, 8, 16), 1, 2, (16, 16, 32)),
    ],
)
def test_output_shape_for_several_depths(features, in_ch, out_ch, size):
    model = AttentionUNet3D(in_ch, out_ch, features).eval()
    out = model(torch.randn(2, in_ch, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, out_ch, *size)
    assert len(model.gates) == len(features) - 1


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
def test_every_norm_and_trilinear_upsampling_run(norm):
    model = AttentionUNet3D(1, 2, (3, 6), norm=norm, upsample="trilinear", act="relu", dropout=0.1)
    assert model(torch.randn(2, 1, 8, 8, 8)).shape == (2, 2, 8, 8, 8)


def test_registry_builds_it():
    model = create_model("attention_unet3d", in_channels=4, out_channels=3, features=(4, 8))
    assert isinstance(model, AttentionUNet3D)


def test_deep_supervision_list_in_train_single_tensor_in_eval():
    model = AttentionUNet3D(2, 3, (4, 8, 16, 32), deep_supervision=True)
    x = torch.randn(1, 2, 16, 16, 16)
    outs = model.train()(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 16, 16, 16), (1, 3, 8, 8, 8), (1, 3, 4, 4, 4)]
    single = model.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, 16, 16, 16)


def test_no_deep_supervision_gives_tensor_in_train_mode():
    out = AttentionUNet3D(1, 2, (2, 4, 8)).train()(torch.randn(1, 1, 8, 8, 8))
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("size", [(15, 16, 16), (16, 16, 12), (16, 20, 16)])
def test_bad_spatial_size_raises_value_error(size):
    model = AttentionUNet3D(1, 2, (2, 4, 8, 16))  # needs multiples of 8
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.randn(1, 1, *size))


def test_wrong_channel_count_and_bad_config_raise():
    with pytest.raises(ValueError, match=r"\(B, 4, X, Y, Z\)"):
        AttentionUNet3D(4, 3, (2, 4))(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        AttentionUNet3D(norm="layer")
    with pytest.raises(ValueError, match="features"):
        AttentionUNet3D(features=(8,))


def test_gate_output_depends_on_gating_signal_and_coefficients_in_unit_interval():
    torch.manual_seed(0)
    gate = AttentionGate(x_channels=4, g_channels=8, inter_channels=2)
    x = torch.randn(1, 4, 8, 8, 8)
    g1, g2 = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 8, 4, 4, 4)
    out1, out2 = gate(x, g1), gate(x, g2)
    assert out1.shape == x.shape
    assert not torch.allclose(out1, out2, atol=1e-4)  # only g changed
    alpha = gate.coefficients(x, g1)
    assert alpha.shape == (1, 1, 8, 8, 8)
    assert alpha.min() > 0 and alpha.max() < 1
    assert alpha.std() > 1e-3  # not a constant map
    torch.testing.assert_close(out1, x * alpha)


def test_gate_can_suppress_and_pass_skip_features():
    gate = AttentionGate(x_channels=2, g_channels=2, inter_channels=1)
    with torch.no_grad():
        for conv in (gate.w_x, gate.w_g, gate.psi):
            conv.weight.zero_()
        gate.w_g.weight[0, 0] = 1.0  # coefficient driven by g's first channel only
        gate.psi.weight.fill_(1.0)
        gate.psi.bias.fill_(-5.0)
    x = torch.ones(1, 2, 4, 4, 4)
    closed = gate(x, torch.zeros(1, 2, 2, 2, 2))
    open_ = gate(x, torch.full((1, 2, 2, 2, 2), 20.0))
    assert closed.max() < 0.01  # sigmoid(-5) ~ 0.0067
    assert open_.min() > 0.99


def test_attention_maps_helper_returns_one_map_per_gate():
    model = AttentionUNet3D(1, 2, (2, 4, 8)).eval()
    maps = model.attention_maps(torch.randn(1, 1, 16, 16, 16))
    assert [tuple(m.shape) for m in maps] == [(1, 1, 16, 16, 16), (1, 1, 8, 8, 8)]
    assert all(0 < m.min() and m.max() < 1 for m in maps)
    assert all(g.attention is None and not g.record for g in model.gates)  # nothing kept


def test_kaiming_init_std():
    torch.manual_seed(0)
    model = AttentionUNet3D(4, 3, (16, 32, 64))
    conv = model.encoder[2].block[0]  # Conv3d(32, 64, 3): fan_in = 32 * 27
    expected = math.sqrt(2.0 / (1 + 0.01**2) / (32 * 27))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert conv.bias is None  # followed by a norm layer
    assert torch.count_nonzero(model.head.bias) == 0


def test_one_step_reduces_loss():
    torch.manual_seed(0)
    model = AttentionUNet3D(2, 3, (4, 8), deep_supervision=True).train()
    x = torch.randn(2, 2, 8, 8, 8)
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 2
    labels[:, 3:5, 3:5, 3:5] = 3
    x[:, 0] += 2.0 * (labels > 0)  # a learnable signal
    loss_fn = build_loss("regions")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = loss_fn(model(x), labels)
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), labels)
    assert after.item() < before.item()
