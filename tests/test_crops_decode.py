"""The rectangle decoded from the patch cells (models/crops_decode.py): its candidates are the
sampler's crops with the sampler's cell labels at any patch centres (the 4 x 4 grid's or the
denser decode grid's), it recovers a crop from its cells, `crops.decode_evidence` flattens the
posterior without moving a clear answer, it falls back to the prior without evidence, and
`crops.rectangle` picks what a run reports."""

from __future__ import annotations

import pytest
import torch

from vislab.config_crops import CropsConfig
from vislab.data.crops import grid_corners, patch_cells
from vislab.models.crops_decode import candidate_cells, candidates, decode_cells, final_rect

GRID = (4, 4)
SIZES = (0.5, 0.9)
RESIZED = (1600, 1000)
PATCH = 64


def _centres(grid: tuple[int, int]) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Corners of a grid's patches as the sampler places them for evaluation, and their centres
    (u, v) in fractions of the kept image."""
    corners = grid_corners(RESIZED, grid, PATCH)
    centres = torch.tensor([((x + PATCH / 2) / RESIZED[0], (y + PATCH / 2) / RESIZED[1]) for x, y in corners])
    return corners, centres


def _one_hot_logits(cells: tuple[int, ...], sharp: float = 30.0) -> torch.Tensor:
    logits = torch.zeros(1, len(cells), 16)
    logits[0, torch.arange(len(cells)), torch.tensor(cells)] = sharp
    return logits


def test_candidates_are_sampler_crops() -> None:
    x1, x2, y1, y2 = candidates(SIZES).T
    w, h = x2 - x1, y2 - y1
    assert torch.allclose(w, h) and w.min() >= 0.5 - 1e-6 and w.max() <= 0.9 + 1e-6
    assert x1.min() >= -1e-6 and y1.min() >= -1e-6 and x2.max() <= 1 + 1e-6 and y2.max() <= 1 + 1e-6
    edge = (x1.abs() < 1e-6) | ((1 - x2).abs() < 1e-6) | (y1.abs() < 1e-6) | ((1 - y2).abs() < 1e-6)
    assert bool(edge.all())  # every crop touches an edge, as the sampler's


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (5, 3)])
def test_candidate_cells_are_the_samplers_labels_at_any_patch_centres(grid: tuple[int, int]) -> None:
    rects = candidates(SIZES)
    corners, centres = _centres(grid)
    cells = candidate_cells(rects, centres, GRID)
    assert cells.shape == (len(rects), grid[0] * grid[1])
    for k in range(0, len(rects), 97):
        r = tuple(float(v) for v in rects[k])
        assert tuple(cells[k].tolist()) == patch_cells(r, RESIZED, corners, PATCH, GRID), r


@pytest.mark.parametrize("rect", [(0.0, 0.6, 0.2, 0.8), (0.45, 1.0, 0.2, 0.75), (0.25, 0.77, 0.48, 1.0)])
@pytest.mark.parametrize("grid", [(4, 4), (8, 8)])
def test_cells_of_a_crop_decode_to_that_crop(rect: tuple[float, float, float, float], grid: tuple[int, int]) -> None:
    """One-hot cells of a known crop, at the decode's default evidence: the decoded crop's size
    factor is within 10% of the crop's, it keeps the aspect and touches the same edge."""
    corners, centres = _centres(grid)
    cells = patch_cells(rect, RESIZED, corners, PATCH, GRID)
    got = decode_cells(_one_hot_logits(cells), centres[None], GRID, SIZES, CropsConfig().decode_evidence)[0]
    s_true, s_got = rect[1] - rect[0], float(got[1] - got[0])
    assert abs(s_got - s_true) / s_true < 0.1, (s_got, s_true)
    assert abs(float(got[3] - got[2]) - s_got) < 1e-4  # the aspect is kept
    if rect[0] == 0.0:
        assert float(got[0]) < 0.02  # left edge
    if rect[1] == 1.0:
        assert float(got[1]) > 0.98  # right edge
    if rect[3] == 1.0:
        assert float(got[3]) > 0.98  # bottom edge


def test_evidence_flattens_the_posterior_and_never_sharpens_it() -> None:
    """Weak evidence for a large crop (each patch leans to its cells under that crop): counted
    as 64 independent patches it decodes to that crop; counted as 4 it hedges toward the prior
    (s 0.7); asking for more evidence than there are patches is the same as counting each once."""
    corners, centres = _centres((8, 8))
    large = patch_cells((0.0, 0.85, 0.0, 0.85), RESIZED, corners, PATCH, GRID)
    logits = torch.zeros(1, 64, 16)
    logits[0, torch.arange(64), torch.tensor(large)] = 1.0
    size = lambda ev: float((lambda r: r[1] - r[0])(decode_cells(logits, centres[None], GRID, SIZES, ev)[0]))
    assert size(64) == pytest.approx(0.85, abs=0.03)
    assert 0.7 < size(4) < size(64) - 0.03
    assert size(1000) == pytest.approx(size(64), abs=1e-6)


def test_no_evidence_gives_the_prior_mean_crop() -> None:
    _, centres = _centres((8, 8))
    got = decode_cells(torch.zeros(2, 64, 16), centres[None].expand(2, -1, -1), GRID, SIZES, 4.0)
    assert torch.allclose(got[0], got[1])
    x1, x2, y1, y2 = got[0].tolist()
    assert x2 - x1 == pytest.approx(0.7, abs=1e-3) and (x1 + x2) / 2 == pytest.approx(0.5, abs=1e-3)


def test_rectangle_setting_and_the_crop_flag_decide_what_is_reported() -> None:
    corners, centres = _centres((8, 8))
    cells = patch_cells((0.0, 0.6, 0.2, 0.8), RESIZED, corners, PATCH, GRID)
    logits, centres = _one_hot_logits(cells).repeat(2, 1, 1), centres[None].expand(2, -1, -1)
    head = torch.tensor([[0.1, 0.9, 0.1, 0.9], [0.0, 1.0, 0.0, 1.0]])
    flag = torch.tensor([3.0, -3.0])  # cropped, uncropped
    decoded = decode_cells(logits, centres, GRID, SIZES, 4.0)
    assert torch.equal(final_rect(head, flag, logits, centres, CropsConfig(rectangle="head")), head)
    cells_rect = final_rect(head, flag, logits, centres, CropsConfig(rectangle="cells"))
    assert torch.allclose(cells_rect[0], decoded[0]) and torch.equal(cells_rect[1], head[1])
    mean_rect = final_rect(head, flag, logits, centres, CropsConfig(rectangle="mean"))
    assert torch.allclose(mean_rect[0], (decoded[0] + head[0]) / 2) and torch.equal(mean_rect[1], head[1])
    assert CropsConfig().rectangle == "cells" and CropsConfig().decode_grid == (8, 8)
    with pytest.raises(RuntimeError, match="no decode patches"):
        final_rect(head, flag, logits[:, :0], centres[:, :0], CropsConfig(rectangle="cells"))
