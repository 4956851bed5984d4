"""Darknet `.weights` import and export: the layer layout of both architectures (checked
against the official files' sizes and yolov3.cfg's conv sequence), a random model's round
trip, old headers, cfg reading, and one-line errors for files that do not fit."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vislab.errors import VislabError
from vislab.models import darknet
from vislab.models.yolo import YOLO, YOLOConfig
from vislab.testing.models import single_thread

SMALL_ANCHORS = ((8, 8), (16, 16), (24, 20), (20, 30), (32, 32), (48, 48))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with single_thread():
        yield


def _yolov3_convs(classes: int) -> list[tuple[int, int, int, int, bool]]:
    """yolov3.cfg's [convolutional] layers as (in, filters, size, stride, batch_normalize)."""
    convs, c = [(3, 32, 3, 1, True)], 32
    for blocks in (1, 2, 8, 8, 4):
        convs.append((c, 2 * c, 3, 2, True))
        c *= 2
        convs += [(c, c // 2, 1, 1, True), (c // 2, c, 3, 1, True)] * blocks
    out = 3 * (5 + classes)
    for w, c_in in ((512, 1024), (256, 768), (128, 384)):
        convs += [(c_in, w, 1, 1, True)] + [(w, 2 * w, 3, 1, True), (2 * w, w, 1, 1, True)] * 2
        convs += [(w, 2 * w, 3, 1, True), (2 * w, out, 1, 1, False)]
        if w > 128:
            convs.append((w, w // 2, 1, 1, True))  # the lateral conv after [route] -4
    return convs


def _layout(model: YOLO) -> list[tuple[int, int, int, int, bool]]:
    return [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], bn is not None) for c, bn in model.darknet_layers()]


def test_layouts_match_darknet_layer_for_layer() -> None:
    v3 = YOLO(YOLOConfig(arch="yolov3"))
    assert _layout(v3) == _yolov3_convs(80)
    # the official files: yolov3.weights 248,007,048 bytes, yolov3-tiny.weights 35,434,956 bytes
    assert 20 + 4 * darknet._floats_needed(v3) == 248_007_048
    assert 20 + 4 * darknet._floats_needed(YOLO(YOLOConfig(arch="yolov3_tiny"))) == 35_434_956
    with pytest.raises(VislabError, match="no Darknet layout"):
        YOLO(YOLOConfig(arch="timm", backbone="test_efficientnet")).darknet_layers()


def _tiny_cfg(path: Path, classes: int, masks: tuple[str, str] = ("3,4,5", "0,1,2"), size: int = 64) -> Path:
    """A yolov3-tiny cfg with `classes` classes, written section by section."""

    def conv(filters: int, k: int, bn: bool = True) -> str:
        head = "batch_normalize=1\n" if bn else ""
        return f"[convolutional]\n{head}filters={filters}\nsize={k}\nstride=1\npad=1\nactivation={'leaky' if bn else 'linear'}\n"

    anchors = "anchors = " + ",  ".join(f"{w},{h}" for w, h in SMALL_ANCHORS)

    def yolo(mask: str) -> str:
        return f"[yolo]\nmask = {mask}\n{anchors}\nclasses={classes}\nnum=6\nignore_thresh = .7\n"

    parts = [f"[net]\n# a comment\nwidth={size}\nheight={size}\nchannels=3\n"]
    for i, f in enumerate((16, 32, 64, 128, 256, 512)):
        parts += [conv(f, 3), f"[maxpool]\nsize=2\nstride={1 if i == 5 else 2}\n"]
    out = 3 * (5 + classes)
    parts += [conv(1024, 3), conv(256, 1), conv(512, 3), conv(out, 1, False), yolo(masks[0])]
    parts += ["[route]\nlayers = -4\n", conv(128, 1), "[upsample]\nstride=2\n", "[route]\nlayers = -1, 8\n"]
    parts += [conv(256, 3), conv(out, 1, False), yolo(masks[1])]
    path.write_text("\n".join(parts))
    return path


def _randomise(model: YOLO, seed: int) -> YOLO:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_floating_point() and name != "anchors":
                t.copy_(torch.rand(t.shape, generator=gen) * 0.5 + (0.5 if "running_var" in name else -0.25))
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    cfg = YOLOConfig(arch="yolov3_tiny", num_classes=2, anchors=SMALL_ANCHORS, img_size=64)
    model = _randomise(YOLO(cfg), 0)
    path = darknet.save_darknet_weights(model, tmp_path / "m.weights", seen=1234)
    assert path.stat().st_size == 20 + 4 * sum(p.numel() for p in model.parameters()) + 4 * 2 * sum(
        bn.num_features for _, bn in model.darknet_layers() if bn is not None
    )
    fresh = _randomise(YOLO(cfg), 1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        report = darknet.load_darknet_weights(fresh, path, _tiny_cfg(tmp_path / "t.cfg", 2))
        assert torch.equal(fresh(x), model(x))
    assert report["layers"] == 13 and report["seen"] == 1234 and report["version"] == "0.2.0"

    # Darknet before 0.2 wrote `seen` as int32: the same floats after a 16-byte header
    old = tmp_path / "old.weights"
    old.write_bytes(struct.pack("<3ii", 0, 1, 0, 99) + path.read_bytes()[20:])
    again = _randomise(YOLO(cfg), 2)
    assert darknet.load_darknet_weights(again, old)["seen"] == 99
    with torch.no_grad():
        assert torch.equal(again(x), model(x))

    built = darknet.from_darknet(tmp_path / "t.cfg", path)
    assert built.cfg == cfg
    with torch.no_grad():
        assert torch.equal(built(x), model(x))


def test_config_from_cfg_orders_anchors_by_the_yolo_masks(tmp_path: Path) -> None:
    cfg = darknet.config_from_cfg(_tiny_cfg(tmp_path / "a.cfg", 7, masks=("3,4,5", "1,2,3"), size=320))
    assert (cfg.arch, cfg.num_classes, cfg.img_size) == ("yolov3_tiny", 7, 320)
    assert cfg.anchors == tuple((float(w), float(h)) for w, h in SMALL_ANCHORS[1:4] + SMALL_ANCHORS[3:6])
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=416\n[yolo]\nmask=0\n")
    with pytest.raises(VislabError, match="1 \\[yolo\\] layers"):
        darknet.config_from_cfg(bad)
    bad.write_text("[net]\nthis line is junk\n")
    with pytest.raises(VislabError, match="line 2"):
        darknet.parse_cfg(bad)


def test_files_that_do_not_fit_fail_in_one_line(tmp_path: Path) -> None:
    three = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=3, anchors=SMALL_ANCHORS))
    path = darknet.save_darknet_weights(three, tmp_path / "three.weights")
    two = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=2, anchors=SMALL_ANCHORS))
    before = [t.clone() for t in three.state_dict().values()]
    with pytest.raises(VislabError, match="three.weights: .* takes .*; it fits yolov3_tiny with 3 classes") as err:
        darknet.load_darknet_weights(two, path)
    assert "\n" not in str(err.value)

    cut = tmp_path / "cut.weights"
    cut.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(VislabError, match="cut.weights: holds .* floats") as err:
        darknet.load_darknet_weights(three, cut)
    assert "classes" not in str(err.value).split("takes")[1]  # no class count fits a cut file
    with pytest.raises(VislabError, match="cannot read"):
        darknet.load_darknet_weights(three, tmp_path / "missing.weights")
    with pytest.raises(VislabError, match=r"\[convolutional\] #9 is filters/size/stride/bn \(21, 1, 1, False\)"):
        darknet.load_darknet_weights(three, path, _tiny_cfg(tmp_path / "two.cfg", 2))
    assert all(torch.equal(a, b) for a, b in zip(before, three.state_dict().values())), "a refused file changes nothing"


