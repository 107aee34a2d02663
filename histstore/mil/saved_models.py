"""Loading a train run's MIL checkpoints for prediction, and picking one task's output of a
joint model.

A checkpoint (written by `histstore train`, one per fold and `final.pt` with `--final`) holds
`model_spec`, `state_dict`, `classes`, `target_scale`, `embedding_set`, `decision_threshold`
and the feature standardisation (mil.standardize.CHECKPOINT_KEY). Files are checked against
the sha256 the catalog recorded before they are read, and read with
`torch.load(weights_only=True)` (tensors and plain containers only: no code runs).

Joint models (one model for a gene panel) store ONE checkpoint per fold shared by the panel's
gene runs, with `"outputs"`: the gene task names in output order, and per-output
`decision_threshold` (and `target_scale`, `output_classes`) lists. A gene run's prediction
takes its task's output i (`select_output`):
- logits [B, G] (one value per output): a binary task's log-odds z becomes the logits
  [0, z] (softmax = sigmoid(z)), as single-task binary heads do (mil/models.py
  `_to_logits`); a regression task keeps z;
- logits [B, G * C] (C logits per output, output-major): output i's C logits;
- attention [T, G] (an attention branch per output): column i; [T] (shared): as is.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from histstore.errors import InvalidInput
from histstore.hashing import sha256_file
from histstore.mil.models import MILModel, build_model_from_spec
from histstore.mil.standardize import CHECKPOINT_KEY, FeatureStats


@dataclass
class SavedModel:
    """One checkpoint, loaded for prediction (eval mode, on the CPU until moved)."""

    label: str                        # "fold 0", "final"
    model: MILModel
    stats: FeatureStats | None        # standardisation applied before the model
    classes: list[str]
    target_scale: tuple[float, float] | None  # regression: value = z * sd + mean
    threshold: float | None           # binary: positive when probability >= this
    embedding_set: str | None
    output: int | None = None         # joint models: this task's output index
    n_joint: int | None = None        # joint models: number of outputs

    def to(self, device: torch.device) -> "SavedModel":
        self.model.to(device)
        return self


def load_saved_model(path: Path, sha256: str | None, label: str, task: str) -> SavedModel:
    """Check path against its recorded sha256, load it with weights_only=True, rebuild the
    model. task: the run's task, to pick a joint model's output. One-line errors."""
    if not path.is_file():
        raise InvalidInput(f"the {label} checkpoint {path.name} is missing ({path})",
                           hint="`histstore verify` lists what else is missing")
    if sha256 is None:
        raise InvalidInput(f"the {label} checkpoint {path.name} has no recorded sha256: it cannot be checked")
    if sha256_file(path) != sha256:
        raise InvalidInput(f"the {label} checkpoint {path} does not match the sha256 recorded when it was "
                           "written: refusing to load it", hint="`histstore verify` checks every checkpoint")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    outputs = ck.get("outputs")
    index = None
    if outputs is not None:
        outputs = [str(o) for o in outputs]
        if task not in outputs:
            raise InvalidInput(f"the {label} checkpoint's joint model has no output for task {task} "
                               f"(outputs: {', '.join(outputs)})")
        index = outputs.index(task)
    model = build_model_from_spec(ck["model_spec"])
    model.load_state_dict(ck["state_dict"])
    model.eval()
    stats = ck.get(CHECKPOINT_KEY)
    threshold = ck.get("decision_threshold")
    scale = ck.get("target_scale")
    if index is not None:
        if isinstance(threshold, (list, tuple)):
            threshold = threshold[index]
        if isinstance(scale, (list, tuple)) and scale and isinstance(scale[0], (list, tuple)):
            scale = scale[index]
    classes = ck.get("classes")
    if index is not None and ck.get("output_classes"):  # a joint model's genes may name classes apart
        classes = ck["output_classes"][index]
    return SavedModel(label, model, FeatureStats.from_checkpoint(stats) if stats else None,
                      [str(c) for c in classes or []],
                      (float(scale[0]), float(scale[1])) if scale else None,
                      None if threshold is None else float(threshold), ck.get("embedding_set"),
                      index, len(outputs) if outputs is not None else None)


def select_output(logits: Tensor, attention: Tensor | None, index: int | None, n_outputs: int | None,
                  regression: bool) -> tuple[Tensor, Tensor | None]:
    """One task's (logits [B, C], attention [T]) from a joint model's outputs (see the module
    docstring); a single-task model's (index None) unchanged."""
    if index is None:
        return logits, attention
    g = int(n_outputs)
    if attention is not None and attention.ndim == 2:
        if attention.shape[1] != g:
            raise InvalidInput(f"joint model attention has {attention.shape[1]} branches for {g} outputs")
        attention = attention[:, index]
    width = logits.shape[-1]
    if width == g:
        z = logits[:, index:index + 1]
        return (z if regression else torch.cat([torch.zeros_like(z), z], dim=-1)), attention
    if width % g == 0:
        c = width // g
        return logits.reshape(logits.shape[0], g, c)[:, index, :], attention
    raise InvalidInput(f"joint model gives {width} logits for {g} outputs: cannot pick output {index}")
