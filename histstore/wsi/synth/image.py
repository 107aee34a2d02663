"""The image model of a synthetic H&E-like slide: stain colours, deterministic noise, and
`SlideModel`, which renders any window of one slide in level-0 coordinates.

A slide is an irregular tissue blob on white glass: pink, fibrous stroma (eosin) with small,
round-to-oval purple nuclei (haematoxylin). Tumour slides carry one to three irregular regions
of tumour-like texture: nuclei denser, larger, darker and irregular in shape, with less eosin.
Colour is made by Beer-Lambert mixing of two stain optical densities, so it looks stained
rather than painted.

Difficulty controls (defaults: today's look): `contrast` moves tumour morphology from that of
stroma (0: a planted region looks like any other tissue) to the full tumour texture (1); a
`SiteStain` gives the slide its site's stain vectors, intensities and scanner blur; gene
subregions (`gene_regions`, with their `marks`) change the tumour's look inside them.

Rendering is deterministic in level-0 coordinates (noise from hashed lattices, nuclei from
per-block generators), so a slide looks the same however it is cut into strips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from histstore.wsi.synth.marks import GeneMark
from histstore.wsi.synth.stain import OD_GLASS as _OD_GLASS
from histstore.wsi.synth.stain import SiteStain

_BACKGROUND = np.round(255 * np.exp(-_OD_GLASS)).astype(np.uint8)
_REFERENCE_STAIN = SiteStain("SY")
# stromal nuclei left inside a tumour nest at full contrast: those with wobble > 1.3 (N(0, 1))
_KEPT_Z = 1.3
_KEPT_AT_FULL_CONTRAST = 1.0 - NormalDist().cdf(_KEPT_Z)


def _lerp(a: float, b: float, t: float) -> float:
    """a at t = 0, b at t = 1, exactly (so contrast 1 renders as before contrast existed)."""
    return a * (1.0 - t) + b * t

_BLOCK = 256  # nuclei are drawn per block of level-0 px, each with its own generator
_GRAIN = 512  # period of the fine texture patch


# ----------------------------------------------------------------------------------------
# deterministic noise
# ----------------------------------------------------------------------------------------
def _hash_uniform(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per integer lattice point (splitmix64 finaliser), float32."""
    with np.errstate(over="ignore"):
        h = (
            ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x165667B19E3779F9)
        )
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return ((h >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def _interp_weights(coords: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice index (relative to the first) and smoothstep weight of each coordinate."""
    t = coords / cell
    fl = np.floor(t)
    i0 = int(fl.min())
    f = (t - fl).astype(np.float32)
    return (fl - i0).astype(np.int64), f * f * (3 - 2 * f), i0


def value_noise(xs: np.ndarray, ys: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth noise in [-1, 1] on the grid ys x xs (level-0 coords): float32 (len(ys), len(xs)).

    Lattice values are a hash of the global lattice index, so any window of the same slide
    gives the same values where windows overlap. Separable smoothstep interpolation, done as
    two gathers.
    """
    ix, sx, ix0 = _interp_weights(np.asarray(xs, np.float64), cell)
    iy, sy, iy0 = _interp_weights(np.asarray(ys, np.float64), cell)
    gy, gx = np.meshgrid(
        np.arange(iy0, iy0 + iy.max() + 2), np.arange(ix0, ix0 + ix.max() + 2), indexing="ij"
    )
    g = _hash_uniform(gx, gy, seed) * 2 - 1
    rows = g[iy] * (1 - sy)[:, None] + g[iy + 1] * sy[:, None]  # (len(ys), n_lattice_x)
    out = rows[:, ix]
    out *= 1 - sx
    out += rows[:, ix + 1] * sx
    return out


# ----------------------------------------------------------------------------------------
# one slide
# ----------------------------------------------------------------------------------------
@dataclass
class SlideModel:
    """Everything needed to render any window of one synthetic slide."""

    width: int
    height: int
    mpp: float
    seed: int
    tumor: bool
    regions: list[np.ndarray]  # polygons (k, 2) float, level-0 (x, y)
    cx: float
    cy: float
    rx: float
    ry: float
    fibre_angle: float

    # nuclear morphology in um (radius), density in nuclei per um^2
    normal_radius_um: float = 2.6
    normal_density: float = 1 / 260.0
    tumor_radius_um: float = 4.6
    tumor_density: float = 1 / 110.0

    contrast: float = 1.0  # 0: tumour looks like stroma .. 1: full tumour texture
    stain: SiteStain = _REFERENCE_STAIN
    gene_regions: dict[str, np.ndarray] = field(default_factory=dict)  # gene -> polygon
    marks: dict[str, GeneMark] = field(default_factory=dict)  # gene -> its look

    @property
    def margin(self) -> int:
        """Border rendered around a window so nuclei cut by its edge still draw (and the
        scanner blur sees all it spreads)."""
        grow = max([1.0] + [m.radius for g, m in self.marks.items() if g in self.gene_regions])
        m = int(math.ceil(2.2 * self.tumor_radius_um * grow / self.mpp)) + 4
        return max(m, int(math.ceil(4 * self.blur_px)) + 2)

    @property
    def blur_px(self) -> float:
        return self.stain.blur_um / self.mpp

    # tumour nuclei at this contrast (morphology between stroma's and tumour's)
    @property
    def _tumor_radius(self) -> float:
        return _lerp(self.normal_radius_um, self.tumor_radius_um, self.contrast)

    @property
    def _tumor_density(self) -> float:
        return _lerp(0.0, self.tumor_density, self.contrast)

    @property
    def _kept_stroma_z(self) -> float:
        """Stromal nuclei inside a nest are kept when their wobble exceeds this: all at
        contrast 0, ~10 % at contrast 1."""
        if self.contrast >= 1.0:
            return _KEPT_Z
        kept = _lerp(1.0, _KEPT_AT_FULL_CONTRAST, self.contrast)
        return -math.inf if kept >= 1.0 else NormalDist().inv_cdf(1.0 - kept)

    # -- fields -----------------------------------------------------------------------
    def tissue_field(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """> 0 inside the tissue blob (float32 (len(ys), len(xs)))."""
        ex = ((np.asarray(xs, np.float32) - self.cx) / self.rx) ** 2
        ey = ((np.asarray(ys, np.float32) - self.cy) / self.ry) ** 2
        size = max(self.width, self.height)
        f = 1.0 - ey[:, None] - ex[None, :]
        f += 0.55 * value_noise(xs, ys, size / 5.0, self.seed + 1)
        f += 0.25 * value_noise(xs, ys, size / 13.0, self.seed + 2)
        return f

    def tumor_mask(self, x0: int, y0: int, w: int, h: int, step: int = 1) -> np.ndarray:
        """uint8 (h, w) 1 inside a planted region; pixel (r, c) is level-0 (x0+c*step, y0+r*step)."""
        import cv2

        out = np.zeros((h, w), np.uint8)
        if self.regions:
            pts = [
                np.round(((p - (x0, y0)) / step - 0.5) * 16).astype(np.int32)
                for p in self.regions
            ]
            for p in pts:  # one call per polygon: overlapping polygons must not cancel
                cv2.fillPoly(out, [p], 1, lineType=cv2.LINE_8, shift=4)
        return out

    def lowres_masks(self, step: float) -> tuple[np.ndarray, np.ndarray]:
        """(tissue bool, tumour bool) on a grid of `step` level-0 px (pixel centres)."""
        nx = max(1, int(math.ceil(self.width / step)))
        ny = max(1, int(math.ceil(self.height / step)))
        xs = (np.arange(nx) + 0.5) * step
        ys = (np.arange(ny) + 0.5) * step
        tissue = self.tissue_field(xs, ys) > 0
        tum = np.zeros((ny, nx), np.uint8)
        import cv2

        for p in self.regions:
            q = np.round((p / step - 0.5) * 16).astype(np.int32)
            cv2.fillPoly(tum, [q], 1, lineType=cv2.LINE_8, shift=4)
        tum = tum.astype(bool)
        return tissue | tum, tum

    # -- nuclei -----------------------------------------------------------------------
    def _nuclei(self, bx0: int, by0: int, bx1: int, by1: int) -> dict[str, np.ndarray]:
        """All candidate nuclei of blocks [bx0, bx1) x [by0, by1), both populations."""
        px_per_um = 1.0 / self.mpp
        area_um2 = (_BLOCK * self.mpp) ** 2
        c = self.contrast
        tumor_radius, tumor_density = self._tumor_radius, self._tumor_density
        aspect_hi = {0: 1.9, 1: _lerp(1.9, 1.5, c)}
        dark_range = {0: (0.7, 1.0), 1: (_lerp(0.7, 1.0, c), _lerp(1.0, 1.3, c))}
        parts: list[dict[str, np.ndarray]] = []
        for by in range(by0, by1):
            for bx in range(bx0, bx1):
                rng = np.random.default_rng((self.seed & 0xFFFFFFFF, 17, bx + 1_000_000, by + 1_000_000))
                for kind, radius_um, density in (
                    (0, self.normal_radius_um, self.normal_density),
                    (1, tumor_radius, tumor_density),
                ):
                    if kind == 1 and not self.tumor:
                        continue
                    n = int(rng.poisson(area_um2 * density))
                    if n == 0:
                        continue
                    parts.append(
                        {
                            "kind": np.full(n, kind, np.int8),
                            "x": (bx + rng.random(n)) * _BLOCK,
                            "y": (by + rng.random(n)) * _BLOCK,
                            "r": radius_um * px_per_um * rng.uniform(0.75, 1.3, n),
                            "aspect": rng.uniform(1.0, aspect_hi[kind], n),
                            "angle": rng.uniform(0, math.pi, n),
                            "dark": rng.uniform(*dark_range[kind], n),
                            "wobble": rng.normal(0, 1, (n, 4)),
                        }
                    )
        if not parts:
            return {k: np.zeros(0) for k in ("kind", "x", "y", "r", "aspect", "angle", "dark")} | {
                "wobble": np.zeros((0, 4))
            }
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _draw_nuclei(self, canvas: np.ndarray, X0: int, Y0: int, tissue: np.ndarray, tum: np.ndarray,
                     genes: dict[str, np.ndarray] | None = None) -> None:
        """Draw nuclei (value = darkness * 100) into uint8 canvas covering level-0 X0, Y0.
        genes: gene -> uint8 mask of its subregion in the window (tumour nuclei there take
        the gene's mark)."""
        import cv2

        H, W = canvas.shape
        nuc = self._nuclei(
            X0 // _BLOCK, Y0 // _BLOCK, (X0 + W - 1) // _BLOCK + 1, (Y0 + H - 1) // _BLOCK + 1
        )
        if nuc["x"].size == 0:
            return
        lx = nuc["x"] - X0
        ly = nuc["y"] - Y0
        inside = (lx >= 0) & (lx < W) & (ly >= 0) & (ly < H)
        c = np.clip(lx.astype(np.int64), 0, W - 1)
        r = np.clip(ly.astype(np.int64), 0, H - 1)
        in_tissue = tissue[r, c]
        in_tumor = tum[r, c].astype(bool)
        kind = nuc["kind"]
        # a few stromal nuclei remain inside tumour nests
        keep_normal = (kind == 0) & in_tissue & (~in_tumor | (nuc["wobble"][:, 3] > self._kept_stroma_z))
        keep = inside & (keep_normal | ((kind == 1) & in_tumor))
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return
        kind = kind[idx]
        nv = 12
        phi = np.linspace(0, 2 * math.pi, nv, endpoint=False)
        w = nuc["wobble"][idx]
        irregular = np.where(kind == 1, _lerp(0.06, 0.22, self.contrast), 0.06)
        rad, aspect, dark = nuc["r"][idx], nuc["aspect"][idx], nuc["dark"][idx]
        if genes:
            rad, aspect, dark = rad.copy(), aspect.copy(), dark.copy()
            for gene, gmask in genes.items():
                mark = self.marks[gene]
                sel = (kind == 1) & gmask[r[idx], c[idx]].astype(bool)
                rad[sel] *= mark.radius
                aspect[sel] *= mark.aspect
                dark[sel] *= mark.dark
                irregular = np.where(sel, irregular + mark.irregular, irregular)
        irregular = irregular[:, None]
        # smooth random radial profile: two low harmonics with random phase
        prof = 1 + irregular * (
            w[:, :1] * np.cos(2 * phi + w[:, 1:2] * 3) + w[:, 2:3] * np.sin(3 * phi + w[:, 1:2])
        ) * 0.6
        a = rad[:, None] * np.sqrt(aspect)[:, None] * prof
        b = rad[:, None] / np.sqrt(aspect)[:, None] * prof
        ang = nuc["angle"][idx][:, None]
        ex, ey = a * np.cos(phi), b * np.sin(phi)
        px = lx[idx][:, None] + ex * np.cos(ang) - ey * np.sin(ang)
        py = ly[idx][:, None] + ex * np.sin(ang) + ey * np.cos(ang)
        pts = np.round(np.stack([px, py], axis=-1) * 4).astype(np.int32)  # shift=2: 1/4 px
        val = np.clip(dark * 100, 1, 255).astype(np.int64).tolist()
        fill = cv2.fillPoly
        # one call per nucleus: a single multi-polygon fillPoly XORs where nuclei overlap
        for k in range(idx.size):
            fill(canvas, [pts[k]], val[k], cv2.LINE_8, 2)

    def _smooth_fields(self, X0: int, Y0: int, W: int, H: int) -> list[np.ndarray]:
        """Low-frequency fields of a window, (H, W) float32 each: tissue blob (> 0 inside),
        holes, fibre phase warp, fibre amplitude, stain patchiness.

        Sampled every `step` px on a grid aligned to global multiples of `step`, then
        upsampled (bicubic); the upsampling shifts every field by the same (step - 1) / 2 px
        everywhere, so windows still agree.
        """
        import cv2

        step = max(2, int(round(2.0 / self.mpp)))
        cx0 = (X0 // step) * step - 2 * step  # two samples of slack each side for cubic
        cy0 = (Y0 // step) * step - 2 * step
        nx = (X0 + W - cx0) // step + 4
        ny = (Y0 + H - cy0) // step + 4
        xs = cx0 + step * np.arange(nx, dtype=np.float64)
        ys = cy0 + step * np.arange(ny, dtype=np.float64)
        um = 1.0 / self.mpp
        amp = value_noise(xs, ys, 40 * um, self.seed + 7)
        amp += 0.3
        np.clip(amp, 0.0, 1.0, out=amp)
        amp *= 0.12
        coarse = [
            self.tissue_field(xs, ys),
            0.75 * value_noise(xs, ys, 30 * um, self.seed + 5)
            + 0.35 * value_noise(xs, ys, 11 * um, self.seed + 8),
            7.0 * value_noise(xs, ys, 70 * um, self.seed + 3)
            + 2.0 * value_noise(xs, ys, 15 * um, self.seed + 6),
            amp,
            value_noise(xs, ys, 60 * um, self.seed + 4),
        ]
        ox, oy = X0 - cx0, Y0 - cy0
        return [
            cv2.resize(c, (nx * step, ny * step), interpolation=cv2.INTER_CUBIC)[
                oy : oy + H, ox : ox + W
            ]
            for c in coarse
        ]

    # -- pixels -----------------------------------------------------------------------
    def _grain(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Fine texture in [0, 1]: a blurred random 512 x 512 patch repeated over the slide."""
        import cv2

        if getattr(self, "_grain_patch", None) is None:
            rng = np.random.default_rng((self.seed & 0xFFFFFFFF, 29))
            patch = rng.random((_GRAIN, _GRAIN), dtype=np.float32)
            patch = cv2.GaussianBlur(np.pad(patch, 8, mode="wrap"), (0, 0), 0.8)[8:-8, 8:-8]
            self._grain_patch = patch
        iy = (ys.astype(np.int64) % _GRAIN)[:, None]
        ix = (xs.astype(np.int64) % _GRAIN)[None, :]
        return self._grain_patch[iy, ix]

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-0 window with top-left (x0, y0)."""
        import cv2

        m = self.margin
        X0, Y0, W, H = x0 - m, y0 - m, w + 2 * m, h + 2 * m
        xs = np.arange(X0, X0 + W, dtype=np.float64)
        ys = np.arange(Y0, Y0 + H, dtype=np.float64)
        tum = self.tumor_mask(X0, Y0, W, H)
        # smooth fields vary over >= 15 um: evaluate them on a coarse grid and interpolate
        blob, holes, warp, amp, patch = self._smooth_fields(X0, Y0, W, H)
        tissue = (blob > 0) | tum.astype(bool)
        if not tissue[m : m + h, m : m + w].any():
            return np.broadcast_to(_BACKGROUND, (h, w, 3)).copy()
        # lumens / fat: small pale holes in the stroma
        tissue_f = (tissue & ~((holes > 0.8) & (tum == 0))).astype(np.float32)
        tissue_f = cv2.GaussianBlur(tissue_f, (0, 0), 1.0)

        genes = self.gene_masks(X0, Y0, W, H) if tum.any() else {}

        # nuclei -> haematoxylin density
        canvas = np.zeros((H, W), np.uint8)
        self._draw_nuclei(canvas, X0, Y0, tissue, tum, genes)
        hema = cv2.GaussianBlur(canvas, (0, 0), 0.5 / self.mpp).astype(np.float32)
        grain = self._grain(xs, ys)
        hema *= (0.9 / 100) * (0.5 + grain)  # chromatin texture
        tum_f = cv2.GaussianBlur(tum.astype(np.float32), (0, 0), 2.0)
        hema += tissue_f * (0.03 + (0.14 * self.contrast) * tum_f)  # basophilic cytoplasm in tumour nests
        gene_f = {g: cv2.GaussianBlur(m.astype(np.float32), (0, 0), 2.0) * tum_f for g, m in genes.items()}
        for g, f in gene_f.items():
            if self.marks[g].cytoplasm:
                hema += tissue_f * self.marks[g].cytoplasm * f

        # stroma -> eosin density: wavy collagen fibres that fade in and out, patchy intensity
        k = 2 * math.pi / (9.0 / self.mpp)
        ca, sa = math.cos(self.fibre_angle), math.sin(self.fibre_angle)
        phase = (ys * (k * sa)).astype(np.float32)[:, None] + (xs * (k * ca)).astype(np.float32)[None, :]
        phase += warp
        fibre = np.sin(phase, out=phase)
        fibre += 1.0
        fibre *= fibre  # sharpen: thin dense bands on a paler ground
        amp *= 1.0 - (0.8 * self.contrast) * tum_f  # tumour nests: cells, not collagen
        fibre *= amp
        eosin = 0.42 + 0.12 * patch + fibre + 0.1 * (grain - 0.5)
        eosin *= tissue_f
        eosin *= 1.0 - (0.5 * self.contrast) * tum_f
        for g, f in gene_f.items():
            if self.marks[g].eosin != 1.0:
                eosin *= 1.0 - (1.0 - self.marks[g].eosin) * f

        st = self.stain
        if st.hematoxylin_scale != 1.0:
            hema *= st.hematoxylin_scale
        if st.eosin_scale != 1.0:
            eosin *= st.eosin_scale
        # Beer-Lambert: I = 255 exp(-(H od_H + E od_E + od_glass)), channel by channel; a
        # scanner blur acts on the light, so it is applied to the whole window before cropping
        blur = self.blur_px
        if blur <= 0:
            hema, eosin = hema[m : m + h, m : m + w], eosin[m : m + h, m : m + w]
        chans = [
            cv2.exp(hema * float(-st.od_hematoxylin[c]) + eosin * float(-st.od_eosin[c])
                    - float(_OD_GLASS[c]))
            for c in range(3)
        ]
        rgb = cv2.merge(chans)
        if blur > 0:
            rgb = cv2.GaussianBlur(rgb, (0, 0), blur)[m : m + h, m : m + w]
        return cv2.convertScaleAbs(rgb, alpha=255.0)

    def gene_masks(self, x0: int, y0: int, w: int, h: int) -> dict[str, np.ndarray]:
        """gene -> uint8 (h, w) mask of its subregion, for the genes whose subregion touches
        the window."""
        import cv2

        out = {}
        for gene, poly in self.gene_regions.items():
            lo, hi = poly.min(0), poly.max(0)
            if hi[0] < x0 or hi[1] < y0 or lo[0] >= x0 + w or lo[1] >= y0 + h:
                continue
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round((poly - (x0, y0) - 0.5) * 16).astype(np.int32)], 1,
                         lineType=cv2.LINE_8, shift=4)
            out[gene] = mask
        return out


def make_slide_model(
    width: int,
    height: int,
    mpp: float,
    seed: int,
    tumor: bool,
    burden: float = 0.3,
    n_regions: int | None = None,
    *,
    contrast: float = 1.0,
    stain: SiteStain | None = None,
    marks: dict[str, GeneMark] | None = None,
    separate_genes: bool = False,
) -> SlideModel:
    """Pick the tissue blob and, for a tumour slide, regions covering ~burden of the tissue
    (fewer, larger regions at low burden: each at least ~1 % of the tissue) and, for each
    gene in `marks`, a subregion of the tumour showing that gene's mark (separate_genes:
    each gene's subregion placed in tumour no earlier gene's subregion took)."""
    import cv2

    rng = np.random.default_rng(seed)
    model = SlideModel(
        width=int(width),
        height=int(height),
        mpp=float(mpp),
        seed=int(seed),
        tumor=bool(tumor),
        regions=[],
        cx=width * rng.uniform(0.45, 0.55),
        cy=height * rng.uniform(0.45, 0.55),
        rx=width * rng.uniform(0.38, 0.46),
        ry=height * rng.uniform(0.38, 0.46),
        fibre_angle=rng.uniform(0, math.pi),
        contrast=float(contrast),
        stain=stain or _REFERENCE_STAIN,
    )
    if not tumor:
        return model
    step = max(width, height) / 256.0
    tissue, _ = model.lowres_masks(step)
    tissue_area = float(tissue.sum()) * step * step
    k = int(n_regions) if n_regions else min(int(rng.integers(1, 4)), max(1, int(burden / 0.01 + 1e-9)))
    shares = rng.dirichlet(np.full(k, 3.0))
    dist = cv2.distanceTransform(
        np.pad(tissue.astype(np.uint8), 1), cv2.DIST_L2, 5
    )[1:-1, 1:-1] * step
    for share in shares:
        radius = math.sqrt(burden * share * tissue_area / math.pi)
        model.regions.append(_blob(rng, dist, step, radius, width, height))
    if marks:
        _place_gene_regions(model, marks, np.random.default_rng([seed, 53]), separate_genes)
    return model


def _blob(rng: np.random.Generator, dist: np.ndarray, step: float, radius: float,
          width: int, height: int) -> np.ndarray:
    """An irregular blob of about `radius` centred where `dist` (distance to the edge of
    the allowed area, level-0 px, on a grid of `step`) leaves room for it."""
    ok = np.flatnonzero(dist.ravel() >= 0.9 * radius)
    if ok.size == 0:
        ok = np.array([int(np.argmax(dist))])
    j = int(rng.choice(ok))
    cy, cx = (np.array(np.unravel_index(j, dist.shape)) + 0.5) * step
    nv = 40
    phi = np.linspace(0, 2 * math.pi, nv, endpoint=False)
    harm = sum(
        rng.normal(0, 0.22 / h) * np.cos(h * phi + rng.uniform(0, 2 * math.pi))
        for h in range(2, 6)
    )
    rad = radius * np.clip(1 + harm, 0.4, None)
    poly = np.stack([cx + rad * np.cos(phi), cy + rad * np.sin(phi)], axis=1)
    poly[:, 0] = np.clip(poly[:, 0], 0, width - 1)
    poly[:, 1] = np.clip(poly[:, 1], 0, height - 1)
    return np.round(poly, 1)


def _place_gene_regions(model: SlideModel, marks: dict[str, GeneMark], rng: np.random.Generator,
                        separate: bool = False) -> None:
    """Each gene's subregion: a blob covering 25-45 % of one planted region (chosen by area),
    inside it as far as its shape allows. Its mark shows only where it overlaps the tumour.

    Placed independently, two genes' subregions may overlap (one tile then carries both
    marks). separate: each gene's blob goes into the tumour that the blobs placed before it
    left free (region chosen and sized by its free area), so the genes' signals sit in
    different places - as far as the tumour's area allows (the last of many genes gets a
    small blob); a gene with no free tumour left gets none."""
    import cv2

    step = max(model.width, model.height) / 512.0
    nx, ny = int(math.ceil(model.width / step)), int(math.ceil(model.height / step))
    masks = []
    for p in model.regions:
        m = np.zeros((ny, nx), np.uint8)
        cv2.fillPoly(m, [np.round((p / step - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        masks.append(m)
    if separate:
        _place_separately(model, marks, rng, masks, step)
        return
    areas = np.array([m.sum() for m in masks], np.float64) * step * step
    for gene, mark in marks.items():
        model.marks[gene] = mark
        i = int(rng.choice(len(masks), p=areas / areas.sum())) if areas.sum() > 0 else 0
        radius = math.sqrt(rng.uniform(0.25, 0.45) * areas[i] / math.pi)
        dist = cv2.distanceTransform(np.pad(masks[i], 1), cv2.DIST_L2, 5)[1:-1, 1:-1] * step
        model.gene_regions[gene] = _blob(rng, dist, step, radius, model.width, model.height)


def _place_separately(model: SlideModel, marks: dict[str, GeneMark], rng: np.random.Generator,
                      masks: list[np.ndarray], step: float) -> None:
    """_place_gene_regions(separate=True): blobs in tumour not yet taken by another gene."""
    import cv2

    free = [m.copy() for m in masks]
    for gene, mark in marks.items():
        areas = np.array([m.sum() for m in free], np.float64) * step * step
        if areas.sum() <= 0:
            continue  # no free tumour left: this gene shows nowhere on this slide
        model.marks[gene] = mark
        i = int(rng.choice(len(free), p=areas / areas.sum()))
        radius = math.sqrt(rng.uniform(0.25, 0.45) * areas[i] / math.pi)
        dist = cv2.distanceTransform(np.pad(free[i], 1), cv2.DIST_L2, 5)[1:-1, 1:-1] * step
        poly = _blob(rng, dist, step, radius, model.width, model.height)
        model.gene_regions[gene] = poly
        taken = np.zeros_like(free[i])
        cv2.fillPoly(taken, [np.round((poly / step - 0.5) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        # a margin of one grid cell, so that neighbouring blobs do not share edge tiles
        taken = cv2.dilate(taken, np.ones((3, 3), np.uint8))
        for m in free:
            m[taken > 0] = 0
