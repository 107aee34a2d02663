"""`histstore predict`: apply a train run's models to a cohort; the results are a run of kind
`evaluate` that every run command reads like a train run.

Which models: the run's final model (`train --final`) when it has one, else the ensemble of
its fold models (mean of their class probabilities, or of their predicted values for
regression); `use` forces one or the other. Each model applies its own feature
standardisation; the ensemble's binary decision threshold is the mean of the fold models'
thresholds (mil/apply.py). A gene run (`train --genes`) predicts every gene: one evaluate
run per gene run under one evaluate parent, as train lays them out.

The evaluate run (parent_run_id = the train run) holds, in fold 0: a `test` prediction per
slide (label and target where the cohort has them for the task, NULL otherwise), each slide's
tile attention (the ensemble's mean), a `splits` row per slide (subset `test`, with its case:
what heatmaps, pooled statistics and exports join on), and, when some slides are labelled,
the slide- and case-level metrics of the labelled slides (run_summary shows them, n_folds 1;
gene tasks label the slides the run trained on: the tumour slides unless it used all), and
for gene tasks the cohort's mean |log2FC| (the per-gene table's x axis).
Bootstrap intervals come from the predictions when shown (`runs show`, `report`), as for
train runs.

Checks before anything is written: the run is a train run with checkpoints, each checkpoint
matches its recorded sha256 and loads with weights_only; the cohort's slides all have arrays
in an embedding set made like the run's (embeddings/compat.py), else one line naming what
differs. Slides are committed in batches of COMMIT_SLIDES; an interrupted evaluate run is
continued by `histstore predict --resume RUN`, which skips the slides already committed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa

from histstore.catalog.bulk import insert_frame, query_numpy
from histstore.catalog.cohorts import cohort_slide_ids, require_cohort
from histstore.catalog.runs import mil_checkpoints, require_run
from histstore.embeddings.bags import missing_slides
from histstore.embeddings.compat import encoder_of, set_differences
from histstore.embeddings.sets import EmbeddingSetInfo, resolve_set, sets_covering
from histstore.errors import HiststoreError, InvalidInput, MissingStep
from histstore.faults import fault_point
from histstore.jobs import Heartbeat, mark_running, record_progress
from histstore.progress import progress_bar
from histstore.runs import create_run, end_run, refuse_if_alive, run_outcome, write_metrics
from histstore.store import Store
from histstore.tasks import TaskSpec, gene_task_slides, parse_task, task_targets

USES = ("auto", "final", "folds")
COMMIT_SLIDES = 16  # slides per commit: what an interruption can cost


@dataclass
class Plan:
    """One train run applied to one cohort: everything checked and loaded."""

    run: dict
    spec: TaskSpec
    classes: list[str]
    models: list                      # mil.saved_models.SavedModel
    use: str                          # "final" or "folds"
    checkpoints: list[dict]
    info: EmbeddingSetInfo            # the cohort's set
    slide_ids: list[str]
    case_of: dict[str, str]
    targets: dict[str, tuple[str | None, float]]  # labelled slides: (label, target)
    cut: float | None                 # binary decision threshold (None: the argmax)
    notes: list[str] = field(default_factory=list)

    @property
    def regression(self) -> bool:
        return self.spec.is_regression


@dataclass
class PredictReport:
    run_id: int
    source_run: int
    task: str
    model: str
    status: str
    use: str = ""
    n_slides: int = 0
    n_labelled: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: pd.DataFrame | None = None
    children: list["PredictReport"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ planning
def _train_runs(conn: sa.Connection, run_ref, task: str | None) -> tuple[dict, list[dict]]:
    """(the run asked for, the train runs to apply: itself, or a gene run's genes)."""
    run = require_run(conn, run_ref)
    rid = run["run_id"]
    if run["kind"] != "train":
        article = "an" if run["kind"][:1] in "aeiou" else "a"
        raise InvalidInput(f"run {rid} is {article} {run['kind']} run, not a train run: only trained models predict",
                           hint="see `histstore runs list --kind train`")
    if run["task"] and str(run["task"]).endswith(":*"):
        children = [require_run(conn, r[0]) for r in conn.exec_driver_sql(
            "SELECT run_id FROM runs WHERE parent_run_id = ? AND kind = 'train' ORDER BY task", (rid,)).all()]
        if task is not None:
            chosen = [c for c in children if c["task"] == task]
            if not chosen:
                raise InvalidInput(f"run {rid} did not train task {task} (its genes: "
                                   f"{', '.join(c['task'] for c in children) or 'none'})")
            return run, chosen
        usable = [c for c in children if mil_checkpoints(conn, c["run_id"])]
        if not usable:
            raise InvalidInput(f"gene run {rid} has no gene run with checkpoints (status {run['status']})",
                               hint="see `histstore runs show " + str(rid) + "`")
        return run, usable
    if task is not None and task != run["task"]:
        raise InvalidInput(f"run {rid} trained task {run['task']}, not {task}")
    return run, [run]


def _embed_hint(conn: sa.Connection, trained: EmbeddingSetInfo, cohort: str) -> str:
    return f"embed the cohort with the run's encoder: `histstore embed --encoder {encoder_of(conn, trained)} " \
           f"--cohort {cohort}`" + ("" if trained.stain_norm in (None, "macenko") else
                                    f" --stain-norm {trained.stain_norm}")


def _choose_set(conn: sa.Connection, run: dict, members: list[str], cohort: str,
                embeddings: str | None) -> EmbeddingSetInfo:
    """The cohort's embedding set: the one asked for, else the run's own set or one made like
    it that holds every slide. Refuses sets made otherwise, naming what differs."""
    trained = resolve_set(conn, str(run["embedding_set_id"]))
    rid = run["run_id"]
    if embeddings is not None:
        info = resolve_set(conn, embeddings)
        diffs = set_differences(conn, trained, info)
        if diffs:
            raise InvalidInput(f"embedding set {info.name!r} is not made like run {rid}'s set {trained.name!r}: "
                               + "; ".join(diffs), hint=_embed_hint(conn, trained, cohort))
        candidates = [info]
    else:
        covering = [i for i, _ in sets_covering(conn, members) if i.embedding_set_id != trained.embedding_set_id]
        candidates = [trained] + [i for i in covering if not set_differences(conn, trained, i)]
        for info in candidates:
            if not missing_slides(conn, info, members):
                return info
    missing = missing_slides(conn, candidates[0], members)
    if not missing:
        return candidates[0]
    others = [] if embeddings is not None else [
        (i.name, set_differences(conn, trained, i)) for i, _ in sets_covering(conn, members)
        if set_differences(conn, trained, i)]
    why = f"; the cohort's set {others[0][0]!r} differs: {'; '.join(others[0][1])}" if others else ""
    raise MissingStep(f"{len(missing)} of {len(members)} slides of cohort {cohort!r} have no array in an "
                      f"embedding set made like run {rid}'s ({candidates[0].name}; first: {missing[0]}){why}",
                      hint=_embed_hint(conn, trained, cohort))


def _targets(conn: sa.Connection, run: dict, spec: TaskSpec, classes: list[str],
             slide_ids: list[str]) -> tuple[dict, list[str]]:
    """The cohort's labelled slides for the run's task, by the run's rules (gene tasks: the
    tumour slides unless it trained on all); (targets, notes)."""
    try:
        tt = task_targets(conn, spec, slide_ids)
    except HiststoreError as exc:  # e.g. no fold changes for the gene here: predictions only
        return {}, [f"no {spec.name} targets in the cohort ({exc}): predictions without metrics"]
    keep = set(map(str, tt.slide_ids))
    notes = []
    if spec.gene is not None:
        keep = set(gene_task_slides(conn, sorted(keep), run["settings"].get("gene_slides", "all")).keep)
    out, unknown = {}, set()
    for sid, value in zip(map(str, tt.slide_ids), tt.values):
        if sid not in keep:
            continue
        if spec.is_regression:
            out[sid] = (None, float(value))
        elif str(value) in classes:
            out[sid] = (str(value), float(classes.index(str(value))))
        else:
            unknown.add(str(value))
    if unknown:
        notes.append(f"labels the run never saw left without a target: {', '.join(sorted(unknown))}")
    return out, notes


def _plan(store: Store, conn: sa.Connection, run: dict, cohort: str, embeddings: str | None, use: str) -> Plan:
    from histstore.mil.apply import ensemble_threshold
    from histstore.mil.saved_models import load_saved_model

    rid, st = run["run_id"], run["settings"]
    ckpts = mil_checkpoints(conn, rid)
    final = [c for c in ckpts if c["fold"] is None]
    folds = [c for c in ckpts if c["fold"] is not None]
    if use == "final" and not final:
        raise InvalidInput(f"run {rid} has no final model (it was trained without --final)",
                           hint="leave --use out to apply its fold models")
    chosen = final if use == "final" or (use == "auto" and final) else folds
    if not chosen:
        raise InvalidInput(f"run {rid} has no checkpoints: it ended ({run['status']}) before any fold finished",
                           hint=f"`histstore train --resume {rid}` trains its folds")
    used = "final" if chosen is final else "folds"
    notes = []
    if used == "folds" and st.get("folds") and len(folds) < int(st["folds"]):
        notes.append(f"run {rid} finished {len(folds)} of its {st['folds']} folds: their models only")
    members = cohort_slide_ids(conn, cohort)
    failed = set(r[0] for r in conn.exec_driver_sql(
        "SELECT slide_id FROM slides WHERE status = 'failed' AND slide_id IN (SELECT unnest(?::VARCHAR[]))",
        (members,)).all())
    if failed:
        notes.append(f"{len(failed)} slides whose ingest failed left out")
    members = [m for m in members if m not in failed]
    if not members:
        raise MissingStep(f"cohort {cohort!r} has no slides to predict")
    info = _choose_set(conn, run, members, cohort, embeddings)
    spec = parse_task(run["task"], st.get("threshold", 1.0), st.get("p_cut"), st.get("fc_source"))
    classes = [str(c) for c in st.get("classes") or []]
    models = [load_saved_model(store.resolve(c["path"]), c["sha256"],
                               "final" if c["fold"] is None else f"fold {c['fold']}", run["task"])
              for c in chosen]
    targets, tnotes = _targets(conn, run, spec, classes, members)
    case_of = dict(conn.exec_driver_sql(
        "SELECT slide_id, case_id FROM slides WHERE slide_id IN (SELECT unnest(?::VARCHAR[]))", (members,)).all())
    binary = not spec.is_regression and len(classes) == 2
    cut = ensemble_threshold(models) if binary and st.get("decision_threshold", "0.5") != "0.5" else None
    return Plan(run, spec, classes, models, used, chosen, info, members, case_of, targets, cut, notes + tnotes)


# ------------------------------------------------------------------------------ writing
def _settings(plan: Plan, cohort: str, device: str) -> dict[str, Any]:
    st = plan.run["settings"]
    return {"run": plan.run["run_id"], "cohort": cohort, "embeddings": plan.info.name, "use": plan.use,
            "models": [m.label for m in plan.models],
            "checkpoints": [{"fold": c["fold"], "path": c["path"], "sha256": c["sha256"]} for c in plan.checkpoints],
            "ensemble": (None if len(plan.models) == 1 else
                         "mean of the fold models' " + ("predictions" if plan.regression else "probabilities")),
            "decision_threshold": st.get("decision_threshold", "0.5"), "threshold_used": plan.cut,
            "classes": plan.classes, "task_spec": plan.spec.to_dict(), "model": plan.run["model"],
            "gene_slides": st.get("gene_slides"), "device": device, "train_seed": plan.run["seed"]}


def _new_eval_run(conn: sa.Connection, plan: Plan, cohort: str, parent: int, device: str) -> int:
    return create_run(conn, kind="evaluate", settings=_settings(plan, cohort, device), seed=plan.run["seed"],
                      cohort=cohort, task=plan.run["task"], model=plan.run["model"],
                      embedding_set_id=plan.info.embedding_set_id, encoder_id=plan.info.encoder_id,
                      parent_run_id=parent, progress_total=len(plan.slide_ids), progress_unit="slide")


def _predicted(conn: sa.Connection, run_id: int) -> set[str]:
    return set(query_numpy(conn, "SELECT slide_id FROM predictions WHERE run_id = $1",
                           [int(run_id)])["slide_id"].tolist())


def _rows(plan: Plan, run_id: int, index, outs) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    preds, splits, tiles, scores = [], [], [], []
    for o in outs:
        sid = index.slide_ids[o.position]
        label, target = plan.targets.get(sid, (None, None))
        if plan.regression:
            score = float(o.output[0])
            predicted = f"{score:.6g}"
        else:
            probs = o.output
            k = int(probs.argmax()) if plan.cut is None else int(probs[1] >= plan.cut)
            score = float(probs[1]) if len(probs) == 2 else float(probs.max())
            predicted = plan.classes[k] if k < len(plan.classes) else str(k)
        preds.append({"run_id": run_id, "fold": 0, "slide_id": sid, "subset": "test", "label": label,
                      "target": target, "score": score, "predicted": predicted})
        splits.append({"run_id": run_id, "fold": 0, "slide_id": sid, "case_id": plan.case_of[sid],
                       "subset": "test"})
        if len(o.attention):
            if len(o.attention) != len(index.tile_ids[o.position]):
                raise HiststoreError(f"{len(o.attention)} attention values for the {len(index.tile_ids[o.position])} "
                                     f"tiles of slide {sid}")
            tiles.append(index.tile_ids[o.position])
            scores.append(o.attention)
    att = {"run_id": np.full(sum(len(t) for t in tiles), run_id, np.int64),
           "fold": np.zeros(sum(len(t) for t in tiles), np.int32),
           "tile_id": np.concatenate(tiles) if tiles else np.zeros(0, np.int64),
           "score": np.concatenate(scores) if scores else np.zeros(0, np.float32)}
    frame = pd.DataFrame(preds)
    frame["label"] = frame["label"].astype("string")
    frame["target"] = frame["target"].astype("Float64")
    return frame, pd.DataFrame(splits), att


def _commit_batch(store: Store, plan: Plan, run_id: int, index, outs) -> int:
    preds, splits, att = _rows(plan, run_id, index, outs)
    with store.commit(f"{len(outs)} slides of run {run_id}") as conn:
        done = _predicted(conn, run_id)
        fresh = ~preds["slide_id"].isin(done)  # another process resuming this run may have written some
        if fresh.all():
            insert_frame(conn, "predictions", preds)
            insert_frame(conn, "splits", splits)
            if len(att["tile_id"]):
                insert_frame(conn, "attention", att)
            fault_point("predict.mid_commit")
        elif fresh.any():
            raise HiststoreError(f"run {run_id} is being written by another process", hint="let it finish")
        n = len(done) + int(fresh.sum())
        record_progress(conn, run_id, done=n)
    fault_point("predict.after_batch")
    return n


def _metric_rows(plan: Plan, preds: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """Slide and case level metrics of the labelled predictions (fold 0, subset test)."""
    from histstore.evaluation.case_level import case_metrics
    from histstore.mil.metrics import classification_metrics, regression_metrics

    lab = preds[preds["target"].notna()]
    rows = [{"fold": None, "subset": "cohort", "name": "n_slides", "value": float(len(preds))},
            {"fold": None, "subset": "cohort", "name": "n_labelled", "value": float(len(lab))}]
    if lab.empty:
        return rows, []
    cases = lab["case_id"].astype(str).to_numpy()
    score = lab["score"].to_numpy(np.float64)
    notes = []
    if plan.regression:
        target = lab["target"].to_numpy(np.float64)
        m = regression_metrics(target, score)
        cm = case_metrics(cases, target, score, True)
    else:
        y = lab["target"].to_numpy(np.float64).astype(np.int64)
        c = len(plan.classes)
        if c == 2:
            probs = np.stack([1.0 - score, score], axis=1)
            m = classification_metrics(y, probs, 2, threshold=plan.cut)
            cm = case_metrics(cases, y, probs, False, 2)
        else:  # per-class probabilities are not stored: metrics of the predicted classes only
            pred = np.array([plan.classes.index(p) for p in lab["predicted"].astype(str)])
            m = classification_metrics(y, np.eye(c)[pred], c)
            m.values["auc"] = math.nan
            cm = case_metrics(cases, y, np.eye(c)[pred], False, c)
            cm.values["case_auc"] = math.nan
            notes.append(f"{c} classes: AUC needs per-class scores, which are not stored")
    rows += [{"fold": 0, "subset": "test", "name": k, "value": v} for k, v in {**m.values, **cm.values}.items()]
    return rows, notes


def _mean_abs_log2fc(conn: sa.Connection, plan: Plan, preds: pd.DataFrame) -> dict:
    """The gene's mean |log2FC| over the labelled cases (subset cohort, as train writes it):
    a gene evaluate parent's per-gene table and report plot AUC against it."""
    cases = sorted(set(preds.loc[preds["target"].notna(), "case_id"].astype(str)))
    src = plan.spec.source
    value = conn.exec_driver_sql(
        "SELECT avg(abs(log2_fold_change)) FROM fold_changes WHERE gene = ? AND case_id IN "
        "(SELECT unnest(?::VARCHAR[]))" + (" AND source = ?" if src else ""),
        (plan.spec.gene, cases, *([src] if src else []))).scalar()
    return {"fold": None, "subset": "cohort", "name": "mean_abs_log2fc", "value": value}


def _apply(store: Store, plan: Plan, run_id: int, device, show_progress: bool) -> PredictReport:
    """Predict the plan's slides not yet in run_id, in batches of commits; then its metrics."""
    import torch

    from histstore.embeddings.bags import bag_index
    from histstore.evaluation.run_stats import run_statistics
    from histstore.mil.apply import apply_models
    from histstore.mil.bag_source import StreamedBags

    t0 = time.perf_counter()
    with store.read() as conn:
        done = _predicted(conn, run_id)
        todo = [s for s in plan.slide_ids if s not in done]
        index = bag_index(conn, plan.info, todo) if todo else None
    report = PredictReport(run_id, plan.run["run_id"], plan.run["task"], plan.run["model"], "running", plan.use,
                           notes=list(plan.notes))
    bar = progress_bar(total=len(plan.slide_ids), initial=len(done), unit="slide",
                       desc=f"predict {plan.run['task']} (run {run_id})", disable=not show_progress)
    try:
        with Heartbeat(store, run_id) as beat, \
                run_outcome(store, run_id, f"`histstore predict --resume {run_id}` continues it"):
            if todo:
                for m in plan.models:
                    m.to(device)
                dtype = torch.float16 if np.dtype(index.dtype) == np.float16 else torch.float32
                source = StreamedBags(index.reader(store), index.lengths, index.dim, dtype, device,
                                      names=index.slide_ids)
                pending = []
                for out in apply_models(plan.models, source, range(len(todo)), plan.regression):
                    pending.append(out)
                    bar.update(1)
                    if len(pending) >= COMMIT_SLIDES:
                        _commit_batch(store, plan, run_id, index, pending)
                        beat.touch()
                        pending = []
                if pending:
                    _commit_batch(store, plan, run_id, index, pending)
            with store.read() as conn:
                preds = conn.exec_driver_sql(
                    "SELECT p.slide_id, s.case_id, p.label, p.target, p.score, p.predicted FROM predictions p "
                    "JOIN splits s USING (run_id, fold, slide_id) WHERE p.run_id = ? ORDER BY p.slide_id",
                    (run_id,)).all()
            preds = pd.DataFrame(preds, columns=["slide_id", "case_id", "label", "target", "score", "predicted"])
            rows, notes = _metric_rows(plan, preds)
            if plan.spec.gene is not None and preds["target"].notna().any():
                with store.read() as conn:
                    rows.append(_mean_abs_log2fc(conn, plan, preds))
            report.notes += notes
            with store.commit(f"the end of run {run_id}") as conn:
                conn.exec_driver_sql("DELETE FROM metrics WHERE run_id = ?", (run_id,))
                write_metrics(conn, run_id, rows)
                end_run(conn, run_id, "finished")
    finally:
        bar.close()
    report.status = "finished"
    report.n_slides = len(preds)
    report.n_labelled = int(preds["target"].notna().sum())
    report.metrics = {r["name"]: r["value"] for r in rows if r["subset"] == "test"}
    with store.read() as conn:
        report.intervals = run_statistics(conn, require_run(conn, run_id)).intervals
    report.seconds = time.perf_counter() - t0
    return report


# ------------------------------------------------------------------------------ entry points
def predict(store: Store, run: int | str, cohort: str, *, embeddings: str | None = None, task: str | None = None,
            use: str = "auto", device: str = "auto", show_progress: bool = True,
            notify: Callable[[str], None] | None = None) -> PredictReport:
    """Apply train run `run` to `cohort` (see the module docstring). use: "auto" (the final
    model if the run has one, else its fold models), "final" or "folds". task: with a gene
    run, one of its genes only (else every gene); with a single run, must be its task."""
    from histstore.devices import resolve_device

    if use not in USES:
        raise InvalidInput(f"--use must be one of {', '.join(USES)}, got {use!r}")
    dev = resolve_device(device)
    with store.session():
        with store.read() as conn:
            require_cohort(conn, cohort)
            asked, train_runs = _train_runs(conn, run, task)
            plans = [_plan(store, conn, r, cohort, embeddings, use) for r in train_runs]
        for p in plans:
            if notify is not None:
                notify(f"run {p.run['run_id']} ({p.run['task']}): {len(p.models)} "
                       f"{'final model' if p.use == 'final' else 'fold models'} on {len(p.slide_ids)} slides of "
                       f"cohort {cohort} ({len(p.targets)} labelled), embedding set {p.info.name}")
        if asked["run_id"] == plans[0].run["run_id"]:  # a single run, not a gene run's genes
            with store.commit("a new evaluate run") as conn:
                rid = _new_eval_run(conn, plans[0], cohort, asked["run_id"], str(dev))
            return _apply(store, plans[0], rid, dev, show_progress)
        report = _gene_runs(store, asked, plans, cohort, use, dev, show_progress, parent=None)
        if task is None:
            with store.read() as conn:
                skipped = [t for t, in conn.exec_driver_sql(
                    "SELECT task FROM runs WHERE parent_run_id = ? AND kind = 'train' ORDER BY task",
                    (asked["run_id"],)).all() if t not in {p.run["task"] for p in plans}]
            report.notes += [f"{t}: no checkpoints (the gene's training failed or did not finish), not predicted"
                             for t in skipped]
        return report


def _gene_runs(store: Store, asked: dict, plans: list[Plan], cohort: str, use: str, dev, show_progress: bool,
               parent: int | None) -> PredictReport:
    """One evaluate run per gene under one evaluate parent (new, or resumed: its finished
    genes are kept, its unfinished ones continued)."""
    t0 = time.perf_counter()
    existing: dict[int, dict] = {}
    if parent is None:
        with store.commit("a new evaluate run") as conn:
            parent = create_run(conn, kind="evaluate", seed=asked["seed"], cohort=cohort, task=asked["task"],
                                model=asked["model"], parent_run_id=asked["run_id"],
                                settings={"run": asked["run_id"], "cohort": cohort, "use": use,
                                          "genes": [p.run["task"] for p in plans], "device": str(dev)},
                                progress_total=len(plans), progress_unit="gene")
    else:
        with store.read() as conn:
            for (cid,) in conn.exec_driver_sql("SELECT run_id FROM runs WHERE parent_run_id = ? AND kind = "
                                               "'evaluate'", (parent,)).all():
                child = require_run(conn, cid)
                existing[int(child["settings"]["run"])] = child
    report = PredictReport(parent, asked["run_id"], asked["task"], asked["model"], "running")
    with Heartbeat(store, parent) as beat, \
            run_outcome(store, parent, f"`histstore predict --resume {parent}` continues it"):
        for i, plan in enumerate(plans):
            child = existing.get(plan.run["run_id"])
            if child is not None and child["status"] == "finished":
                continue
            with store.commit(f"gene {plan.run['task']} of run {parent}") as conn:
                if child is None:
                    cid = _new_eval_run(conn, plan, cohort, parent, str(dev))
                else:
                    cid = child["run_id"]
                    mark_running(conn, cid)
            report.children.append(_apply(store, plan, cid, dev, show_progress))
            with store.commit(f"progress of run {parent}") as conn:
                record_progress(conn, parent, done=i + 1)
            beat.touch()
        with store.commit(f"the end of run {parent}") as conn:
            end_run(conn, parent, "finished")
    report.status = "finished"
    report.seconds = time.perf_counter() - t0
    return report


def resume_predict(store: Store, run_id: int | str, device: str = "auto",
                   show_progress: bool = True) -> PredictReport:
    """Continue an interrupted evaluate run: its committed slides (and finished genes) are kept."""
    from histstore.devices import resolve_device

    dev = resolve_device(device)
    with store.session():
        with store.read() as conn:
            run = require_run(conn, run_id)
            if run["kind"] != "evaluate":
                raise InvalidInput(f"run {run['run_id']} is a {run['kind']} run: --resume continues evaluate runs")
            if run["status"] == "finished":
                raise InvalidInput(f"run {run['run_id']} already finished")
            st = run["settings"]
            asked, train_runs = _train_runs(conn, st["run"], None if "genes" in st else run["task"])
            if "genes" in st:
                train_runs = [r for r in train_runs if r["task"] in st["genes"]]
            embeddings = st.get("embeddings")
            plans = [_plan(store, conn, r, st["cohort"], embeddings, st["use"]) for r in train_runs]
        refuse_if_alive(store, run["run_id"])
        if "genes" in st:
            with store.commit(f"the resume of run {run['run_id']}") as conn:
                mark_running(conn, run["run_id"])
            return _gene_runs(store, asked, plans, st["cohort"], st["use"], dev, show_progress, parent=run["run_id"])
        with store.commit(f"the resume of run {run['run_id']}") as conn:
            mark_running(conn, run["run_id"])
        return _apply(store, plans[0], run["run_id"], dev, show_progress)
