"""The difficulty controls of synthetic cohorts: witness rate, tumour contrast, per-site stain
and scanner, several slides per case, gene signals in their own subregions; all recorded in
truth.json and reachable from `histstore synth`."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from histstore.errors import InvalidInput
from histstore.wsi.synth import GENES, make_slide_model, synth_cohort
from histstore.wsi.synth.marks import MARKS
from histstore.wsi.synth.stain import make_sites


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _dark_fraction(img):
    return float((img.astype(np.float32).mean(-1) < 110).mean())


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_witness_rate_is_the_tumour_share_of_the_tissue(rate):
    for seed in range(3):
        m = make_slide_model(2048, 2048, 0.5, seed, True, rate)
        tissue, tum = m.lowres_masks(4)
        assert tum.sum() / tissue.sum() == pytest.approx(rate, rel=0.25)
        if rate <= 0.01:
            assert len(m.regions) == 1  # one nest, not three slivers


def _inside_outside(m, size=160):
    """A window well inside the (single) planted region, and windows of tissue outside it."""
    cx, cy = m.regions[0].mean(0).astype(int)
    inside = m.render(cx - size // 2, cy - size // 2, size, size)
    tissue, tum = m.lowres_masks(16)
    ys, xs = np.argwhere(tissue & ~tum)[::97][:6].T * 16
    outside = [m.render(int(x), int(y), size, size) for y, x in zip(ys, xs)]
    return inside, outside


def test_contrast_scales_how_different_tumour_looks():
    """contrast 0: the planted region looks like stroma; 1: far darker; in between, in order."""
    gaps = []
    for c in (0.0, 0.3, 1.0):
        m = make_slide_model(1536, 1536, 0.5, 4, True, 0.3, 1, contrast=c)
        inside, outside = _inside_outside(m)
        d_out = [_dark_fraction(o) for o in outside if _dark_fraction(o) > 0]
        gaps.append(_dark_fraction(inside) / np.mean(d_out))
    assert gaps[0] == pytest.approx(1.0, abs=0.35)
    assert gaps[0] < gaps[1] < gaps[2] and gaps[2] > 3


def test_sites_stain_and_scan_their_slides_alike():
    sites = make_sites(3, 1.0, seed=2)
    assert len({s.code for s in sites}) == 3 and not any(s.is_reference for s in sites)
    assert make_sites(1, 1.0, seed=2)[0].is_reference
    assert all(s.is_reference for s in make_sites(3, 0.0, seed=2))  # no variation: reference stain
    # the same tissue stained at three sites: mean colours differ between sites
    means = []
    for s in sites:
        m = make_slide_model(1024, 1024, 0.5, 7, False, stain=s)
        means.append(m.render(256, 256, 512, 512).reshape(-1, 3).mean(0))
    spread = max(np.abs(a - b).max() for a in means for b in means)
    assert spread > 8


def test_scanner_blur_keeps_windows_consistent_and_softens():
    site = make_sites(2, 1.0, seed=0)[0]
    blurred = type(site)(site.code, blur_um=0.8)
    m = make_slide_model(768, 768, 0.5, 9, True, 0.4, stain=blurred)
    whole = m.render(0, 0, 768, 768).astype(int)
    left, right = m.render(0, 0, 300, 768), m.render(300, 0, 468, 768)
    assert np.abs(np.concatenate([left, right], 1) - whole).max() <= 2
    sharp = make_slide_model(768, 768, 0.5, 9, True, 0.4).render(0, 0, 768, 768).astype(float)
    grad = lambda a: np.abs(np.diff(a.mean(-1), axis=1)).mean()  # noqa: E731
    assert grad(whole.astype(float)) < 0.8 * grad(sharp)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return synth_cohort(tmp_path_factory.mktemp("hard"), n_slides=24, seed=5, size=(384, 384),
                        slides_per_case=(1, 3), witness_rate=0.3, contrast=0.5, sites=3,
                        gene_regions=True)


def test_several_slides_per_case_and_sites_by_case(hard):
    truth = hard.truth()
    assert truth["difficulty"] == {"witness_rate": [0.3, 0.3], "contrast": 0.5, "sites": 3,
                                   "stain_variation": 1.0, "slides_per_case": [1, 3], "gene_regions": True,
                                   "separate_genes": False}
    assert set(truth["sites"]) == {"SA", "SB", "SC"}
    per_case: dict[str, list] = {}
    for s in hard.slides:
        per_case.setdefault(s.case_id, []).append(s)
        assert s.slide_id[:12] == s.case_id and s.slide_id[5:7] == s.site
        assert s.slide_id[13:15] == ("01" if s.tumor else "11")
    sizes = [len(v) for v in per_case.values()]
    assert min(sizes) >= 1 and max(sizes) <= 3 and len(set(sizes)) > 1
    assert all(len({s.site for s in v}) == 1 for v in per_case.values())  # one site per case
    assert len({s.slide_id for s in hard.slides}) == len(hard.slides)
    assert 0.3 <= np.mean([s.tumor for s in hard.slides]) <= 0.7  # tumour and normal balanced
    sites = {r["slide_id"]: r["site"] for r in _rows(hard.sites)}
    assert sites == {s: t["site"] for s, t in truth["slides"].items()}
    assert all(truth["cases"][c]["n_slides"] == n for c, n in zip(per_case, sizes))


def test_gene_signals_live_in_their_own_subregions(hard):
    truth = hard.truth()
    fc = {(r["case_id"], r["gene"]): float(r["log2_fold_change"]) for r in _rows(hard.foldchanges)}
    strength = {g: s for g, s, _ in GENES}
    for case, info in truth["cases"].items():
        for g, st, _ in GENES:
            if st == "strong":  # expressed <-> differentially expressed (|log2FC| >= 1)
                assert (g in info["expressed"]) == (abs(fc[case, g]) >= 1), (case, g)
            if st == "none":
                assert g not in info["expressed"]
    for sid, t in truth["slides"].items():
        expressed = set(truth["cases"][t["case_id"]]["expressed"])
        if t["tumor"]:
            assert set(t.get("gene_regions", {})) == expressed
        else:
            assert "gene_regions" not in t
    assert truth["genes"]["TP53"]["mark"] == MARKS["TP53"].to_dict()
    assert all(strength[g] != "none" for g in MARKS)


def test_a_gene_mark_shows_inside_its_subregion_only():
    """TP53's mark (giant pleomorphic nuclei) and CDKN2A's (clear cells) change the tumour's
    look inside their subregion, not elsewhere in the tumour."""
    for gene, feature, direction in (("TP53", _dark_fraction, 1),
                                     ("CDKN2A", lambda a: float(a.astype(np.float32).mean()), 1)):
        m = make_slide_model(2048, 2048, 0.5, 3, True, 0.45, 1, marks={gene: MARKS[gene]})
        plain = make_slide_model(2048, 2048, 0.5, 3, True, 0.45, 1)
        gx, gy = m.gene_regions[gene].mean(0).astype(int)
        win = (gx - 64, gy - 64, 128, 128)
        assert m.tumor_mask(*win).all() and m.gene_masks(*win)[gene].all()
        inside, before = feature(m.render(*win)), feature(plain.render(*win))
        assert direction * (inside - before) > 0.1 * abs(before)
        # elsewhere in the tumour it renders as without the gene
        for y, x in np.argwhere(m.lowres_masks(32)[1]) * 32:
            around = (int(x) - 80, int(y) - 80, 224, 224)  # the window and what its nuclei reach
            if not m.gene_masks(*around) and m.tumor_mask(*around).all():
                np.testing.assert_array_equal(m.render(int(x), int(y), 64, 64), plain.render(int(x), int(y), 64, 64))
                break
        else:
            raise AssertionError("no tumour outside the gene's subregion")


def test_bad_settings_are_refused_before_anything_is_written(tmp_path):
    for kw in ({"witness_rate": 0.0}, {"witness_rate": (0.4, 0.2)}, {"contrast": 1.5}, {"sites": 0},
               {"slides_per_case": (3, 1)}, {"slides_per_case": 1.5}, {"stain_variation": -1}):
        with pytest.raises(InvalidInput):
            synth_cohort(tmp_path / "x", n_slides=2, size=(64, 64), **kw)
    assert not (tmp_path / "x").exists()


def test_synth_cli_records_difficulty(tmp_path):
    from click.testing import CliRunner

    from histstore.cli.main import main

    out = tmp_path / "c"
    r = CliRunner().invoke(main, ["synth", str(out), "--slides", "4", "--size", "256", "--witness-rate", "0.02",
                                  "--contrast", "0.4", "--sites", "2", "--slides-per-case", "1-2"])
    assert r.exit_code == 0, r.output
    d = json.loads((out / "truth.json").read_text())["difficulty"]
    assert d["witness_rate"] == [0.02, 0.02] and d["contrast"] == 0.4 and d["sites"] == 2
    assert d["slides_per_case"] == [1, 2]
    assert (out / "sites.csv").read_bytes().count(b"\n") == 5 and b"\r" not in (out / "sites.csv").read_bytes()
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "d"), "--witness-rate", "0.5-0.1"])
    assert bad.exit_code != 0 and "witness rate" in bad.output and "Traceback" not in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


def test_separate_gene_subregions_rarely_overlap():
    """separate_genes: each gene's subregion goes where no earlier gene's is; placed
    independently, subregions often overlap. Overlap: shared tumour area over the smaller
    subregion's, per pair of genes on a slide."""
    import itertools

    import cv2

    def overlap(separate):
        out = []
        for seed in range(8):
            m = make_slide_model(1024, 1024, 0.5, seed, True, 0.3, marks=dict(list(MARKS.items())[:4]),
                                 separate_genes=separate)
            tumour = m.lowres_masks(8)[1]
            masks = {}
            for g, p in m.gene_regions.items():
                r = np.zeros(tumour.shape, np.uint8)
                cv2.fillPoly(r, [np.round(p / 8).astype(np.int32)], 1)
                masks[g] = r.astype(bool) & tumour
            out += [(masks[a] & masks[b]).sum() / max(1, min(masks[a].sum(), masks[b].sum()))
                    for a, b in itertools.combinations(masks, 2)]
        return float(np.mean(out))

    assert overlap(True) < 0.1 < 0.2 < overlap(False)
    with pytest.raises(InvalidInput, match="need gene regions"):
        synth_cohort("unused", n_slides=2, separate_genes=True)
