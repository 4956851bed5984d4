"""The rectangle decoded from the patch cells (models/crops_decode.py): its candidates are the
sampler's crops with the sampler's cell labels, it recovers a crop from its cells, it falls
back to the prior without evidence, and `crops.rectangle` picks what a run reports."""

from __future__ import annotations

import pytest
import torch

from vislab.config_crops import CropsConfig
from vislab.data.crops import patch_cells
from vislab.models.crops_decode import candidates, decode_cells, final_rect

GRID = (4, 4)
SIZES = (0.5, 0.9)


def _centre_corners(resized: tuple[int, int], patch: int) -> list[tuple[int, int]]:
    """Unjittered patch corners, placed as the sampler places them for evaluation."""
    rw, rh = resized
    return [(round((c + 0.5) * rw / 4 - patch / 2), round((r + 0.5) * rh / 4 - patch / 2)) for r in range(4) for c in range(4)]


def _one_hot_logits(cells: tuple[int, ...], sharp: float = 30.0) -> torch.Tensor:
    logits = torch.zeros(1, len(cells), 16)
    logits[0, torch.arange(len(cells)), torch.tensor(cells)] = sharp
    return logits


def test_candidates_are_sampler_crops_labelled_as_the_sampler_labels_them() -> None:
    rects, cells = candidates(GRID, SIZES)
    x1, x2, y1, y2 = rects.T
    w, h = x2 - x1, y2 - y1
    assert torch.allclose(w, h) and w.min() >= 0.5 - 1e-6 and w.max() <= 0.9 + 1e-6
    assert x1.min() >= -1e-6 and y1.min() >= -1e-6 and x2.max() <= 1 + 1e-6 and y2.max() <= 1 + 1e-6
    edge = (x1.abs() < 1e-6) | ((1 - x2).abs() < 1e-6) | (y1.abs() < 1e-6) | ((1 - y2).abs() < 1e-6)
    assert bool(edge.all())  # every crop touches an edge, as the sampler's
    corners = _centre_corners((1600, 1000), 64)
    for k in range(0, len(rects), 97):
        r = tuple(float(v) for v in rects[k])
        assert tuple(cells[k].tolist()) == patch_cells(r, (1600, 1000), corners, 64, GRID), r


@pytest.mark.parametrize("rect", [(0.0, 0.6, 0.2, 0.8), (0.45, 1.0, 0.2, 0.75), (0.25, 0.77, 0.48, 1.0)])
def test_cells_of_a_crop_decode_to_that_crop(rect: tuple[float, float, float, float]) -> None:
    """One-hot cells of a known crop: the decoded crop's size factor is that crop's within the
    spread of the crops that give the same cells, and it touches the same edge."""
    cells = patch_cells(rect, (1600, 1000), _centre_corners((1600, 1000), 64), 64, GRID)
    got = decode_cells(_one_hot_logits(cells), GRID, SIZES)[0]
    rects, all_cells = candidates(GRID, SIZES)
    same = rects[(all_cells == torch.tensor(cells)).all(1)]
    s_true, s_got = rect[1] - rect[0], float(got[1] - got[0])
    assert len(same) and float(same[:, 1].sub(same[:, 0]).min()) - 1e-4 <= s_got <= float(same[:, 1].sub(same[:, 0]).max()) + 1e-4
    assert abs(s_got - s_true) / s_true < 0.1, (s_got, s_true)
    assert abs(float(got[3] - got[2]) - s_got) < 1e-4  # the aspect is kept
    if rect[0] == 0.0:
        assert float(got[0]) < 0.02  # left edge
    if rect[1] == 1.0:
        assert float(got[1]) > 0.98  # right edge
    if rect[3] == 1.0:
        assert float(got[3]) > 0.98  # bottom edge


def test_no_evidence_gives_the_prior_mean_crop() -> None:
    got = decode_cells(torch.zeros(2, 16, 16), GRID, SIZES)
    assert torch.allclose(got[0], got[1])
    x1, x2, y1, y2 = got[0].tolist()
    assert x2 - x1 == pytest.approx(0.7, abs=1e-3) and (x1 + x2) / 2 == pytest.approx(0.5, abs=1e-3)


def test_rectangle_setting_and_the_crop_flag_decide_what_is_reported() -> None:
    cells = patch_cells((0.0, 0.6, 0.2, 0.8), (1600, 1000), _centre_corners((1600, 1000), 64), 64, GRID)
    logits = _one_hot_logits(cells).repeat(2, 1, 1)
    head = torch.tensor([[0.1, 0.9, 0.1, 0.9], [0.0, 1.0, 0.0, 1.0]])
    flag = torch.tensor([3.0, -3.0])  # cropped, uncropped
    decoded = decode_cells(logits, GRID, SIZES)
    assert torch.equal(final_rect(head, flag, logits, CropsConfig(rectangle="head")), head)
    cells_rect = final_rect(head, flag, logits, CropsConfig(rectangle="cells"))
    assert torch.allclose(cells_rect[0], decoded[0]) and torch.equal(cells_rect[1], head[1])
    mean_rect = final_rect(head, flag, logits, CropsConfig(rectangle="mean"))
    assert torch.allclose(mean_rect[0], (decoded[0] + head[0]) / 2) and torch.equal(mean_rect[1], head[1])
    assert CropsConfig().rectangle == "mean"
