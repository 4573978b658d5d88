"""The trained probe: a direction in the residual stream and how it scores a statement.

Every probe type (logistic.py, massmean.py, ccs.py; fitted by name through registry.py) ends
in the same `Probe`:

    logit(x) = (x - mean) . direction + bias        x: [n, d_model] -> [n]

`mean` centres activations (the training mean, Marks & Tegmark 2023); a
logit > 0 means "the model holds this true". Mass-mean and CCS directions
are put on this scale by a 1-D logistic fit of scale and offset
(`calibrate`), so scores of all types read alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Probe:
    kind: str
    hook: str
    direction: torch.Tensor  # [d_model]
    bias: float
    mean: torch.Tensor  # [d_model]
    threshold: float = 0.5
    """Truth probability below which lie-check flags a contradiction."""
    threshold_format: str = "uncalibrated"
    """Which text format `threshold` was calibrated on: 'qa' (the "Q: ... A: ..." text lie-check
    reads, set by `probe lies --set-threshold`) or 'uncalibrated' (0.5, the training logit's
    zero)."""
    info: dict = field(default_factory=dict)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[n, d_model] -> [n] truth logits."""
        return (x.float() - self.mean) @ self.direction + self.bias

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((self.logits(x) > 0).long() == y.long()).float().mean())


def layer_of(hook: str) -> int:
    """'blocks.12.resid_post' -> 12 (-1 for a hook outside the blocks)."""
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


@dataclass
class Calibration:
    scale: float
    bias: float


def calibrate(proj: torch.Tensor, y: torch.Tensor, l2: float = 1e-4) -> Calibration:
    """1-D logistic regression of labels on a projection: sigmoid(scale * proj + bias)."""
    p = proj.double()
    s = p.std().clamp_min(1e-12)
    z = (p - p.mean()) / s
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1, max_iter=100, line_search_fn="strong_wolfe")
    yy = y.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * z + params[1], yy)
        loss = loss + l2 * params[0] ** 2
        loss.backward()
        return loss

    opt.step(closure)
    a, b = params.detach().tolist()
    # sigmoid(a * (p - m) / s + b) = sigmoid((a/s) * p + (b - a m / s))
    return Calibration(scale=a / float(s), bias=b - a * float(p.mean()) / float(s))


def from_direction(
    kind: str,
    hook: str,
    direction: torch.Tensor,
    mean: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    info: dict | None = None,
) -> Probe:
    """A probe along `direction` with scale and offset fitted on (x, y)."""
    d = direction.float() / direction.float().norm().clamp_min(1e-12)
    cal = calibrate((x.float() - mean) @ d, y)
    return Probe(
        kind=kind, hook=hook, direction=d * cal.scale, bias=cal.bias, mean=mean, info=info or {}
    )
