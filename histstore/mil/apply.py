"""Applying saved MIL models to bags: one bag per forward pass (as mil/evaluation.py does, so a
slide's result does not depend on which slides are predicted with it), every model of an
ensemble on the bag read once.

Each model applies its own feature standardisation, (x - mean) / std with its training
fold's statistics, to the float32 bag, exactly as training did (mil/standardize.py). Outputs:
class probabilities (softmax of the logits) or the value on the target's scale (z * sd +
mean); an ensemble's output is the mean over its models (probabilities, or values), and a
tile's attention the mean of the models' attention for it.

Binary decisions: `ensemble_threshold` is the mean of the models' decision thresholds (each
chosen on its own fold's validation or training bags; 0.5 when the run used 0.5), and a slide
is positive when its mean probability reaches it. The mean of the thresholds is the cut that
sits where the fold models' cuts sit on average, on the scale of the averaged probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from histstore.mil.bags import iter_batches
from histstore.mil.saved_models import SavedModel, select_output


@dataclass
class BagOutput:
    position: int                 # the bag's position in the source
    output: np.ndarray            # [C] probabilities, or [1] value (regression); ensemble mean
    attention: np.ndarray         # [N] float32, ensemble mean


def ensemble_threshold(models: Sequence[SavedModel]) -> float | None:
    """Mean of the models' binary decision thresholds (None when any model has none)."""
    cuts = [m.threshold for m in models]
    return None if not cuts or any(c is None for c in cuts) else float(np.mean(cuts))


def _output(model: SavedModel, logits: torch.Tensor, regression: bool) -> np.ndarray:
    z = logits.float().cpu()
    if regression:
        mu, sd = model.target_scale or (0.0, 1.0)
        return (z[:, 0] * sd + mu).numpy().astype(np.float64)
    return torch.softmax(z, dim=1)[0].numpy().astype(np.float64)


@torch.no_grad()
def apply_models(models: Sequence[SavedModel], bags, positions: Sequence[int],
                 regression: bool) -> Iterator[BagOutput]:
    """Forward bags `positions` of a bag source (mil/bag_source.py) through every model, one
    bag at a time; yields each bag's ensemble output as it is done."""
    positions = [int(p) for p in positions]
    for pos, (x, _) in zip(positions, iter_batches(bags, [[p] for p in positions])):
        outs, atts = [], []
        for m in models:
            xm = m.stats.apply(x) if m.stats is not None else x.float()
            out = m.model.forward_segments(xm, None, 1)
            logits, att = select_output(out.logits, out.attention, m.output, m.n_joint, regression)
            outs.append(_output(m, logits, regression))
            if att is not None:
                atts.append(att.float().cpu().numpy())
        attention = np.mean(atts, axis=0).astype(np.float32) if atts else np.zeros(0, np.float32)
        yield BagOutput(pos, np.mean(outs, axis=0), attention)
