"""The crop rectangle read off the patch cells: every crop the sampler can make, scored by the
patch-location head.

The MLP head has to learn from the training photos that a crop keeps the frame's aspect,
touches one edge and lies inside the frame; on a few dozen photos it regresses to the mean
(small crops come out too large). The patch head says, for each patch of the grid, which
cell of the original frame it came from. A candidate crop (size factor s, one edge touched,
an offset along the other axis) puts patch n's centre, at fraction u_n of the kept image, at
x1 + s * u_n of the original frame, hence in a known cell; its log-likelihood is the sum of
the patches' log-probabilities of those cells. The decoded rectangle is the posterior mean
over the candidates (flat prior, as the sampler draws them), so it obeys the geometry by
construction and uses no learned weights beyond the patch head.

Measured with two crops-small runs of benchmarks/crops.py (seeds 0 and 1, 84 digicam photos,
10 fixed crops of each photo; 2026-12-01): crop-factor error on the 17 held-out photos
14.3/15.1% with the head's rectangle, 12.9/12.6% decoded, 12.2/12.6% their mean; on the 8
validation photos 14.2/15.9%, 11.5/11.6%, 11.7/12.1%. The mean also kept the best IoU
(held out 0.637/0.639 against the head's 0.635/0.615), hence the default `mean`.
"""

from __future__ import annotations

import functools
import math

import torch

from vislab.config_crops import CropsConfig

SIZES = 41  # candidate size factors across size_factor
OFFSETS = 21  # candidate positions along the axis the crop does not touch
LOG_FLOOR = math.log(1e-6)  # one confidently wrong patch must not veto a candidate


@functools.lru_cache(maxsize=8)
def candidates(grid: tuple[int, int], size_factor: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(rects C x 4 as (x1, x2, y1, y2), cells C x N): every candidate crop and the original
    cell of each of its N = columns * rows patch centres (row-major, as the sampler's grid)."""
    gx, gy = grid
    rects = []
    for s in torch.linspace(size_factor[0], size_factor[1], SIZES).tolist():
        for off in torch.linspace(0.0, 1.0 - s, OFFSETS).tolist():
            for x1, y1 in ((0.0, off), (1.0 - s, off), (off, 0.0), (off, 1.0 - s)):
                rects.append((x1, x1 + s, y1, y1 + s))
    r = torch.tensor(rects, dtype=torch.float64)
    u = (torch.arange(gx, dtype=torch.float64) + 0.5) / gx
    v = (torch.arange(gy, dtype=torch.float64) + 0.5) / gy
    col = ((r[:, :1] + (r[:, 1:2] - r[:, :1]) * u) * gx).long().clamp(max=gx - 1)  # C x gx
    row = ((r[:, 2:3] + (r[:, 3:4] - r[:, 2:3]) * v) * gy).long().clamp(max=gy - 1)  # C x gy
    cells = (row[:, :, None] * gx + col[:, None, :]).reshape(len(r), gx * gy)
    return r.float(), cells


def decode_cells(cell_logits: torch.Tensor, grid: tuple[int, int], size_factor: tuple[float, float]) -> torch.Tensor:
    """B x 4 rectangles from B x N x cells patch-location logits: the posterior mean crop."""
    rects, cells = candidates(tuple(grid), tuple(size_factor))
    rects, cells = rects.to(cell_logits.device), cells.to(cell_logits.device)
    lp = torch.log_softmax(cell_logits.float(), -1).clamp(min=LOG_FLOOR)  # B x N x K
    b, n, _ = lp.shape
    ll = lp.gather(2, cells.T[None].expand(b, n, len(rects))).sum(1)  # B x C
    return torch.softmax(ll, -1) @ rects


def final_rect(rect: torch.Tensor, flag_logit: torch.Tensor, cell_logits: torch.Tensor, cfg: CropsConfig) -> torch.Tensor:
    """The rectangle a crops run reports (`crops.rectangle`): the head's as it is ("head"),
    or, for photos the flag calls cropped, the one decoded from the cells ("cells") or the
    mean of the two ("mean"); a photo called uncropped keeps the head's."""
    if cfg.rectangle == "head":
        return rect
    decoded = decode_cells(cell_logits, cfg.grid, cfg.size_factor)
    if cfg.rectangle == "mean":
        decoded = (decoded + rect.float().clamp(0, 1)) / 2
    return torch.where((flag_logit.float() > 0)[:, None], decoded, rect.float())
