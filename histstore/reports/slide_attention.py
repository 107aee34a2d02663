"""One slide's attention in one fold of a run, read from the catalog for heatmaps.

`load_slide_attention` reads the slide's tiles, attention scores, prediction and label
(`attention` joined with `tiles`; the fold defaults to the one in which the slide was in the
test subset: attention is stored for test slides only), with one-line errors that say which
slides and folds the run does have.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from histstore.catalog.bulk import query_numpy
from histstore.errors import InvalidInput, MissingStep, NotTested, SlideNotFound
from histstore.reports.common import ATTENTION_KIND, require_train_run
from histstore.store import Store


@dataclass
class SlideAttention:
    """One slide's tiles and attention in one fold of a run, read from the catalog.
    Arrays are (n_tiles,), ordered by tile idx; score is float64 (NaN never occurs: rows with
    a non-finite score are dropped and counted in notes)."""

    run: dict
    slide_id: str
    fold: int
    tested_folds: list[int]
    tile_id: np.ndarray
    idx: np.ndarray
    x: np.ndarray
    y: np.ndarray
    size_l0: np.ndarray
    score: np.ndarray
    slide: dict                # slides row: path, width, height, mpp, status
    read_spec: dict | None     # tilings.settings['read'] (how to re-read a tile's pixels)
    prediction: dict | None    # predictions row (test subset): label, target, score, predicted
    classes: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        return self.run["model"]

    @property
    def attention_kind(self) -> str:
        return ATTENTION_KIND.get(self.model or "", "unknown")

    @property
    def width(self) -> int:
        w = self.slide.get("width")
        return int(w) if w else int((self.x + self.size_l0).max())

    @property
    def height(self) -> int:
        h = self.slide.get("height")
        return int(h) if h else int((self.y + self.size_l0).max())


def _listing(items, limit: int = 6) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items)} in all)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_slide_attention(store: Store, run_id: int | str, slide_id: str,
                         fold: int | None = None) -> SlideAttention:
    """Read a slide's attention in a run. Raises NotFound (run, slide, fold), NotTested (the
    slide was not in the test subset there), MissingStep (the run stored no attention)."""
    with store.read() as conn:
        run = require_train_run(conn, run_id)
        rid = int(run["run_id"])
        q = conn.exec_driver_sql
        if not q("SELECT count(*) FROM splits WHERE run_id = ?", (rid,)).scalar():
            children = q("SELECT run_id, task FROM runs WHERE parent_run_id = ? AND kind = ? ORDER BY run_id",
                         (rid, run["kind"])).all()
            if children:
                first = children[0][0]
                raise InvalidInput(
                    f"run {rid} is the parent of {len(children)} gene runs and holds no attention "
                    f"itself: {_listing(f'{c} ({t})' for c, t in children)}",
                    hint=f"draw one gene's run, e.g. `histstore heatmap --run {first} --slide {slide_id}`")
            raise MissingStep(f"run {rid} has no splits yet (status {run['status']})",
                              hint=f"`histstore runs show {rid}`")
        row = q("SELECT slide_id, path, width, height, mpp, status FROM slides WHERE slide_id = ?",
                (slide_id,)).first()
        if row is None:
            raise SlideNotFound(f"no slide {slide_id!r} in the catalog",
                                hint=f"the run's test slides: `histstore sql \"SELECT fold, slide_id FROM "
                                     f"splits WHERE run_id = {rid} AND subset = 'test'\"`")
        slide = dict(row._mapping)
        splits = dict(q("SELECT fold, subset FROM splits WHERE run_id = ? AND slide_id = ?",
                        (rid, slide_id)).all())
        if not splits:
            members = [r[0] for r in q("SELECT DISTINCT slide_id FROM splits WHERE run_id = ? ORDER BY 1",
                                       (rid,)).all()]
            raise NotTested(f"slide {slide_id} is not in run {rid} (cohort {run['cohort']}, "
                            f"{len(members)} slides: {_listing(members, 4)})",
                            hint=f"pick one of the run's slides: `histstore sql \"SELECT fold, slide_id FROM "
                                 f"splits WHERE run_id = {rid} AND subset = 'test'\"`")
        finished = {int(r[0]) for r in q(
            "SELECT DISTINCT fold FROM predictions WHERE run_id = ? AND subset = 'test'", (rid,)).all()}
        test_folds = sorted(int(f) for f, s in splits.items() if s == "test")
        tested = [f for f in test_folds if f in finished]
        notes: list[str] = []
        if fold is None:
            if not tested:
                if test_folds:
                    raise NotTested(f"slide {slide_id} is in the test subset of fold {test_folds[0]} of "
                                    f"run {rid}, which has not finished (run {run['status']})",
                                    hint=f"`histstore train --resume {rid}` finishes it")
                raise NotTested(f"slide {slide_id} was not tested in run {rid}: it is in "
                                f"{_subsets(splits)} only", hint="attention is stored for test slides only")
            fold = tested[0]
            if len(tested) > 1:
                notes.append(f"slide tested in folds {tested}; showing fold {fold}")
        else:
            fold = int(fold)
            if fold not in splits:
                folds = [r[0] for r in q("SELECT DISTINCT fold FROM splits WHERE run_id = ? ORDER BY 1",
                                         (rid,)).all()]
                raise NotTested(f"run {rid} has no fold {fold} (folds {_listing(folds)})",
                                hint="leave --fold out to use the fold that tested the slide")
            if fold not in tested:
                where = (f"it was tested in fold {_listing(tested)}" if tested
                         else "it was not tested in any finished fold")
                what = (f"in its {splits[fold]} subset" if splits[fold] != "test"
                        else "in its test subset, but that fold has not finished")
                raise NotTested(f"slide {slide_id} was not tested in fold {fold} of run {rid} ({what}); "
                                f"{where}", hint=(f"use --fold {tested[0]} or leave --fold out" if tested
                                                  else f"`histstore train --resume {rid}`"))
        att = query_numpy(conn, """
            SELECT t.tile_id, t.tiling_id, t.idx, t.x, t.y, t.size_l0, a.score
            FROM attention a JOIN tiles t ON t.tile_id = a.tile_id
            WHERE a.run_id = $1 AND a.fold = $2 AND t.slide_id = $3 ORDER BY t.idx""",
            [rid, fold, slide_id])
        if len(att["tile_id"]) == 0:
            stored = q("SELECT count(*) FROM attention WHERE run_id = ?", (rid,)).scalar()
            why = ("the run stored no tile attention at all" if not stored
                   else "its other slides have attention; this one has none")
            raise MissingStep(f"run {rid} ({run['model']}) has no attention for slide {slide_id} in "
                              f"fold {fold}: {why}",
                              hint="retrain with `histstore train` (every histstore model stores "
                                   "per-tile attention for its test slides)")
        pred = q("SELECT label, target, score, predicted FROM predictions WHERE run_id = ? AND fold = ? "
                 "AND slide_id = ? AND subset = 'test'", (rid, fold, slide_id)).first()
        tilings = np.unique(att["tiling_id"])
        settings = q("SELECT settings FROM tilings WHERE tiling_id = ?", (int(tilings[0]),)).scalar()
    if len(tilings) > 1:
        notes.append(f"tiles come from {len(tilings)} tilings; the first one's read spec is used")
    settings = json.loads(settings) if isinstance(settings, str) else (settings or {})
    score = np.asarray(att["score"], np.float64)
    ok = np.isfinite(score)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} tiles with a non-finite attention score left out")
        if not ok.any():
            raise MissingStep(f"run {rid} stored only non-finite attention for slide {slide_id}",
                              hint="the model diverged; retrain with a lower --lr")
    return SlideAttention(
        run=run, slide_id=slide_id, fold=int(fold), tested_folds=tested,
        tile_id=att["tile_id"][ok].astype(np.int64), idx=att["idx"][ok].astype(np.int64),
        x=att["x"][ok].astype(np.int64), y=att["y"][ok].astype(np.int64),
        size_l0=att["size_l0"][ok].astype(np.int64), score=score[ok], slide=slide,
        read_spec=settings.get("read"), prediction=dict(pred._mapping) if pred is not None else None,
        classes=list(run["settings"].get("classes") or []), notes=notes)


def _subsets(splits: dict) -> str:
    return ", ".join(f"{s} of fold {f}" for f, s in sorted(splits.items()))
