"""A minimal Adam with L2 weight decay, numerically the same as ``torch.optim.Adam``.

Why not ``torch.optim``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``
(through ``torch._disable_dynamo``), which costs about 3 s per process on a CPU — more
than a whole demo training job. The test suite checks this class against
``torch.optim.Adam`` step by step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam (Kingma & Ba 2015) with coupled L2 weight decay (``grad += wd · param``),
    bias correction and ``eps`` added after the square root, as ``torch.optim.Adam``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.step_count = 0
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter with a gradient, as multi-tensor (``_foreach``) ops."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        m = [self.exp_avg[i] for i in live]
        v = [self.exp_avg_sq[i] for i in live]
        grads = [p.grad for p in params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        self.step_count += 1
        b1, b2 = self.betas
        correction1 = 1 - b1 ** self.step_count
        correction2_sqrt = (1 - b2 ** self.step_count) ** 0.5
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, value=-self.lr / correction1)
