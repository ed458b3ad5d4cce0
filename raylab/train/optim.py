"""Optimiser and schedule of Dinomaly's recipe, used by MeDS's reconstruction network.

StableAdamW (Wortsman et al., 2023) is AdamW whose step size is divided, per tensor, by
``max(1, RMS(g^2 / v_hat))``: when the second-moment estimate lags behind a sudden large
gradient, the update is clipped instead of exploding. torch has no StableAdamW, so it is
written here on top of AdamW's arithmetic.
"""

from __future__ import annotations

import math

import torch


class StableAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias1 = 1 - beta1**step
                bias2 = 1 - beta2**step
                v_hat = exp_avg_sq / bias2
                rms = (grad.square() / v_hat.clamp_min(group["eps"] ** 2)).mean().sqrt()
                lr = group["lr"] / max(1.0, float(rms))
                param.mul_(1 - lr * group["weight_decay"])
                param.addcdiv_(exp_avg / bias1, v_hat.sqrt().add_(group["eps"]), value=-lr)
        return loss


def warm_cosine_lr(iteration: int, *, base_lr: float, final_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup`` iterations, then cosine to ``final_lr``."""
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = min(1.0, (iteration - warmup) / max(1, total - warmup))
    return final_lr + 0.5 * (base_lr - final_lr) * (1 + math.cos(math.pi * progress))
