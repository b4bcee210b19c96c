"""2D models: backbone strides/channels, FCN and DeepLabV3+ output shapes, torchvision weight loading."""
from __future__ import annotations

import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.models import create_model
from brats_seg.models.backbones2d import build_backbone
from brats_seg.models.fcn import bilinear_kernel
from brats_seg.models.weights import load_backbone_weights

torch.set_num_threads(1)

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]
# torchvision parameter counts (whole model) minus the ImageNet heads we do not build
TORCHVISION_BODY_PARAMS = {
    "resnet18": 11_689_512 - (512 * 1000 + 1000),
    "resnet50": 25_557_032 - (2048 * 1000 + 1000),
    "mobilenet_v2": 3_504_872 - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280),
    "vgg16": 14_714_688,
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", RESNETS + ["mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_strides_and_channels(name, output_stride):
    net = build_backbone(name, output_stride).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    expected = {"low": 4, "c3": 8, "c4": min(16, output_stride), "out": output_stride}
    assert net.strides == expected
    for key, stride in expected.items():
        assert feats[key].shape == (1, net.channels[key], 64 // stride, 64 // stride), key


def test_vgg16_strides_and_only_stride_32():
    net = build_backbone("vgg16", 32).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 64))
    assert {k: 64 // v.shape[-1] for k, v in feats.items()} == {"low": 4, "c3": 8, "c4": 16, "out": 32}
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("vgg16", 16)


@pytest.mark.parametrize("name", list(TORCHVISION_BODY_PARAMS))
def test_parameter_counts_match_torchvision(name):
    assert _count(build_backbone(name)) == TORCHVISION_BODY_PARAMS[name]


def test_well_known_torchvision_key_names_and_shapes():
    expected = {
        "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                     "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,)},
        "resnet50": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.1.weight": (256,),
                     "layer4.2.conv2.weight": (512, 512, 3, 3)},
        "resnet101": {"layer3.22.conv2.weight": (256, 256, 3, 3)},
        "mobilenet_v2": {"features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_mean": (32,),
                         "features.1.conv.0.0.weight": (32, 1, 3, 3), "features.1.conv.1.weight": (16, 32, 1, 1),
                         "features.2.conv.0.0.weight": (96, 16, 1, 1), "features.17.conv.2.weight": (320, 960, 1, 1),
                         "features.17.conv.3.bias": (320,)},
        "vgg16": {"features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,), "features.28.weight": (512, 512, 3, 3)},
    }
    for name, keys in expected.items():
        sd = build_backbone(name).state_dict()
        for key, shape in keys.items():
            assert tuple(sd[key].shape) == shape, (name, key)


def test_dilation_keeps_parameter_shapes():
    a, b = build_backbone("resnet50", 32).state_dict(), build_backbone("resnet50", 8).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert build_backbone("resnet50", 8).layer4[1].conv2.dilation == (4, 4)


# ----------------------------------------------------------------------------- DeepLabV3+
@pytest.mark.parametrize("backbone", RESNETS + ["mobilenet_v2"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3plus_output_shape(backbone, output_stride):
    model = create_model("deeplabv3plus", num_classes=5, backbone=backbone, output_stride=output_stride,
                         aspp_channels=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, 5, 64, 48)
    rates = [b[0].dilation[0] for b in model.aspp.branches[1:4]]
    assert rates == ([12, 24, 36] if output_stride == 8 else [6, 12, 18])


def test_deeplabv3plus_odd_size_and_aux_dict_in_training():
    model = create_model("deeplabv3plus", num_classes=3, backbone="mobilenet_v2", aux=True,
                         aspp_channels=16, width_mult=0.5)
    out = model.train()(torch.randn(2, 3, 50, 70))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, 3, 50, 70)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 50, 70)).shape == (1, 3, 50, 70)


def test_deeplabv3plus_rejects_bad_config():
    with pytest.raises(ValueError, match="output_stride"):
        create_model("deeplabv3plus", num_classes=3, backbone="resnet18", output_stride=32)
    with pytest.raises(ValueError, match="vgg16"):
        create_model("deeplabv3plus", num_classes=3, backbone="vgg16")


# ----------------------------------------------------------------------------------- FCN
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("size", [(32, 32), (45, 61)])
def test_fcn_vgg_output_matches_input_size(name, size):
    model = create_model(name, num_classes=4, backbone="vgg16", fc_channels=32).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("backbone,output_stride", [("resnet18", 32), ("resnet18", 16), ("resnet18", 8),
                                                     ("resnet50", 32), ("mobilenet_v2", 16)])
def test_fcn_resnet_output_shape(name, backbone, output_stride):
    model = create_model(name, num_classes=4, backbone=backbone, output_stride=output_stride).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).shape == (1, 4, 50, 70)


