"""Reading tile features written by other extractors (CLAM, TRIDENT, foundation-model scripts).

One file per slide. What is read (see docs/interop.md):

- `h5` (CLAM `extract_features_fp.py`, TRIDENT `extract_patch_features`, histstore's own export):
  dataset `features` [N, D] (a leading singleton axis [1, N, D] is squeezed) and dataset
  `coords` [N, 2] = level-0 top-left corners (x, y). Attributes are read from the file root, the
  `features` dataset and the `coords` dataset (coords win on a clash): CLAM writes
  `patch_size`, `patch_level`, `downsample`, `level_dim`...; TRIDENT writes `patch_size`,
  `patch_size_level0`, `level0_magnification`, `target_magnification`, `overlap`.
- `pt` (CLAM `pt_files/`, TRIDENT `--saveas pt`): a tensor [N, D] (or a dict with `features`
  and optionally `coords`), loaded with `torch.load(weights_only=True)`; coords come from a
  companion file (`find_coords`).
- `npy`: an array [N, D]; coords from a companion file.

Everything here is a pure function of the file (no catalog, no torch at import).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("h5", "pt", "npy")
H5_SUFFIXES = (".h5", ".hdf5")
COORDS_NPY_SUFFIXES = ("_coords.npy", ".coords.npy")


class FileProblem(Exception):
    """A per-file problem: the message is shown as `<file name>: <message>` and the other files
    are still imported."""


@dataclass
class FeatureFile:
    """One slide's foreign features. features: [N, D]; coords: [N, 2] int64 level-0 (x, y)."""
    path: Path
    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_path: Path | None = None


@dataclass(frozen=True)
class Probe:
    """Shape and dtype of a file's features, read without loading them (h5, npy)."""
    n_rows: int
    dim: int
    dtype: str


# -- discovery ------------------------------------------------------------------------------

def _is_coords_npy(p: Path) -> bool:
    return p.name.endswith(COORDS_NPY_SUFFIXES)


def _candidates(directory: Path, fmt: str) -> list[Path]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    if fmt == "h5":
        return [p for p in files if p.suffix.lower() in H5_SUFFIXES]
    if fmt == "pt":
        return [p for p in files if p.suffix.lower() == ".pt"]
    return [p for p in files if p.suffix.lower() == ".npy" and not _is_coords_npy(p)]


def detect_format(directory: Path) -> str | None:
    """pt when .pt files are present (h5 files beside them hold coords), else npy when feature
    .npy files are, else h5 when .h5 files are; None when the folder has none of them."""
    have = {fmt: bool(_candidates(directory, fmt)) for fmt in FORMATS}
    if have["pt"] and have["npy"]:
        return "ambiguous"
    for fmt in ("pt", "npy", "h5"):
        if have[fmt]:
            return fmt
    return None


def list_feature_files(directory: Path, fmt: str) -> list[Path]:
    return _candidates(directory, fmt)


def file_stem(path: Path) -> str:
    """The name without the format suffix (`a.b.h5` -> `a.b`)."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


# -- attributes -----------------------------------------------------------------------------

def jsonable(value: Any) -> Any:
    """h5 attribute values (numpy scalars/arrays, bytes) -> JSON-safe Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()] if value.dtype.kind in "SO" else value.tolist()
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _attrs(obj) -> dict[str, Any]:
    out = {}
    for k, v in obj.attrs.items():
        v = jsonable(v)
        if isinstance(v, str) and v[:1] in "{[":  # TRIDENT stores dicts as JSON text
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[str(k)] = v
    return out


# -- readers --------------------------------------------------------------------------------

def _h5_features(f, path: Path):
    if "features" not in f:
        keys = ", ".join(sorted(f.keys())) or "none"
        raise FileProblem(f"no 'features' dataset (datasets: {keys})")
    return f["features"]


def probe(path: Path, fmt: str) -> Probe | None:
    """Shape/dtype without loading, or None when that needs a full read (pt). Raises FileProblem."""
    try:
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                d = _h5_features(f, path)
                shape, dtype = d.shape, d.dtype
        elif fmt == "npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, dtype = arr.shape, arr.dtype
        else:
            return None
    except FileProblem:
        raise
    except Exception as exc:
        raise FileProblem(f"unreadable ({_one_line(exc)})") from None
    shape = _squeeze_shape(shape)
    if len(shape) != 2:
        raise FileProblem(f"features must be [N, D], got shape {list(shape)}")
    return Probe(int(shape[0]), int(shape[1]), np.dtype(dtype).name)


def _squeeze_shape(shape) -> tuple:
    shape = tuple(shape)
    return shape[1:] if len(shape) == 3 and shape[0] == 1 else shape


