"""embed's inference model (slide_embed.prepare_model): weights stored in the autocast dtype
compute exactly what autocast computes from the float32 weights."""
import copy

import pytest
import torch

from histstore.embeddings.slide_embed import prepare_model
from histstore.encoders.backbones import preprocess
from tests.support.encoders import pretrained_like


@pytest.mark.parametrize("arch", ["resnet18", "resnet50-layer3"])
def test_weights_in_the_autocast_dtype_give_identical_embeddings(arch):
    model = pretrained_like(arch, seed=5)
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    kept = prepare_model(copy.deepcopy(model), cpu)
    cast = prepare_model(model, cpu, bf16)
    convs = [m for m in cast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.dtype == bf16 for m in convs)
    assert all(m.weight.dtype == torch.float32 for m in kept.modules() if isinstance(m, torch.nn.Conv2d))
    assert convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = preprocess(torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8))
    with torch.inference_mode(), torch.autocast("cpu", dtype=bf16):
        a, b = kept(x).float(), cast(x).float()
    assert torch.equal(a, b)
    assert next(model.parameters()).dtype == torch.float32  # the caller's encoder is untouched
