"""Macenko stain normalisation: reference tiles barely change, stain-shifted copies converge,
blank / degenerate tiles never give NaN or crash."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from histstore.embeddings.stain import HE_REF, MAX_C_REF, macenko_normalize
from tests.encoders.synth_tiles import concentrations, perturbed_stains, render


def _at_reference(seed, size=64):
    c = concentrations(size, seed)
    p99 = np.percentile(c.reshape(2, -1), 99, axis=1)
    return render(c * (MAX_C_REF.numpy() / p99).reshape(2, 1, 1), seed=seed)


def test_reference_constants_are_the_standard_ones():
    torch.testing.assert_close(HE_REF, torch.tensor([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]))
    torch.testing.assert_close(MAX_C_REF, torch.tensor([1.9705, 1.0308]))


def test_tile_at_reference_changes_little():
    tiles = torch.from_numpy(np.stack([_at_reference(s) for s in range(4)]))
    out, ok = macenko_normalize(tiles, return_mask=True)
    assert ok.all() and out.dtype == torch.uint8 and out.shape == tiles.shape
    diff = (out.float() - tiles.float()).abs()
    assert diff.mean() < 6 and diff.max() <= 16


@pytest.mark.parametrize("seed", range(3))
def test_stain_shifted_copies_become_close(seed):
    c = concentrations(64, seed)
    a = render(c, perturbed_stains(10 + seed), seed=1)
    b = render(c * np.array([1.4, 0.7]).reshape(2, 1, 1), perturbed_stains(20 + seed), seed=2)
    tiles = torch.from_numpy(np.stack([a, b])).float()
    out, ok = macenko_normalize(tiles.to(torch.uint8), return_mask=True)
    assert ok.all()
    before = (tiles[0] - tiles[1]).abs().mean()
    after = (out[0].float() - out[1].float()).abs().mean()
    assert before > 8 and after < 0.3 * before and after < 4


def test_batch_is_per_tile_independent():
    tiles = torch.from_numpy(np.stack([_at_reference(0), render(concentrations(64, 5), perturbed_stains(3))]))
    both = macenko_normalize(tiles)
    assert torch.equal(both[0], macenko_normalize(tiles[:1])[0])
    assert torch.equal(both[1], macenko_normalize(tiles[1:])[0])


def test_blank_and_degenerate_tiles_pass_through_without_nan():
    white = torch.full((64, 64, 3), 255, dtype=torch.uint8)
    near_white = torch.full((64, 64, 3), 238, dtype=torch.uint8)
    near_white[:3, :3] = torch.tensor([120, 60, 150], dtype=torch.uint8)  # a speck of tissue
    black = torch.zeros((64, 64, 3), dtype=torch.uint8)
    grey = torch.full((64, 64, 3), 128, dtype=torch.uint8)  # one "stain" direction only
    tissue = torch.from_numpy(_at_reference(1))
    tiles = torch.stack([white, near_white, black, grey, tissue])
    out, ok = macenko_normalize(tiles, return_mask=True)
    assert ok.tolist() == [False, False, False, False, True]
    assert torch.equal(out[:4], tiles[:4])  # identity fallback
    assert out.dtype == torch.uint8


def test_random_noise_and_empty_batch_do_not_crash():
    noise = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = macenko_normalize(noise)
    assert out.shape == noise.shape and out.dtype == torch.uint8
    assert macenko_normalize(torch.zeros(0, 8, 8, 3, dtype=torch.uint8)).shape == (0, 8, 8, 3)
    with pytest.raises(ValueError):
        macenko_normalize(torch.zeros(1, 8, 8, 3))


def test_subsampled_fit_on_large_tiles_matches_full_fit():
    tile = torch.from_numpy(render(concentrations(128, 2), perturbed_stains(4)))[None]
    full = macenko_normalize(tile, max_fit_pixels=128 * 128).float()
    sub = macenko_normalize(tile, max_fit_pixels=4096).float()
    assert (full - sub).abs().mean() < 2


@pytest.mark.parametrize("size, kw", [(128, {}), (64, {}), (128, {"max_fit_pixels": 128 * 128}),
                                      (100, {"alpha": 5.0}), (16, {"min_tissue_pixels": 1, "min_tissue_fraction": 0.0})])
def test_fast_formulation_equals_the_plain_one(size, kw):
    """The table lookup, topk percentiles and in-place re-rendering change no value."""
    from tests.encoders.macenko_reference import plain_macenko

    g = torch.Generator().manual_seed(size)
    he_like = [render(concentrations(size, s), perturbed_stains(s), seed=s) for s in range(6)]
    tiles = torch.cat([torch.from_numpy(np.stack(he_like)),
                       torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=g),
                       torch.full((1, size, size, 3), 255, dtype=torch.uint8),  # blank: identity
                       torch.full((1, size, size, 3), 128, dtype=torch.uint8)])  # degenerate: identity
    out, ok = macenko_normalize(tiles, return_mask=True, **kw)
    ref, ref_ok = plain_macenko(tiles, return_mask=True, **kw)
    assert torch.equal(ok, ref_ok) and ok[:6].all() and not ok[-2:].any()
    assert torch.equal(out, ref)
