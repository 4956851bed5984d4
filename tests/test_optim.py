"""MuonSGD: its SGD groups are torch's SGD, its Muon groups take orthogonalised steps."""

from __future__ import annotations

import copy

import pytest
import torch

from vislab.optim import MuonSGD, orthogonalize


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((6, 4), (5,), (8, 3, 3, 3))]


def _grads(step: int, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_groups_step_exactly_like_torch_sgd(nesterov: bool) -> None:
    ours, ref = _params(0), _params(0)
    opt = MuonSGD([{"params": ours, "lr": 0.1, "weight_decay": 1e-2}], lr=0.1, momentum=0.8, nesterov=nesterov)
    torch_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.8, nesterov=nesterov, weight_decay=1e-2)
    for step in range(4):
        for ps in (ours, ref):
            for p, g in zip(ps, _grads(step, ps)):
                p.grad = g
        opt.step()
        torch_opt.step()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(16, 72), (72, 16)])
def test_orthogonalize_flattens_the_spectrum_and_keeps_the_direction(shape) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * torch.logspace(-1, 1, shape[1])
    o = orthogonalize(g, steps=5)
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.4 and s.max() < 1.6  # the raw singular values span two decades
    assert (o * g).sum() > 0


def test_muon_step_is_orthogonal_and_normalize_fixes_the_filter_norm() -> None:
    w = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(2)))
    opt = MuonSGD([{"params": [w], "muon": True}], lr=0.05, muon_momentum=0.0, nesterov=False, normalize=True)
    for step in range(3):
        before = w.detach().clone()
        w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(step))
        opt.step()
        scaled = before * (8**0.5 / before.norm())  # normalised first, then stepped
        step_taken = (scaled - w.detach()).reshape(8, -1) / 0.05
        s = torch.linalg.svdvals(step_taken)
        assert s.min() > 0.4 and s.max() < 1.6
        torch.testing.assert_close(step_taken, orthogonalize(w.grad.reshape(8, -1)), rtol=1e-4, atol=1e-5)


def test_state_round_trip_continues_identically() -> None:
    def run(params, opt, steps):
        for step in steps:
            for p, g in zip(params, _grads(step, params)):
                p.grad = g
            opt.step()

    def make(params):
        return MuonSGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.02, "muon": True}], lr=0.1, momentum=0.9)

    a = _params(3)
    opt_a = make(a)
    run(a, opt_a, range(3))
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = make(b)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a checkpoint holds copies
    run(a, opt_a, range(3, 5))
    run(b, opt_b, range(3, 5))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_a_muon_group_refuses_vectors() -> None:
    with pytest.raises(ValueError, match="matrices"):
        MuonSGD([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}], lr=0.1)