def test_fcn8s_skips_receive_gradient_and_aux():
    model = create_model("fcn8s", num_classes=3, backbone="resnet18", aux=True).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out["out"].sum() + out["aux"].sum()).backward()
    for layer in (model.score_c3, model.score_c4):
        assert layer.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="aux"):
        create_model("fcn8s", num_classes=3, backbone="vgg16", aux=True, fc_channels=8)


def test_bilinear_kernel_interpolates_linearly():
    up = torch.nn.ConvTranspose2d(1, 1, 4, stride=2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(1, 4))
        ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # value = column index
        y = up(ramp)[0, 0, 3:-3, 3:-3]
    steps = y[:, 1:] - y[:, :-1]
    assert torch.allclose(steps, torch.full_like(steps, 0.5))  # half the input step per output pixel


# ------------------------------------------------------------------------- weight loading
def _torchvision_file(tmp_path, name, head, **kw):
    """A synthetic torchvision-format file: the backbone's keys with random values plus head keys."""
    body = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v.clone()
            for k, v in build_backbone(name, **kw).state_dict().items()}
    path = tmp_path / f"{name}.pth"
    torch.save({**body, **head}, path)
    return path, body


@pytest.mark.parametrize("name,head", [
    ("resnet18", {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}),
    ("mobilenet_v2", {"classifier.1.weight": torch.zeros(1000, 1280), "classifier.1.bias": torch.zeros(1000),
                      "features.18.0.weight": torch.zeros(1280, 320, 1, 1), "features.18.1.weight": torch.ones(1280)}),
])
def test_torchvision_file_loads_strictly(tmp_path, name, head):
    path, body = _torchvision_file(tmp_path, name, head)
    net = build_backbone(name, 16)
    returned = load_backbone_weights(net, path)
    assert set(returned) == set(head)
    for k, v in net.state_dict().items():
        assert torch.equal(v, body[k]), k


def test_old_files_without_bn_counters_load(tmp_path):
    path, body = _torchvision_file(tmp_path, "mobilenet_v2", {})
    sd = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    load_backbone_weights(build_backbone("mobilenet_v2"), path)


def test_wrong_file_gives_clear_error(tmp_path):
    path, body = _torchvision_file(tmp_path, "mobilenet_v2", {})
    body = dict(body)
    del body["features.3.conv.1.0.weight"]
    body["features.0.0.weight"] = torch.zeros(32, 3, 5, 5)
    body["head.extra"] = torch.zeros(2)
    torch.save(body, path)
    with pytest.raises(InputError) as err:
        load_backbone_weights(build_backbone("mobilenet_v2"), path)
    message = err.value.line()
    assert str(path) in message
    assert "missing keys [features.3.conv.1.0.weight]" in message
    assert "unexpected [head.extra]" in message
    assert "shape mismatch at features.0.0.weight: file (32, 3, 5, 5) vs model (32, 3, 3, 3)" in message


def test_resnet_file_into_other_depth_fails(tmp_path):
    path, _ = _torchvision_file(tmp_path, "resnet18", {})
    with pytest.raises(InputError, match="not a torchvision resnet34 state dict"):
        load_backbone_weights(build_backbone("resnet34"), path)


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_unreadable_or_missing_file(tmp_path, content):
    path = tmp_path / "w.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match="w.pth"):
        load_backbone_weights(build_backbone("mobilenet_v2"), path)


def test_non_state_dict_file(tmp_path):
    path = tmp_path / "w.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(InputError, match="not a state dict"):
        load_backbone_weights(build_backbone("mobilenet_v2"), path)


def test_fcn_vgg_converts_classifier_to_fc6_fc7(tmp_path):
    head = {"classifier.0.weight": torch.randn(16, 512 * 7 * 7), "classifier.0.bias": torch.randn(16),
            "classifier.3.weight": torch.randn(16, 16), "classifier.3.bias": torch.randn(16),
            "classifier.6.weight": torch.randn(1000, 16), "classifier.6.bias": torch.randn(1000)}
    path, body = _torchvision_file(tmp_path, "vgg16", head)
    model = create_model("fcn8s", num_classes=3, backbone="vgg16", fc_channels=16, pretrained_backbone=str(path))
    assert torch.equal(model.backbone.features[0].weight, body["features.0.weight"])
    assert torch.equal(model.fc6.weight, head["classifier.0.weight"].reshape(16, 512, 7, 7))
    assert torch.equal(model.fc7.weight[:, :, 0, 0], head["classifier.3.weight"])
    with pytest.raises(InputError, match="fc_channels must be 4096"):
        create_model("fcn8s", num_classes=3, backbone="vgg16", fc_channels=8, pretrained_backbone=str(path))


def test_factory_loads_pretrained_backbone(tmp_path):
    path, body = _torchvision_file(tmp_path, "mobilenet_v2", {})
    model = create_model("deeplabv3plus", num_classes=3, backbone="mobilenet_v2", pretrained_backbone=str(path))
    assert torch.equal(model.backbone.features[5].conv[1][0].weight, body["features.5.conv.1.0.weight"])