def test_a_file_with_a_stray_byte_or_nan_values_is_refused_naming_it(tmp_path: Path) -> None:
    """One stray byte read 'holds 548,524 floats ... but takes 548,524' (the float count rounded);
    a file of NaN loaded silently and training then blamed the learning rate."""
    three = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=3, anchors=SMALL_ANCHORS, width=0.25))
    path = darknet.save_darknet_weights(three, tmp_path / "three.weights")
    stray = tmp_path / "stray.weights"
    stray.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(VislabError, match=r"stray.weights: [0-9,]+ bytes after its header .*not a whole number of 4-byte floats") as err:
        darknet.load_darknet_weights(three, stray)
    assert "takes" not in str(err.value)
    data = bytearray(path.read_bytes())
    data[-8:] = struct.pack("<2f", float("nan"), float("inf"))
    poisoned = tmp_path / "nan.weights"
    poisoned.write_bytes(bytes(data))
    before = [t.clone() for t in three.state_dict().values()]
    with pytest.raises(VislabError, match=r"nan.weights: 2 of its [0-9,]+ floats are NaN or infinite") as err:
        darknet.load_darknet_weights(three, poisoned)
    assert "\n" not in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, three.state_dict().values())), "a refused file changes nothing"


def test_a_long_names_file_is_checked_against_the_file_size_before_a_model_is_built(tmp_path: Path, monkeypatch) -> None:
    """The transfer built a YOLO of the names file's class count before the size check: a
    1 MiB names file (524k classes) made a 420-byte .weights allocate 5 GB for 19 s."""
    import vislab.tasks.detect_weights as detect_weights

    run_model = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=2, anchors=SMALL_ANCHORS, width=0.25))
    weights = tmp_path / "x.weights"
    weights.write_bytes(b"\0" * 420)
    (tmp_path / "x.names").write_text("a\n" * 5000)
    built: list[int] = []
    real = YOLO.__init__

    def spy(self: YOLO, cfg: YOLOConfig) -> None:
        built.append(cfg.num_classes)
        real(self, cfg)

    monkeypatch.setattr(YOLO, "__init__", spy)
    with pytest.raises(VislabError, match=r"x.weights: holds 101 floats .* yolov3_tiny with 5000 classes \(the lines of .*x.names\) takes") as err:
        detect_weights.load_darknet_transfer(run_model, weights, ["a", "b"], {}, None)
    assert "\n" not in str(err.value) and built == []


