"""Optimizers from `optim` config (`build_optimizer`), and the one vislab adds to torch's: Muon for weight matrices and conv filters, with
Nesterov SGD for everything else, as a single optimizer (Lightning's automatic optimisation
and the schedulers drive one).

Muon (Jordan et al., 2024) replaces a matrix's momentum update by its nearest semi-orthogonal
matrix, computed with a few Newton-Schulz iterations, so every direction of the update moves
at the same rate. `torch.optim.Muon` takes 2-d parameters only; conv filters are matrices
too once flattened to out x (in * kh * kw), which is how they are treated here.

Groups with `muon: True` take the Muon update (their own `muon_momentum`, so a one-cycle
schedule that cycles `momentum` leaves them alone); the others take torch's SGD update
(L2 weight decay, momentum, optional Nesterov) through torch's functional `sgd`, so they
step exactly as `torch.optim.SGD` does.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.optim.sgd import sgd

from vislab.config import OptimConfig
from vislab.errors import VislabError
from vislab.models import backbones

# quintic Newton-Schulz coefficients of the Muon paper: steep at zero, so a few steps suffice
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of g = U S V^T (singular values land in about 0.5..1.5), in float32."""
    a, b, c = NS_COEFFICIENTS
    x = g.float() / (g.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return x.T if tall else x


class MuonSGD(torch.optim.Optimizer):
    """Muon for the groups marked `muon: True`, SGD for the rest.

    Muon groups: `lr`, `muon_momentum`, `nesterov`, `ns_steps`, and either `normalize` (keep
    each filter bank at norm sqrt(out): for layers followed by a normalisation, whose output
    does not depend on the weight's scale) or decoupled `weight_decay`.
    SGD groups: `lr`, `momentum`, `nesterov`, `weight_decay`, as in `torch.optim.SGD`.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        muon_momentum: float = 0.95,
        ns_steps: int = 5,
        normalize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, muon=False,
            muon_momentum=muon_momentum, ns_steps=ns_steps, normalize=normalize,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("MuonSGD: a muon group holds only matrices and conv filters (ndim >= 2)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                for p in group["params"]:
                    if p.grad is not None:
                        self._muon(p, group)
            else:
                self._sgd(group)
        return loss

    def _sgd(self, group: dict[str, Any]) -> None:
        """torch's own SGD update (its functional form) on the group's parameters with gradients."""
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"], momentum=group["momentum"],
            lr=group["lr"], dampening=0.0, nesterov=group["nesterov"], maximize=False)
        if group["momentum"]:
            for p, buf in zip(params, buffers):  # created on the first step
                self.state[p]["momentum_buffer"] = buf

    def _muon(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        lr, mom = group["lr"], group["muon_momentum"]
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
        buf.mul_(mom).add_(p.grad)
        g = p.grad.add(buf, alpha=mom) if group["nesterov"] else buf
        rows, cols = p.shape[0], p[0].numel()
        update = orthogonalize(g.reshape(rows, cols), group["ns_steps"]).view_as(p).to(p.dtype)
        if group["normalize"]:
            p.mul_(math.sqrt(rows) / (p.norm() + 1e-12))
        elif group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        # a tall matrix's orthogonal update has smaller entries: scale it back up
        p.add_(update, alpha=-lr * math.sqrt(max(1.0, rows / cols)))


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer `o` names over `backbones.param_groups` (backbone / head, decayed or not).

    For `muon`, the backbone's decayed group (its weight matrices and conv filters) takes
    Muon at `muon_lr`; the head, biases and norm parameters take SGD at `lr`.
    """
    try:
        groups = backbones.param_groups(model, o.lr, o.backbone_lr_mult, o.weight_decay, o.bias_lr_mult)
    except TypeError:  # a model without get_classifier(): one group, no backbone split
        groups = [{"name": "all", "params": list(model.parameters()), "lr": o.lr, "weight_decay": o.weight_decay}]
    if o.name in ("sgd", "muon") and o.nesterov and o.momentum <= 0:
        raise VislabError("optim.nesterov: Nesterov momentum needs optim.momentum > 0")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    if o.name == "asgd":
        return torch.optim.ASGD(groups, lr=o.lr)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    for g in groups:
        g["muon"] = g["name"] == "backbone"
        if g["muon"]:
            g["lr"] = o.muon_lr * o.backbone_lr_mult
    if not any(g["muon"] for g in groups):
        raise VislabError(f"optim.name: muon needs a model with a separate classifier head ({type(model).__name__} has none); use sgd or adamw")
    return MuonSGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, muon_momentum=o.muon_momentum,
                   ns_steps=o.muon_ns_steps, normalize=o.muon_normalize)
