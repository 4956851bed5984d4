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

Evidence. The patch head can locate any patch, so the decode reads its own, denser grid
(`crops.decode_grid`, 8 x 8 by default; the MLP keeps the 4 x 4 it was trained on). Summing
64 patches' log-likelihoods as if independent makes the posterior far too sharp (its spread
of s was 0.015-0.03 where the errors are 0.1): neighbouring patches share content and lens, and
one confident mistake drags the crop to a corner. The sum is scaled to `crops.decode_evidence`
independent patches (4 by default), a flatter posterior whose mean hedges between the
crops the patches allow.

Measured with two crops-small runs of benchmarks/crops.py (60 and 146 epochs, 84 digicam photos;
2026-12-01; 8 validation photos x 30 fixed crops to choose, 17 held-out photos x 10 crops to
report), crop-factor error of the reported rectangle (photos the flag calls uncropped keep
the head's), validation / held out, run 1 then run 2:
- the head's rectangle: 14.2 / 13.6%, held out 15.0 / 14.2%;
- the 4 x 4 grid, patches independent (the earlier decode): 11.5 / 12.2%, held out 13.1 / 13.0%;
- the 4 x 4 grid as 4 independent patches: 11.1 / 11.2%, held out 12.1 / 12.4%;
- the 8 x 8 grid as 4 independent patches (the defaults): 9.6 / 9.7%, held out 10.9 / 11.2%.
Evidence 8 (9.3 / 10.2%) or 2 (11.0 / 10.7%) for the 64 patches, 6 x 6 (10.2 / 10.2%), and
12 x 12 or 16 x 16 grids (9.7 / 9.7%, 2.25-4x the patches) were no better on validation; the
mean with the head's rectangle (11.3 / 10.8%) and flipped patches (worse: the patch head is not
mirror-blind) were dropped.
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
def candidates(size_factor: tuple[float, float]) -> torch.Tensor:
    """C x 4 rectangles (x1, x2, y1, y2): every candidate crop, as the sampler draws them (s
    uniform, one of four edges, uniform along the other axis)."""
    rects = []
    for s in torch.linspace(size_factor[0], size_factor[1], SIZES).tolist():
        for off in torch.linspace(0.0, 1.0 - s, OFFSETS).tolist():
            for x1, y1 in ((0.0, off), (1.0 - s, off), (off, 0.0), (off, 1.0 - s)):
                rects.append((x1, x1 + s, y1, y1 + s))
    return torch.tensor(rects, dtype=torch.float64)


def candidate_cells(rects: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """C x M: the original cell (row * columns + column) of each of M patch centres (u, v in
    fractions of the kept image) under each of C candidate crops, as the sampler labels them."""
    gx, gy = grid
    r, c = rects.double(), centres.double()
    col = ((r[:, :1] + (r[:, 1:2] - r[:, :1]) * c[None, :, 0]) * gx).long().clamp(0, gx - 1)
    row = ((r[:, 2:3] + (r[:, 3:4] - r[:, 2:3]) * c[None, :, 1]) * gy).long().clamp(0, gy - 1)
    return row * gx + col


def decode_cells(
    cell_logits: torch.Tensor, centres: torch.Tensor, grid: tuple[int, int], size_factor: tuple[float, float], evidence: float
) -> torch.Tensor:
    """B x 4 rectangles, the posterior mean crop, from B x M x cells location logits of patches
    centred at B x M x 2 (u, v); the M log-likelihoods count as `evidence` independent ones."""
    rects = candidates(tuple(size_factor)).to(cell_logits.device)
    lp = torch.log_softmax(cell_logits.double(), -1).clamp(min=LOG_FLOOR)  # B x M x K
    scale = min(1.0, evidence / max(1, lp.shape[1]))
    out = []
    for k in range(lp.shape[0]):  # one sample at a time: C x M cell indices each
        ll = lp[k].gather(1, candidate_cells(rects, centres[k].to(lp.device), grid).T).sum(0)  # C
        out.append(torch.softmax(ll * scale, 0) @ rects)
    return torch.stack(out).float() if out else rects.new_zeros((0, 4)).float()


def final_rect(
    rect: torch.Tensor, flag_logit: torch.Tensor, cell_logits: torch.Tensor, centres: torch.Tensor, cfg: CropsConfig
) -> torch.Tensor:
    """The rectangle a crops run reports (`crops.rectangle`): the head's as it is ("head"),
    or, for photos the flag calls cropped, the one decoded from the decode grid's cells
    (`cell_logits` B x M x cells at `centres` B x M x 2: "cells") or the mean of the two
    ("mean"); a photo called uncropped keeps the head's."""
    if cfg.rectangle == "head":
        return rect
    if cell_logits.shape[1] == 0:
        raise RuntimeError(f"crops.rectangle {cfg.rectangle}: the samples carry no decode patches (made under another config)")
    decoded = decode_cells(cell_logits, centres, cfg.grid, cfg.size_factor, cfg.decode_evidence)
    if cfg.rectangle == "mean":
        decoded = (decoded + rect.float().clamp(0, 1)) / 2
    return torch.where((flag_logit.float() > 0)[:, None], decoded, rect.float())