def read_h5(path: Path) -> FeatureFile:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            feats = _h5_features(f, path)[...]
            if "coords" not in f:
                raise FileProblem("no 'coords' dataset (level-0 top-left corners [N, 2])")
            coords = f["coords"][...]
            attrs = {**_attrs(f), **_attrs(f["features"]), **_attrs(f["coords"])}
    except FileProblem:
        raise
    except Exception as exc:
        raise FileProblem(f"unreadable ({_one_line(exc)})") from None
    return FeatureFile(path, feats, coords, attrs, path)


def read_coords_file(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Coords (+ attributes) from a companion file: an h5 with `coords`, or a .npy [N, 2]."""
    try:
        if path.suffix.lower() in H5_SUFFIXES:
            import h5py

            with h5py.File(path, "r") as f:
                if "coords" not in f:
                    raise FileProblem(f"coords file {path.name} has no 'coords' dataset")
                return f["coords"][...], {**_attrs(f), **_attrs(f["coords"])}
        return np.load(path, allow_pickle=False), {}
    except FileProblem:
        raise
    except Exception as exc:
        raise FileProblem(f"coords file {path.name} is unreadable ({_one_line(exc)})") from None


def coords_candidates(path: Path, coords_dir: Path | None) -> list[Path]:
    """Where a .pt/.npy file's coords may be, in the order tried."""
    stem = file_stem(path)
    here = path.parent
    dirs = ([coords_dir] if coords_dir is not None else []) + [here]
    names = [f"{stem}_coords.npy", f"{stem}.coords.npy", f"{stem}.h5", f"{stem}_patches.h5"]
    out = [d / n for d in dirs for n in names]
    # CLAM's layout: FEAT_DIR/pt_files/<slide>.pt beside FEAT_DIR/h5_files/<slide>.h5
    out.append(here.parent / "h5_files" / f"{stem}.h5")
    return list(dict.fromkeys(out))


def find_coords(path: Path, coords_dir: Path | None) -> Path:
    for cand in coords_candidates(path, coords_dir):
        if cand.is_file() and cand != path:
            return cand
    tried = ", ".join(p.name for p in coords_candidates(path, coords_dir)[:4])
    raise FileProblem(f"no coords found (looked for {tried}"
                      + (f" in {coords_dir} and beside the file" if coords_dir else " beside the file")
                      + ", and ../h5_files/)")


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor):
        return np.asarray(t)
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        t = t.float()
    return t.numpy()


def read_pt(path: Path, coords_dir: Path | None) -> FeatureFile:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FileProblem(f"unreadable ({_one_line(exc)})") from None
    coords, attrs, cpath = None, {}, None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise FileProblem(f"a dict without 'features' (keys: {', '.join(map(str, obj))})")
        feats = _torch_to_numpy(obj["features"])
        if obj.get("coords") is not None:
            coords, cpath = _torch_to_numpy(obj["coords"]), path
    elif isinstance(obj, torch.Tensor):
        feats = _torch_to_numpy(obj)
    else:
        raise FileProblem(f"holds a {type(obj).__name__}, not a tensor [N, D]")
    if coords is None:
        cpath = find_coords(path, coords_dir)
        coords, attrs = read_coords_file(cpath)
    return FeatureFile(path, feats, coords, attrs, cpath)


def read_npy(path: Path, coords_dir: Path | None) -> FeatureFile:
    try:
        feats = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise FileProblem(f"unreadable ({_one_line(exc)})") from None
    cpath = find_coords(path, coords_dir)
    coords, attrs = read_coords_file(cpath)
    return FeatureFile(path, feats, coords, attrs, cpath)


def read_feature_file(path: Path, fmt: str, coords_dir: Path | None = None) -> FeatureFile:
    """Read one file whole. Raises FileProblem (never anything else) on bad input."""
    try:
        if fmt == "h5":
            ff = read_h5(path)
        elif fmt == "pt":
            ff = read_pt(path, coords_dir)
        else:
            ff = read_npy(path, coords_dir)
    except FileProblem:
        raise
    except Exception as exc:  # a corrupt file can make any library raise anything
        raise FileProblem(f"unreadable ({_one_line(exc)})") from None
    ff.features = np.asarray(ff.features)
    ff.coords = np.asarray(ff.coords)
    if ff.features.ndim == 3 and ff.features.shape[0] == 1:
        ff.features = ff.features[0]
    if ff.coords.ndim == 3 and ff.coords.shape[0] == 1:
        ff.coords = ff.coords[0]
    return ff


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
