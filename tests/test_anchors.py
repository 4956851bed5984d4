"""k-means anchors: planted box shapes come back, sorted by area, the same for the same seed."""

from __future__ import annotations

import pytest
import torch

from vislab.errors import VislabError
from vislab.models.anchors import kmeans_anchors, wh_iou

PLANTED = torch.tensor([[150.0, 200.0], [20.0, 30.0], [60.0, 40.0], [12.0, 70.0]])  # pixels at 416


def _boxes(seed: int = 0, per_cluster: int = 200) -> torch.Tensor:
    """Boxes around the planted shapes (+-8% jitter), in pixels."""
    gen = torch.Generator().manual_seed(seed)
    jitter = 1 + (torch.rand(len(PLANTED), per_cluster, 2, generator=gen) - 0.5) * 0.16
    return (PLANTED[:, None] * jitter).reshape(-1, 2)


def test_wh_iou_of_sizes_at_a_common_corner() -> None:
    iou = wh_iou(torch.tensor([[10.0, 10.0], [20.0, 5.0]]), torch.tensor([[10.0, 10.0], [5.0, 20.0]]))
    assert torch.allclose(iou, torch.tensor([[1.0, 50 / 150], [50 / 150, 25 / 175]]))


def test_kmeans_recovers_planted_shapes_sorted_by_area() -> None:
    anchors, fitness = kmeans_anchors(_boxes(), n=4)
    expected = PLANTED[PLANTED.prod(1).argsort()]
    assert anchors.shape == (4, 2) and (anchors.prod(1).diff() > 0).all()
    assert torch.allclose(anchors, expected, rtol=0.05), anchors
    assert fitness > 0.85
    again, fit_again = kmeans_anchors(_boxes(), n=4)
    assert torch.equal(anchors, again) and fitness == fit_again
    # the same boxes twice the size give twice the anchors
    assert torch.allclose(kmeans_anchors(_boxes() * 2, n=4)[0], anchors * 2, rtol=1e-4)


def test_more_anchors_fit_better_and_too_few_boxes_fail() -> None:
    boxes = (torch.rand(300, 2, generator=torch.Generator().manual_seed(3)) * 0.5 + 0.01) * 416
    fits = [kmeans_anchors(boxes, n=n)[1] for n in (1, 3, 9)]
    assert fits[0] < fits[1] < fits[2] < 1.0
    with pytest.raises(VislabError, match="2 boxes with a positive size, fewer than the 3 anchors"):
        kmeans_anchors(torch.tensor([[0.1, 0.2], [0.3, 0.1], [0.0, 0.5]]), n=3)
