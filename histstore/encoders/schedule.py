"""Cosine learning-rate schedule with optional linear warmup, stepped per training step.

HistCode / AdCo use SGD with a cosine schedule. The whole schedule is in `state_dict()` (plain
numbers), so a resumed run sets exactly the learning rate an uninterrupted run would have.

lr(s) = base_lr * (s + 1) / warmup                                  for s < warmup
      = final_lr + (base_lr - final_lr) * (1 + cos(pi * p)) / 2     otherwise,
        p = (s - warmup) / max(1, total - warmup)
"""
from __future__ import annotations

import math

import torch


def cosine_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0) -> float:
    """Learning rate used for step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


class CosineSchedule:
    """Sets optimizer lr before each step: call `apply(step)` (or `step()` to advance)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        final_lr: float = 0.0,
    ):
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if not (base_lr > 0 and final_lr >= 0 and warmup_steps >= 0):
            raise ValueError("need base_lr > 0, final_lr >= 0, warmup_steps >= 0")
        self.optimizer = optimizer
        self.base_lr, self.total_steps = base_lr, total_steps
        self.warmup_steps, self.final_lr = warmup_steps, final_lr
        self.last_step = 0  # the next step to run
        self.apply(0)

    def lr_at(self, step: int) -> float:
        return cosine_lr(step, self.base_lr, self.total_steps, self.warmup_steps, self.final_lr)

    def apply(self, step: int) -> float:
        """Set every param group's lr for `step`; returns it."""
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def step(self) -> float:
        """Advance to the next step and set its lr."""
        return self.apply(self.last_step + 1)

    @property
    def lr(self) -> float:
        return self.lr_at(self.last_step)

    def state_dict(self) -> dict:
        return {
            "base_lr": self.base_lr, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "final_lr": self.final_lr,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.total_steps = float(state["base_lr"]), int(state["total_steps"])
        self.warmup_steps, self.final_lr = int(state["warmup_steps"]), float(state["final_lr"])
        self.apply(int(state["last_step"]))
