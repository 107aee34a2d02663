"""Fixtures of the report tests: one trained store shared by the whole folder (training is the
slow part; every test only reads its runs or adds its own rows and files)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from histstore.store import Store


@dataclass
class Trained:
    store: Store
    run_id: int          # gated-attention, task tumor, 5 folds (AUC 1): attends to the planted tumour
    truth: dict          # synth20 truth.json: planted regions per slide


@pytest.fixture(scope="session")
def trained(embedded_template, synth20, tmp_path_factory):
    import torch

    from histstore.train import TrainSettings, train

    root = tmp_path_factory.mktemp("reports") / "store"
    shutil.copytree(embedded_template.root, root)
    store = Store(root)
    # two threads for this training only: a test process left with an OpenMP team of two
    # crashes the tests that fork it (tests/faults) as soon as a child runs a parallel op
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rep = train(store, TrainSettings(cohort="syn20", task="tumor", folds=5, seed=0, epochs=20, lr=5e-4,
                                         device="cpu"), show_progress=False)
    finally:
        torch.set_num_threads(before)
    assert rep.status == "finished"
    return Trained(store, rep.run_id, synth20.truth())

