"""The pretraining methods by name: the one registry that checkpoints and `histstore pretrain`
use to turn a method name into its model class and config class."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from histstore.encoders.adco import AdCo, AdCoConfig
from histstore.encoders.checkpoint import config_from_dict
from histstore.encoders.simclr import SimCLR, SimCLRConfig
from histstore.errors import InvalidInput

# method name (the model class's `method`, recorded in checkpoints) -> (model, config)
METHODS: dict[str, tuple[type[torch.nn.Module], type]] = {
    AdCo.method: (AdCo, AdCoConfig),
    SimCLR.method: (SimCLR, SimCLRConfig),
}


def method_classes(method: str) -> tuple[type[torch.nn.Module], type]:
    """(model class, config class) of a method name; InvalidInput for an unknown one."""
    if method not in METHODS:
        raise InvalidInput(f"unknown pretraining method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]


def model_from_checkpoint(ckpt: Mapping) -> torch.nn.Module:
    """Rebuild the AdCo / SimCLR model (config from the checkpoint) and load its state."""
    cls, cfg_cls = method_classes(ckpt["method"])
    config = config_from_dict(cfg_cls, ckpt["model_config"])
    model = cls(config)
    model.load_state_dict(ckpt["model"])
    return model
