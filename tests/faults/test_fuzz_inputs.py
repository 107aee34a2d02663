"""Malformed input never hurts the store: manifests, GDC sample sheets, label and fold-change
files and feature files that are truncated, mistyped, hold NaN/inf, duplicate rows, the wrong
dimension, zero rows or unusable ids get a one-line error (non-zero exit, no traceback) and
leave the store byte-for-byte as it was: every catalog table's rows and every file under
embeddings.zarr/, checkpoints/ and artifacts/ hashed before and after.

Two parts: a table of known-bad inputs (each must be refused), and seeded random mutations of
valid label and fold-change files (each must be either accepted, or refused with the store
unchanged).
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from histstore.store import Store

from .conftest import q

SLIDES = [f"TCGA-SY-000{c}-{t}Z-00-DX1" for c in (1, 2, 3) for t in ("01", "11")]
CASES = ["TCGA-SY-0001", "TCGA-SY-0002", "TCGA-SY-0003"]


def store_hash(store: Store) -> str:
    h = hashlib.sha256()
    with store.read() as conn:
        tables = [r[0] for r in conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
            "AND table_type = 'BASE TABLE' ORDER BY 1").all()]
        for t in tables:
            h.update(f"{t}:{conn.exec_driver_sql(f'SELECT * FROM {t} ORDER BY ALL').all()!r}".encode())
    for folder in (store.embeddings_path, store.checkpoints_dir, store.artifacts_dir):
        for dirpath, dirnames, files in sorted(os.walk(folder)):
            dirnames.sort()
            h.update(os.path.relpath(dirpath, store.root).encode())
            for f in sorted(files):
                h.update(f.encode())
                h.update((open(os.path.join(dirpath, f), "rb").read()))
    return h.hexdigest()


@pytest.fixture(scope="module")
def target(tmp_path_factory, stages):
    dest = tmp_path_factory.mktemp("fuzz")
    store = Store(shutil.copytree(stages["embedded"].root, dest / "store"))
    return store


def _cli(store, *args):
    from histstore.cli.main import main

    return CliRunner().invoke(main, ["--store", str(store.root), *map(str, args)], catch_exceptions=False)


def _refused(store, args, file_line: str | None = None):
    """Run the command; it must fail with one line per problem and change nothing."""
    before = store_hash(store)
    r = _cli(store, *args)
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    if file_line is None:
        assert len(lines) == 1, r.output
    else:  # features import: one "failed: FILE: why" line per file, then a summary
        assert sum(ln.startswith(f"failed: {file_line}") for ln in lines) == 1, r.output
        assert all(ln.startswith(("failed: ", "nothing imported")) for ln in lines), r.output
    assert store_hash(store) == before, r.output
    return r.output


# -- the table of known-bad inputs ---------------------------------------------------------------

def _manifests(d, cohort):
    a, b = cohort.slides[0].path, cohort.slides[1].path
    shutil.copy(a, d / "blockA.tiff")
    return {
        "no path column": "file,slide_id\na.tiff,a\n",
        "empty": "",
        "header only": "path,slide_id,case_id\n",
        "duplicate slide_id": f"path,slide_id,case_id\n{a},s1,p1\n{b},s1,p1\n",
        "slide_id ..": f"path,slide_id,case_id\n{a},..,p1\n",
        "slide_id .": f"path,slide_id,case_id\n{a},.,p1\n",
        "slide_id with /": f"path,slide_id,case_id\n{a},a/b,p1\n",
        "slide_id with backslash": f"path,slide_id,case_id\n{a},a\\b,p1\n",
        "slide_id with control": f"path,slide_id,case_id\n{a},\"a\x01b\",p1\n",
        "slide_id too long": f"path,slide_id,case_id\n{a},{'x' * 300},p1\n",
        "case_id ..": f"path,slide_id,case_id\n{a},s1,..\n",
        "no case ids (patient leakage)": "path\nblockA.tiff\n",
        "mixed case ids": f"path,slide_id,case_id\n{a},s1,p1\n{b},s2,\n",
        "truncated quote": "path,slide_id\n\"abc",
        "binary garbage": bytes(random.Random(1).getrandbits(8) for _ in range(300)),
        "NUL in path": f"path,slide_id,case_id\n{a}\x00x,s1,p1\n",
    }


def _sheets(d, cohort):
    head = "File ID\tFile Name\tProject ID\tCase ID\tSample ID\tSample Type\n"
    name = "TCGA-AB-1234-01Z-00-DX1.abc.tiff"
    shutil.copy(cohort.slides[0].path, d / name)
    return {
        "sheet empty File Name": head + "u1\t\tTCGA-LUAD\tTCGA-AB-1234\tTCGA-AB-1234-01Z\tPrimary Tumor\n",
        "sheet Case ID ../x": head + f"u1\t{name}\tTCGA-LUAD\t../x\tTCGA-AB-1234-01Z\tPrimary Tumor\n",
        "sheet duplicate file": head + f"u1\t{name}\tP\tTCGA-AB-1234\tS\tPrimary Tumor\n" * 2,
        "sheet truncated": head[:30],
    }


LABELS = {
    "unknown slide": "slide_id,tumor\nghost,tumor\n",
    "empty value": f"slide_id,tumor\n{SLIDES[0]},\n",
    "NaN value": f"slide_id,tumor\n{SLIDES[0]},nan\n",
    "inf value": f"slide_id,tumor\n{SLIDES[0]},inf\n",
    "conflicting duplicates": f"slide_id,tumor\n{SLIDES[0]},tumor\n{SLIDES[0]},normal\n",
    "bad slide id": "slide_id,tumor\n..,tumor\n",
    "no slide_id column": "slide,tumor\nx,tumor\n",
    "truncated": "slide_id,tu",
}

FOLD_CHANGES = {
    "non-numeric": f"case_id,gene,log2_fold_change\n{CASES[0]},TP53,high\n",
    "NaN": f"case_id,gene,log2_fold_change\n{CASES[0]},TP53,NaN\n",
    "inf": f"case_id,gene,log2_fold_change\n{CASES[0]},TP53,inf\n",
    "p_adj out of range": f"case_id,gene,log2_fold_change,p_adj\n{CASES[0]},TP53,1.0,2\n",
    "unknown case": "case_id,gene,log2_fold_change\nTCGA-XX-9999,TP53,1.0\n",
    "bad case id": "case_id,gene,log2_fold_change\na/b,TP53,1.0\n",
    "conflicting duplicates": f"case_id,gene,log2_fold_change\n{CASES[0]},TP53,1\n{CASES[0]},TP53,2\n",
    "empty gene": f"case_id,gene,log2_fold_change\n{CASES[0]},,1\n",
    "zero rows": "case_id,gene,log2_fold_change\n",
}


def _write(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_bad_manifests_and_sample_sheets(target, cohort, tmp_path):
    for name, content in {**_manifests(tmp_path, cohort), **_sheets(tmp_path, cohort)}.items():
        f = _write(tmp_path / f"{name.replace(' ', '_').replace('/', '_')}.tsv", content)
        out = _refused(target, ["ingest", f, "--mpp", "1", "--tile-size", "64"])
        if name == "no case ids (patient leakage)":
            assert "leakage" in out


def test_bad_label_and_fold_change_files(target, tmp_path):
    for name, content in LABELS.items():
        f = _write(tmp_path / f"labels_{name.replace(' ', '_')}.csv", content)
        _refused(target, ["labels", "import", f, "--task", "tumor"])
    _refused(target, ["labels", "import", tmp_path / "labels_unknown_slide.csv", "--task", ".."])
    _refused(target, ["labels", "import", tmp_path / "labels_unknown_slide.csv", "--task", "t", "--level", "case"])
    for name, content in FOLD_CHANGES.items():
        f = _write(tmp_path / f"fc_{name.replace(' ', '_')}.csv", content)
        _refused(target, ["foldchanges", "import", f, "--source", "s"])
    wide = _write(tmp_path / "wide.csv", f"case_id,TP53\n{CASES[0]},1\n{CASES[0]},2\n")
    _refused(target, ["foldchanges", "import", wide, "--source", "s", "--format", "wide"])
    ratio = _write(tmp_path / "ratio.csv", f"case_id,gene,fold_change\n{CASES[0]},TP53,0\n")
    _refused(target, ["foldchanges", "import", ratio, "--source", "s", "--value", "ratio"])


def _h5(path, features, coords, attrs=None):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        if coords is not None:
            c = f.create_dataset("coords", data=np.asarray(coords))
            for k, v in (attrs or {"patch_size": 128, "patch_level": 0}).items():
                c.attrs[k] = v
    return path


def test_bad_feature_files(target, tmp_path):
    sid = SLIDES[0]
    xy = np.array(q(target, "SELECT x, y FROM tiles WHERE slide_id = ? ORDER BY idx", sid), np.int64)
    n = len(xy)
    good = np.random.default_rng(0).normal(size=(n, 512)).astype(np.float32)

    def case(name, features, coords, attrs=None):
        d = tmp_path / name
        d.mkdir()
        return _h5(d / f"{sid}.h5", features, coords, attrs), d

    nan, inf = good.copy(), good.copy()
    nan[1, 2], inf[0, 0] = np.nan, np.inf
    dup = xy.copy()
    dup[1] = dup[0]
    cases = [case("nan", nan, xy), case("inf", inf, xy), case("duplicate-rows", good, dup),
             case("one-dim", good[:, 0], xy), case("zero-rows", good[:0], xy[:0]),
             case("string-dtype", np.array([b"x"] * n), xy), case("coords-short", good, xy[:-1]),
             case("no-coords", good, None), case("outside", good, xy + 10_000_000)]
    path, d = case("truncated", good, xy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cases.append((path, d))
    for path, d in cases:
        _refused(target, ["features", "import", d, "--name", "f", "--cohort", "f"], file_line=path.name)
    # ids from file names and mapping files
    for bad_name in ("...h5", "a\tb.h5"):
        d = tmp_path / f"name{len(bad_name)}"
        d.mkdir()
        _h5(d / bad_name, good, xy)
        _refused(target, ["features", "import", d, "--name", "f", "--cohort", "f"])
    d = tmp_path / "mapped"
    d.mkdir()
    _h5(d / "x.h5", good, xy)
    for content in ("file,slide_id\nx.h5,../up\n", "file,slide_id\nmissing.h5,s\n", "file,slide_id\nx.h5,\n"):
        m = _write(tmp_path / "map.csv", content)
        _refused(target, ["features", "import", d, "--name", "f", "--cohort", "f", "--mapping", m])
    _refused(target, ["features", "import", d, "--name", "..", "--cohort", "f"])


# -- seeded random mutations ---------------------------------------------------------------------

def _mutate(rng: random.Random, text: str) -> str:
    ops = [
        lambda t: t[: rng.randrange(len(t) + 1)],                                      # truncate
        lambda t: (lambda i: t[:i] + rng.choice(["\x00", "\t", "..", "/", ",", '"', "\n", " "]) + t[i:])(
            rng.randrange(len(t) + 1)),                                                # insert
        lambda t: "\n".join(ln for ln in t.splitlines() if rng.random() > 0.3) + "\n",  # drop lines
        lambda t: t + rng.choice(t.splitlines()[1:] or [""]) + "\n",                   # duplicate a row
        lambda t: t.replace(rng.choice(["1.5", "tumor", "TP53", "TCGA-SY-0001"]),
                            rng.choice(["nan", "inf", "", "x", "-1e999", "../a", " pad "])),
    ]
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(ops)(text)
    return text


def test_random_mutations_are_accepted_or_refused_cleanly(target, tmp_path):
    rng = random.Random(13)
    labels = "slide_id,tumor\n" + "".join(f"{s},{'tumor' if '-01Z-' in s else 'normal'}\n" for s in SLIDES)
    fcs = "case_id,gene,log2_fold_change,p_adj\n" + "".join(f"{c},TP53,1.5,0.01\n" for c in CASES)
    outcomes = {"accepted": 0, "refused": 0}
    for i in range(24):
        kind = "labels" if i % 2 else "fc"
        f = _write(tmp_path / f"m{i}.csv", _mutate(rng, labels if kind == "labels" else fcs))
        args = (["labels", "import", f, "--task", "fuzz"] if kind == "labels"
                else ["foldchanges", "import", f, "--source", "fuzz"])
        before = store_hash(target)
        r = _cli(target, *args)
        assert "Traceback" not in r.output
        if r.exit_code == 0:
            outcomes["accepted"] += 1
            continue
        outcomes["refused"] += 1
        assert len(r.output.strip().splitlines()) == 1, (f.read_text(), r.output)
        assert store_hash(target) == before, (f.read_text(), r.output)
    assert outcomes["refused"] >= 6  # the mutations do hit the checks