def test_a_class_map_naming_an_unknown_class_is_refused_naming_the_key(tmp_path: Path) -> None:
    """An unknown class in detect.class_map read 'transfer mapping: new classes [...]'."""
    from vislab.tasks.detect_weights import load_darknet_transfer

    source = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=2, anchors=SMALL_ANCHORS, width=0.25))
    weights = darknet.save_darknet_weights(source, tmp_path / "two.weights")
    (tmp_path / "two.names").write_text("car\nperson\n")
    run_model = YOLO(YOLOConfig(arch="yolov3_tiny", num_classes=2, anchors=SMALL_ANCHORS, width=0.25))
    with pytest.raises(VislabError, match=r"^detect.class_map: 'Truck' is not a class of this run \(Car, Pedestrian\)"):
        load_darknet_transfer(run_model, weights, ["Car", "Pedestrian"], {"Truck": "car"}, None)
    with pytest.raises(VislabError, match=r"^detect.class_map: 'bus' is not a class of .*two.names"):
        load_darknet_transfer(run_model, weights, ["Car", "Pedestrian"], {"Car": "bus"}, None)
    done = load_darknet_transfer(run_model, weights, ["Car", "Pedestrian"], {"Pedestrian": "PERSON"}, None)
    assert done.vislab_load_report["classes_from"] == {"Car": "car", "Pedestrian": "person"}
