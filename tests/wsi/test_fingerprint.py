"""Cheap fingerprints: size + head + tail hashes."""
from __future__ import annotations

import re
import shutil

import pytest

from histstore.errors import SlideReadError
from histstore.wsi.fingerprint import CHUNK, slide_fingerprint


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_fingerprint_is_stable_hex_and_content_addressed(tmp_path, synth6):
    src = synth6.slides[0].path
    fp = slide_fingerprint(src)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    assert slide_fingerprint(src) == fp
    copy = tmp_path / "renamed.tiff"
    shutil.copy(src, copy)
    assert slide_fingerprint(copy) == fp  # name and place do not matter
    assert slide_fingerprint(synth6.slides[1].path) != fp


@pytest.mark.parametrize("where", ["head", "tail", "size"])
def test_fingerprint_sees_changes(tmp_path, where):
    data = bytearray(b"x" * (3 * CHUNK + 123))
    base = slide_fingerprint(_write(tmp_path / "a", bytes(data)))
    if where == "head":
        data[10] ^= 1
    elif where == "tail":
        data[-10] ^= 1
    else:
        data += b"x"
    assert slide_fingerprint(_write(tmp_path / "b", bytes(data))) != base


def test_middle_edit_is_not_seen_by_design(tmp_path):
    data = bytearray(b"x" * (3 * CHUNK))
    base = slide_fingerprint(_write(tmp_path / "a", bytes(data)))
    data[int(1.5 * CHUNK)] ^= 1
    assert slide_fingerprint(_write(tmp_path / "b", bytes(data))) == base


def test_small_and_empty_files(tmp_path):
    assert slide_fingerprint(_write(tmp_path / "e", b"")) != slide_fingerprint(_write(tmp_path / "o", b"\0"))
    assert len(slide_fingerprint(_write(tmp_path / "s", b"abc" * 1000))) == 64


def test_missing_file(tmp_path):
    with pytest.raises(SlideReadError, match="not found.*nope.svs"):
        slide_fingerprint(tmp_path / "nope.svs")
