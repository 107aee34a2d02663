"""Settings of one MIL training run (all folds share them): `TrainConfig`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

from histstore.errors import InvalidInput
from histstore.mil.bags import DTYPES
from histstore.mil.models import check_model_settings
from histstore.mil.thresholds import RULES as THRESHOLD_RULES

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (all folds share them). `model_cfg` goes to
    `build_model` (e.g. {"dropout": 0.25})."""

    model: str = "gated-attention"
    model_cfg: Mapping[str, Any] = field(default_factory=dict)
    task: Task = "classification"
    n_classes: int | None = None        # default: max(target) + 1
    epochs: int = 50                    # at most
    patience: int | None = 10           # epochs without validation improvement; None: off
    min_epochs: int = 1
    lr: float = 1e-4                    # HistCode
    weight_decay: float = 1e-5          # HistCode
    bags_per_step: int = 1              # HistCode: one slide per step
    # how a step of several bags runs: one concatenated forward ("concat", fastest on a GPU),
    # or one bag at a time with gradient accumulation ("accumulate", for a CPU where small
    # per-bag tensors stay in cache; bench_mil times both); same gradient. auto: by device.
    batch_mode: Literal["auto", "concat", "accumulate"] = "auto"
    class_weight: Literal["none", "balanced"] = "none"
    # the epoch kept: best validation loss, best validation ROC-AUC, or the last one (a fixed
    # schedule: validation bags too few to choose an epoch reliably only report)
    select_on: Literal["loss", "auc", "last"] = "loss"
    standardize_targets: bool = True    # regression: fit on z-scored train targets
    # z-score every feature with the training bags' tile statistics (mil/standardize.py)
    standardize_features: bool = True
    # binary tasks: where the decision threshold comes from (mil/thresholds.py): "0.5",
    # "val" (the validation bags) or "train" (the training bags)
    decision_threshold: str = "0.5"
    amp: bool = False                   # bf16 autocast (CUDA only)
    feature_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # unused since evaluation goes bag by bag (mil/evaluation.py); kept so old settings load
    eval_tiles: int = 262_144

    def __post_init__(self):
        check_model_settings(self.model, dict(self.model_cfg))
        if self.task not in ("classification", "regression"):
            raise InvalidInput(f"unknown task {self.task!r}: classification or regression")
        for name in ("epochs", "min_epochs", "bags_per_step", "eval_tiles"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {v!r}")
        if self.patience is not None and (not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise InvalidInput(f"patience must be a positive integer or None, "
                               f"got {self.patience!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise InvalidInput("lr must be > 0 and weight_decay >= 0")
        if self.class_weight not in ("none", "balanced"):
            raise InvalidInput(f"class_weight must be none or balanced, "
                               f"got {self.class_weight!r}")
        if self.batch_mode not in ("auto", "concat", "accumulate"):
            raise InvalidInput(f"batch_mode must be auto, concat or accumulate, "
                               f"got {self.batch_mode!r}")
        if self.select_on not in ("loss", "auc", "last"):
            raise InvalidInput(f"select_on must be loss, auc or last, got {self.select_on!r}")
        if self.select_on == "auc" and self.task == "regression":
            raise InvalidInput("select_on=auc needs a classification task")
        if self.decision_threshold not in THRESHOLD_RULES:
            raise InvalidInput(f"decision_threshold must be one of {', '.join(THRESHOLD_RULES)}, "
                               f"got {self.decision_threshold!r}")
        if self.decision_threshold != "0.5" and self.task == "regression":
            raise InvalidInput("a decision threshold needs a classification task")
        if self.feature_dtype not in DTYPES:
            raise InvalidInput(f"feature_dtype must be one of {', '.join(DTYPES)}")
        if self.n_classes is not None and self.n_classes < 2:
            raise InvalidInput("n_classes must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_cfg"] = dict(self.model_cfg)
        return d
