"""The other file layouts: .pt (+ coords h5), .npy (+ _coords.npy), TRIDENT attributes; pure checks."""
import numpy as np
import pytest

from histstore.interop import checks, import_features
from histstore.interop.formats import FileProblem, detect_format

from .conftest import q, write_h5


def _bag(seed, n=12, dim=8):
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(4) * 512, np.arange(3) * 512), -1).reshape(-1, 2)[:n]
    return rng.normal(size=(n, dim)).astype(np.float32), xy.astype(np.int64)


def test_pt_with_trident_patches_h5_and_npy_with_coords_npy(store, tmp_path):
    import torch

    pt_dir, patches, npy_dir = tmp_path / "pt", tmp_path / "patches", tmp_path / "npy"
    for p in (pt_dir, patches, npy_dir):
        p.mkdir()
    fa, xya = _bag(0)
    torch.save(torch.from_numpy(fa).to(torch.bfloat16), pt_dir / "SLIDE-A.pt")
    # TRIDENT: coords in <name>_patches.h5 with magnification attributes and patch_size_level0
    write_h5(patches / "SLIDE-A_patches.h5", np.zeros((1, 1)), xya,
             {"patch_size": 256, "patch_size_level0": 512, "level0_magnification": 40,
              "target_magnification": 20, "overlap": 0, "name": "SLIDE-A"}, features_name="unused")
    fb, xyb = _bag(1)
    torch.save({"features": torch.from_numpy(fb), "coords": torch.from_numpy(xyb)}, pt_dir / "SLIDE-B.pt")
    assert detect_format(pt_dir) == "pt"
    rep = import_features(store, pt_dir, name="pt", cohort="ext", coords_dir=patches, patch_size=512,
                          register_slides=True, case_id_mode="slide", show_progress=False)
    # SLIDE-A's file says patch_size 256 (at 20x): --patch-size 512 contradicts it
    assert [o.status for o in rep.outcomes] == ["failed", "imported"]
    assert "contradicts the file's patch_size 256" in rep.outcomes[0].message
    rep = import_features(store, pt_dir, name="pt", cohort="ext", coords_dir=patches, register_slides=True, case_id_mode="slide",
                          show_progress=False)
    a = rep.outcomes[0]
    assert a.status == "imported" and rep.count("skipped") == 1
    size_l0, tile_size, read_level, settings = q(
        store, "SELECT size_l0, tile_size, read_level, settings FROM tilings WHERE tiling_id = ?", a.tiling_id)[0]
    assert (size_l0, tile_size, read_level) == (512, 256, None)
    assert settings["attributes"]["target_magnification"] == 20 and settings["size_l0_exact"]
    from histstore.embeddings import arrays

    got = arrays.read_array(store.root / "embeddings.zarr" / "pt", "SLIDE-A")
    assert got.dtype == np.float32
    assert np.array_equal(got, torch.from_numpy(fa).to(torch.bfloat16).float().numpy())

    fc, xyc = _bag(2)
    np.save(npy_dir / "SLIDE-C.npy", fc.astype(np.float16))
    np.save(npy_dir / "SLIDE-C_coords.npy", xyc)
    assert detect_format(npy_dir) == "npy"
    rep = import_features(store, npy_dir, name="npy", cohort="ext", patch_size=512, register_slides=True, case_id_mode="slide",
                          show_progress=False)
    assert rep.ok and rep.dtype == "float16" and rep.source_format == "npy"
    assert np.array_equal(arrays.read_array(store.root / "embeddings.zarr" / "npy", "SLIDE-C"), fc.astype(np.float16))
    # no coords beside a .npy: that file fails with where it looked
    np.save(npy_dir / "SLIDE-D.npy", fc)
    rep = import_features(store, npy_dir, name="npy", cohort="ext", patch_size=512, register_slides=True, case_id_mode="slide",
                          show_progress=False)
    assert rep.failures[0].message.startswith("no coords found (looked for SLIDE-D_coords.npy")
    # registered slides: no pixels, TCGA-less ids are their own case (--case-id slide, recorded)
    rows = q(store, "SELECT slide_id, case_id, path, status, case_id_source FROM slides ORDER BY 1")
    assert rows == [(s, s, None, "registered", "slide") for s in ("SLIDE-A", "SLIDE-B", "SLIDE-C")]


def test_checks_are_pure_and_exact():
    f, xy = _bag(3)
    assert checks.check_arrays(f, xy.astype(np.float64), 8, 4096, 4096).dtype == np.int64
    with pytest.raises(FileProblem, match="not whole pixels"):
        checks.check_arrays(f, xy + 0.5, 8)
    with pytest.raises(FileProblem, match="outside the slide"):
        checks.check_arrays(f, xy - 1, 8)  # negative corners are refused even when the size is unknown
    # alignment: exact set equality only
    idx = np.arange(len(xy))
    perm = np.random.default_rng(0).permutation(len(xy))
    order, n = checks.align_to_tiles(xy[perm], idx, xy[:, 0], xy[:, 1])
    assert n == len(xy) and np.array_equal(xy[perm][order], xy)
    order, n = checks.align_to_tiles(xy[:-1], idx, xy[:, 0], xy[:, 1])
    assert order is None and n == len(xy) - 1
    order, n = checks.align_to_tiles(xy + 1, idx, xy[:, 0], xy[:, 1])
    assert order is None and n == 0
    # geometry
    g = checks.patch_geometry({"patch_size": 256, "patch_level": 2, "downsample": [4.0, 4.0]}, None, None, None)
    assert (g.size_l0, g.exact) == (1024, True)
    g = checks.patch_geometry({}, 256, 1, None)
    assert (g.size_l0, g.exact) == (256, False)
    assert checks.patch_geometry({}, 256, 1, (1.0, 2.0)).size_l0 == 512
    with pytest.raises(FileProblem, match="--patch-level 0 contradicts"):
        checks.patch_geometry({"patch_size": 256, "patch_level": 1}, None, 0, None)
