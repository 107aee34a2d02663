"""SlideReader: properties and pixels from OpenSlide; every failure is a one-line SlideReadError."""
from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest

from histstore.errors import SlideReadError
from histstore.wsi.reader import mpp_from_properties, open_slide, rgba_to_rgb

from .conftest import coordinate_pattern, gradient_pattern, write_pyramid


def test_real_slide_properties(real_slide):
    with open_slide(real_slide) as r:
        assert (r.width, r.height) == (2220, 2967)
        assert r.level_count == 1 and r.level_downsamples == (1.0,)
        assert r.mpp == pytest.approx(0.499) and r.mpp_source == "file"
        assert r.objective_power == 20.0
        assert r.vendor == "aperio"
        region = r.read_region(1000, 1500, 0, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        # past the right edge reads as white glass
        edge = r.read_region(r.width - 10, 0, 0, 20, 8)
        assert (edge[:, 10:] == 255).all()
        thumb = r.thumbnail(512)
        assert thumb.shape == (512, round(2220 * 512 / 2967), 3)


def test_read_downsampled_matches_area_resize(real_slide):
    import cv2

    with open_slide(real_slide) as r:
        full = r.read_region(0, 0, 0, r.width, r.height)
        small = r.read_downsampled(370, 494)
    ref = cv2.resize(full, (370, 494), interpolation=cv2.INTER_AREA)
    assert small.shape == ref.shape
    assert np.abs(small.astype(int) - ref).mean() < 2.0


def test_synthetic_pyramid_properties(synth6):
    with open_slide(synth6.slides[0].path) as r:
        assert r.vendor == "generic-tiff"
        assert r.level_count == 3
        w, h = synth6.slides[0].width, synth6.slides[0].height
        assert r.level_dimensions == ((w, h), (w // 4, h // 4), (w // 16, h // 16))
        assert r.mpp == pytest.approx(0.5) and r.mpp_source == "file"
        assert r.objective_power is None
        assert r.best_level_for_downsample(1) == 0
        assert r.best_level_for_downsample(3.9) == 0
        assert r.best_level_for_downsample(4) == 1
        assert r.best_level_for_downsample(64) == 2


def test_level_reads_agree(tmp_path):
    """A region read at level 1 is the area-average of the same footprint at level 0."""
    img = gradient_pattern(2048, 1024)
    path = write_pyramid(tmp_path / "g.tiff", img, mpp=0.25, downsamples=(1, 4))
    with open_slide(path) as r:
        assert r.level_count == 2 and r.level_downsamples[1] == pytest.approx(4)
        lo = r.read_region(800, 400, 1, 50, 40)
        hi = r.read_region(800, 400, 0, 200, 160)
    import cv2

    assert np.abs(cv2.resize(hi, (50, 40), interpolation=cv2.INTER_AREA).astype(int) - lo).max() <= 2


def test_exact_pixels_lossless(tmp_path):
    img = coordinate_pattern(700, 500)
    path = write_pyramid(tmp_path / "c.tiff", img, mpp=0.5)
    with open_slide(path) as r:
        np.testing.assert_array_equal(r.read_region(123, 45, 0, 300, 200), img[45:245, 123:423])


def test_unknown_mpp_needs_assumption(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tiff", gradient_pattern(512, 512), mpp=None)
    with open_slide(path) as r:
        assert r.mpp is None and r.mpp_source is None
        with pytest.raises(SlideReadError) as e:
            r.require_mpp()
        assert "--assume-mpp" in str(e.value) and "nompp.tiff" in str(e.value)
    with open_slide(path, assume_mpp=0.5) as r:
        assert r.mpp == 0.5 and r.mpp_source == "assumed" and r.require_mpp() == 0.5
    # a file's own mpp wins over an assumption meant for files without one
    path2 = write_pyramid(tmp_path / "own.tiff", gradient_pattern(512, 512), mpp=0.25)
    with open_slide(path2, assume_mpp=0.5) as r:
        assert r.mpp == pytest.approx(0.25) and r.mpp_source == "file"
    with pytest.raises(SlideReadError):
        open_slide(path, assume_mpp=-1)


def test_mpp_from_tiff_tags():
    assert mpp_from_properties({"openslide.mpp-x": "0.2527"}) == pytest.approx(0.2527)
    cm = {"tiff.XResolution": "20000", "tiff.ResolutionUnit": "centimeter"}
    inch = {"tiff.XResolution": "50800", "tiff.ResolutionUnit": "inch"}
    assert mpp_from_properties(cm) == pytest.approx(0.5)
    assert mpp_from_properties(inch) == pytest.approx(0.5)
    # 72 dpi is a screen default, not a microscope: unknown, not 352.8 um/px
    assert mpp_from_properties({"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"}) is None
    assert mpp_from_properties({"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"}) is None
    assert mpp_from_properties({}) is None


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "tiff_header_only", "truncated"])
def test_bad_files_raise_slide_read_error(tmp_path, synth6, kind):
    path = tmp_path / f"{kind}.svs"
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("path,slide_id\na,b\n")
    elif kind == "tiff_header_only":
        path.write_bytes(b"II*\x00" + b"\x00" * 1000)
    elif kind == "truncated":
        src = synth6.slides[0].path
        data = src.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError) as e:
        with open_slide(path) as r:  # a truncated file may open and fail on reading pixels
            r.read_region(0, 0, 0, r.width, r.height)
    msg = str(e.value)
    assert path.name in msg and "\n" not in msg


def test_corrupt_tile_data_raises_on_read(tmp_path, synth6):
    """Garbage in the middle of a slide (TIFF directory intact) fails on read, not silently."""
    src = synth6.slides[0].path
    data = bytearray(src.read_bytes())
    data[len(data) // 4 : len(data) // 2] = b"\xff" * (len(data) // 2 - len(data) // 4)
    path = tmp_path / "garbled.tiff"
    path.write_bytes(bytes(data))
    with pytest.raises(SlideReadError) as e:
        with open_slide(path) as r:
            r.read_region(0, 0, 0, r.width, r.height)
    assert "garbled.tiff" in str(e.value)


def test_slide_read_error_pickles_with_hint():
    """Errors cross process boundaries (ingest workers) with message and hint intact."""
    err = SlideReadError("slide resolution unknown: x.svs", hint="pass --assume-mpp")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.hint == "pass --assume-mpp"


def test_rgba_composited_on_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (0, 0, 0, 0)  # transparent -> white
    rgba[0, 2] = (0, 0, 0, 128)  # half black over white
    rgb = rgba_to_rgb(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert abs(int(rgb[0, 2, 0]) - 127) <= 1


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_fast_read_gives_the_public_paths_pixels(which, real_slide, synth6, monkeypatch):
    """Regions read straight into numpy (OpenSlide's C call) equal openslide-python's public
    read (PIL, un-premultiplied, composited): inside the slide, at every level, and across the
    edge, where transparent pixels send the read down the public path."""
    import openslide

    from histstore.wsi import reader as reader_mod

    path = real_slide if which == "real" else synth6.slides[0].path
    with open_slide(path) as r:
        boxes = [(0, 0, 0, 300, 200), (r.width // 3, r.height // 2, 0, 513, 77),
                 (r.width - 40, r.height - 30, 0, 80, 60), (-16, -16, 0, 48, 48)]
        boxes += [(0, 0, level, 64, 64) for level in range(1, r.level_count)]
        fast = [r.read_region(*box) for box in boxes]
        assert reader_mod._read_opaque(r.handle, *boxes[0]) is not None  # the fast path is taken here
        assert reader_mod._read_opaque(r.handle, *boxes[3]) is None  # not past the edge
        monkeypatch.setattr(reader_mod, "_read_opaque", lambda *a: None)
        public = [r.read_region(*box) for box in boxes]
        raw = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, (300, 200)))
    for a, b in zip(fast, public):
        assert a.dtype == np.uint8 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast[0], rgba_to_rgb(raw))
    assert (fast[2][-10:, -10:] == 255).all() and (fast[3][:10, :10] == 255).all()  # past the edges


def test_close_is_idempotent(synth6):
    r = open_slide(synth6.slides[0].path)
    r.close()
    r.close()


def test_copy_of_slide_reads_same(tmp_path, synth6):
    src = synth6.slides[1].path
    dst = tmp_path / "copy.tiff"
    shutil.copy(src, dst)
    with open_slide(src) as a, open_slide(dst) as b:
        np.testing.assert_array_equal(a.read_region(100, 100, 0, 64, 64), b.read_region(100, 100, 0, 64, 64))
