"""`histstore embed`: tiles of a cohort -> one embedding set of per-slide zarr arrays.

The frozen encoder embeds every tile of every slide; slides already registered in the set are
skipped, a half-written array is discarded and redone, and the set is reused when encoder and
settings are the same (nothing is ever silently overwritten). Before each slide is registered
the encoder's weights are checked to be unchanged (against a copy in memory; a slide embedded
with changed weights is discarded and the run stops). Tiles are stain-normalised (default: one
Macenko fit per slide, histstore.embeddings.slide_stain), and each slide's fit is recorded in
`slide_stain` in the commit that registers its array.


Catalog access is short: the cohort and encoder are read at the start, the set and an `embed`
run are registered in one commit, and each finished slide is registered in its own commit
(the array moved into place and its row written while holding the write lock, after checking
that another embed of the same set did not register it meanwhile). Nothing is held while
tiles are read and embedded; the run's progress and heartbeat show in `histstore status`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from histstore.catalog.cohorts import cohort_slide_ids
from histstore.cluster import ClusterSpec, DaskRunner, Task, check_shared_store, parse_cluster, remove_token
from histstore.embeddings import arrays
from histstore.embeddings.sets import (EmbeddingSetInfo, finished_slides, get_or_create_set,
                                       register_array, set_status)
from histstore.embeddings.stain_settings import STAIN_NORMS, StainSettings, check_stain_norm
from histstore.encoder_catalog import EncoderInfo, find_encoder, register_encoder
from histstore.errors import EmptyCohort, HiststoreError, InvalidInput, MissingStep
from histstore.faults import fault_point
from histstore.ids import check_id
from histstore.jobs import Heartbeat, interrupt_dead_runs, record_progress
from histstore.progress import TileRate, progress_bar
from histstore.runs import create_run, end_run, run_outcome
from histstore.store import Store

DTYPES = ("float16", "float32")


@dataclass
class EmbedReport:
    embedding_set: str
    embedding_set_id: int
    created: bool
    n_slides: int
    n_skipped: int
    n_embedded: int
    n_tiles: int
    seconds: float
    device: str
    precision: str
    warnings: list[str] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0


def choose_tiling(conn: sa.Connection, slide_ids: list[str], tiling: str | None) -> str:
    """The tiling settings key to embed: the given one (key or unique prefix), else the only one."""
    rows = conn.exec_driver_sql(
        "SELECT settings_key, any_value(tile_size), any_value(target_mpp), count(*) FROM tilings "
        "WHERE slide_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1 ORDER BY 1", (slide_ids,)).all()
    if not rows:
        raise MissingStep("the cohort's slides have no tiles", hint="run `histstore ingest` first")
    if tiling is not None:
        match = [r for r in rows if r[0].startswith(tiling)]
        if len(match) != 1:
            raise InvalidInput(f"tiling {tiling!r} matches {len(match)} of the cohort's tilings: "
                               + ", ".join(f"{r[0]} ({r[1]}px@{r[2]:g}mpp, {r[3]} slides)" for r in rows))
        return match[0][0]
    if len(rows) > 1:
        raise InvalidInput("the cohort's slides have several tilings; choose one with --tiling: "
                           + ", ".join(f"{r[0]} ({r[1]}px@{r[2]:g}mpp, {r[3]} slides)" for r in rows))
    return rows[0][0]


@dataclass
class _EncoderPlan:
    """An encoder to use: registered already (`info`), or to register (name and fields)."""
    info: EncoderInfo | None
    name: str
    method: str
    architecture: str
    dim: int
    settings: dict
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None

    def register(self, conn: sa.Connection) -> EncoderInfo:
        """The catalog's encoder of this name (registered meanwhile by another process, or
        now)."""
        if self.info is not None:
            return self.info
        return find_encoder(conn, self.name) or register_encoder(
            conn, name=self.name, method=self.method, architecture=self.architecture, dim=self.dim,
            settings=self.settings, checkpoint_path=self.checkpoint_path,
            checkpoint_sha256=self.checkpoint_sha256)


def _resolve_encoder(store: Store, found: EncoderInfo | None, ref: str, weights: Path | None,
                     allow_random: bool, seed: int):
    """(_EncoderPlan, module, dim): a catalog encoder (`found`), or an architecture with local
    weights or (only when allowed) random init, to be registered. Runs holding no catalog
    connection (it may hash a large checkpoint)."""
    import torch

    from histstore.encoders.backbones import ARCHS, build_backbone
    from histstore.hashing import sha256_file

    info = found
    if info is not None:
        plan = _EncoderPlan(info, info.name, info.method, info.architecture, info.dim, info.settings,
                            info.checkpoint_path, info.checkpoint_sha256)
        if weights is not None:
            raise InvalidInput(f"encoder {ref!r} is registered with its own weights; drop --weights")
        if info.method == "random":
            torch.manual_seed(int(info.settings.get("seed", 0)))
            model, dim = build_backbone(info.architecture, None, allow_random=True)
            return plan, model, dim
        path = store.resolve(info.checkpoint_path)
        if not path.is_file():
            raise MissingStep(f"checkpoint of encoder {info.name} is missing: {path}")
        if info.checkpoint_sha256 and sha256_file(path) != info.checkpoint_sha256:
            raise HiststoreError(f"checkpoint {path} changed since encoder {info.name} was registered "
                                 "(sha256 differs); register it again under a new name")
        model, dim = build_backbone(info.architecture, path)
        return plan, model, dim
    if ref not in ARCHS:
        require = f"no encoder {ref!r} in the catalog and no architecture of that name"
        raise InvalidInput(require, hint=f"use a registered encoder or one of {', '.join(ARCHS)}")
    if weights is not None:
        model, dim = build_backbone(ref, weights)  # wrong architecture -> InvalidInput
        sha = sha256_file(weights)
        plan = _EncoderPlan(None, f"{ref}-{sha[:10]}", "pretrained", ref, dim,
                            {"weights_file": str(Path(weights).resolve())},
                            str(Path(weights).resolve()), sha)
        return plan, model, dim
    if not allow_random:
        raise InvalidInput(f"{ref} needs weights: pass --weights FILE (e.g. ImageNet weights you have)",
                           hint="or --random-init to embed with an untrained network, marked as random")
    torch.manual_seed(seed)
    model, dim = build_backbone(ref, None, allow_random=True)
    return _EncoderPlan(None, f"{ref}-random-seed{seed}", "random", ref, dim, {"seed": seed}), model, dim


def _encoder_ref(plan: _EncoderPlan, model, store: Store, seed: int):
    """How a worker rebuilds this encoder (checkpoint path on the shared store, or seed)."""
    from histstore.embeddings.slide_embed import EncoderRef, state_hash

    path = None if plan.checkpoint_path is None else str(store.resolve(plan.checkpoint_path))
    seed = int((plan.settings or {}).get("seed", seed)) if plan.method == "random" else seed
    return EncoderRef(plan.architecture, plan.method, path, plan.checkpoint_sha256, seed, state_hash(model))


def embed(store: Store, encoder: str, cohort: str, *, tiling: str | None = None,
          weights: Path | None = None, allow_random: bool = False, seed: int = 0,
          stain_norm: str = "macenko", batch_size: int = 64, device: str = "auto",
          workers: int | None = None, precision: str = "auto", name: str | None = None,
          dtype: str = "float16", show_progress: bool = True, stain_tiles: int = 128,
          cluster: ClusterSpec | str | None = None) -> EmbedReport:
    """Embed the cohort's tiles (see the module docstring). stain_norm: `macenko` (one fit
    per slide from up to stain_tiles sampled tiles), `macenko-tile` (a fit per tile) or `none`.
    cluster (histstore.cluster): `none` embeds here, with `workers` tile-reading processes;
    otherwise one Dask task per slide (`workers`: the cluster's size), registered here."""
    import torch

    from histstore.devices import resolve_amp, resolve_device
    from histstore.embeddings.dataset import load_slide_tiles
    from histstore.embeddings.slide_embed import EmbedJob

    stain = StainSettings(check_stain_norm(stain_norm), max_tiles=stain_tiles)
    if dtype not in DTYPES:
        raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise InvalidInput("--batch-size must be >= 1")
    if name is not None:
        check_id(name, "embedding set name (--name)")
    check_id(encoder, "encoder name (--encoder)")
    where = cluster if isinstance(cluster, ClusterSpec) else parse_cluster(cluster)
    if where.distributed:
        where = parse_cluster(str(where), workers)
    dev = resolve_device(device)
    amp_dtype = resolve_amp({"auto": "auto", "fp32": "off", "bf16": "bf16", "fp16": "fp16"}[precision], dev)
    if workers is None:
        # on a CPU the reader shares cores with the model: one background thread in this
        # process, so no batch is pickled between processes and no other process competes
        # with the model's OpenMP threads (bench_embed's "tile reader" row times it against 2
        # reader processes)
        workers = 0 if dev.type == "cpu" else 8
    t_start = time.perf_counter()
    import json

    with store.session():
        with store.read() as conn:
            slide_ids = cohort_slide_ids(conn, cohort)
            ingested = set(r[0] for r in conn.exec_driver_sql(
                "SELECT slide_id FROM slides WHERE status = 'ingested'").all())
            slide_ids = [s for s in slide_ids if s in ingested]
            if not slide_ids:
                raise EmptyCohort(f"cohort {cohort!r} has no ingested slides", hint="run `histstore ingest` first")
            key = choose_tiling(conn, slide_ids, tiling)
            tiling_row = conn.exec_driver_sql(
                "SELECT settings FROM tilings WHERE settings_key = ? LIMIT 1", (key,)).scalar()
            found = find_encoder(conn, encoder)
        plan, model, dim = _resolve_encoder(store, found, encoder, weights, allow_random, seed)
        tiling_settings = json.loads(tiling_row) if isinstance(tiling_row, str) else tiling_row
        tiling_settings = {k: v for k, v in tiling_settings.items() if k != "read"}
        settings = {"encoder": plan.name, "encoder_sha256": plan.checkpoint_sha256,
                    "encoder_method": plan.method, "architecture": plan.architecture,
                    "tiling_key": key, "stain_norm": stain_norm, "dtype": dtype,
                    "input": "uint8 RGB / 255, ImageNet mean/std"}
        if stain.as_settings() is not None:  # per slide or per tile, and the fit's settings
            settings["stain_fit"] = stain.as_settings()
        set_name = name or f"{plan.name}@{key[:8]}" + ("" if stain_norm == "none" else f"-{stain_norm}")
        run_id = None
        with store.commit("the embedding set") as conn:
            enc = plan.register(conn)
            info, created = get_or_create_set(
                conn, name=set_name, kind="computed", settings=settings, dim=dim, dtype=dtype,
                encoder_id=enc.encoder_id, tiling_key=key, tiling_settings=tiling_settings,
                stain_norm=stain_norm)
            if name is not None and info.name != name:
                raise InvalidInput(f"these settings already have embedding set {info.name!r}",
                                   hint=f"use --name {info.name} or drop --name")
            done = finished_slides(conn, info.embedding_set_id)
            todo = [s for s in slide_ids if s not in done]
            interrupt_dead_runs(conn, "its finished slides are kept; this embed continues the set",
                                "r.kind = 'embed' AND r.embedding_set_id = ?", (info.embedding_set_id,))
            if todo:
                run_id = create_run(conn, kind="embed", settings={**settings, "batch_size": batch_size,
                                                                  "precision": precision, "device": str(dev),
                                                                  "batchnorm": "folded into the convolutions"},
                                    seed=seed, cohort=cohort, model=enc.name,
                                    embedding_set_id=info.embedding_set_id, encoder_id=enc.encoder_id,
                                    name=info.name, progress_total=len(slide_ids), progress_unit="slide")
                record_progress(conn, run_id, done=len(slide_ids) - len(todo))
        set_dir = info.directory(store)
        set_dir.mkdir(parents=True, exist_ok=True)
        arrays.clear_partials(set_dir)  # leftovers of interrupted runs (never a live writer's)
        report = EmbedReport(info.name, info.embedding_set_id, created, len(slide_ids), len(done),
                             0, 0, 0.0, f"Dask {where} workers ({device})" if where.distributed else str(dev),
                             str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32")
        if todo:
            with store.read() as conn:  # not in the commit above: a large cohort's tiles take a while
                slides = load_slide_tiles(conn, todo, key)
            with Heartbeat(store, run_id, start_later=True) as beat, \
                    run_outcome(store, run_id, "run the same `histstore embed` again to continue"):
                if where.distributed:
                    report.n_embedded, report.n_tiles = _run_distributed(
                        store, info, slides, _encoder_ref(plan, model, store, seed),
                        EmbedJob(stain, batch_size, dtype, dim, device, precision), where, show_progress,
                        run_id, len(slide_ids), beat, report.warnings)
                else:
                    report.n_embedded, report.n_tiles = _run(
                        store, info, slides, model, dev, amp_dtype, stain, batch_size, workers, dtype,
                        show_progress, run_id, len(slide_ids), beat, report.warnings)
        with store.commit("the end of the embedding run") as conn:
            if len(finished_slides(conn, info.embedding_set_id)) >= len(slide_ids):
                set_status(conn, info.embedding_set_id, "complete")
            if run_id is not None:
                end_run(conn, run_id, "finished")
    report.seconds = time.perf_counter() - t_start
    return report


def _register(store: Store, info: EmbeddingSetInfo, writer: arrays.ArrayWriter, sl, run_id: int,
              done: int, stainer, slide_no: int, warnings: list[str]) -> bool:
    """Publish a finished array and register it with its slide_stain row, in one commit; False
    (array discarded) when another process registered the slide in this set meanwhile."""
    checksum = writer.finish()
    fault_point("embed.after_array_write")
    note = None
    with store.commit(f"slide {sl.slide_id}") as conn:
        taken = conn.exec_driver_sql(
            "SELECT count(*) FROM embedding_arrays WHERE embedding_set_id = ? AND slide_id = ?",
            (info.embedding_set_id, sl.slide_id)).scalar()
        if not taken:
            writer.publish()
            fault_point("embed.mid_commit")
            register_array(conn, info, sl.slide_id, sl.tiling_id, len(sl), checksum)
            note = stainer.record(conn, info.embedding_set_id, slide_no)
        record_progress(conn, run_id, done=done)
    if taken:
        writer.discard()
        stainer.forget(slide_no)
    elif note:
        warnings.append(note)
    fault_point("embed.after_commit")
    return not taken


def _run(store: Store, info: EmbeddingSetInfo, slides, model, dev, amp_dtype, stain: StainSettings,
         batch_size, workers, dtype, show_progress, run_id: int, n_cohort: int, beat: Heartbeat,
         warnings: list[str]) -> tuple[int, int]:
    """Embed the slides in this process; returns (slides registered by this run, tiles embedded)."""
    from histstore.embeddings.dataset import TileDataset
    from histstore.embeddings.slide_embed import embed_loop, frozen_copy, prepare_model, unchanged
    from histstore.embeddings.slide_stain import SlideStainer

    model = prepare_model(model, dev, amp_dtype)
    before = frozen_copy(model)
    stainer = SlideStainer(slides, TileDataset(slides).offsets, stain)
    registered = 0
    bar = progress_bar(total=sum(len(s) for s in slides), desc=f"embed {info.name}", unit="tile",
                       disable=not show_progress)
    started = []

    def on_batch(n: int) -> None:
        if not started:  # the tile readers (if any) are forked before the heartbeat thread exists
            beat.start()
            started.append(True)
        bar.update(n)

    def on_slide(writer: arrays.ArrayWriter, slide_no: int) -> None:
        nonlocal registered
        if not unchanged(model, before):  # checked before each slide is registered: a compare in memory
            writer.discard()
            raise HiststoreError("the encoder's weights changed during embedding: results discarded")
        registered += _register(store, info, writer, slides[slide_no], run_id,
                                n_cohort - len(slides) + slide_no + 1, stainer, slide_no, warnings)
        beat.touch()

    try:
        total = embed_loop(slides, model, dev, amp_dtype, stainer, batch_size, workers, dtype, info.dim,
                           info.directory(store), on_slide, on_batch)
    finally:
        bar.close()
    return registered, total


def _register_result(store: Store, info: EmbeddingSetInfo, res, tiling_id: int, run_id: int,
                     done: int, warnings: list[str]) -> bool:
    """A worker's finished array (SlideEmbedResult), published and registered with its
    slide_stain row in one commit, exactly as `_register` does in-process; False (array
    discarded) when another process registered the slide meanwhile."""
    set_dir = info.directory(store)
    fault_point("embed.after_array_write")
    note = None
    with store.commit(f"slide {res.slide_id}") as conn:
        taken = conn.exec_driver_sql(
            "SELECT count(*) FROM embedding_arrays WHERE embedding_set_id = ? AND slide_id = ?",
            (info.embedding_set_id, res.slide_id)).scalar()
        if not taken:
            arrays.publish_partial(set_dir, res.partial, arrays.slide_key(res.slide_id))
            fault_point("embed.mid_commit")
            register_array(conn, info, res.slide_id, tiling_id, res.n_rows, res.checksum)
            if res.stain is not None:
                note = res.stain.write(conn, info.embedding_set_id)
        record_progress(conn, run_id, done=done)
    if taken:
        arrays.ArrayWriter.discard_path(res.partial, set_dir)
    elif note:
        warnings.append(note)
    fault_point("embed.after_commit")
    return not taken


def _run_distributed(store: Store, info: EmbeddingSetInfo, slides, ref, job, where: ClusterSpec,
                     show_progress: bool, run_id: int, n_cohort: int, beat: Heartbeat,
                     warnings: list[str]) -> tuple[int, int]:
    """Embed the slides on a Dask cluster, one task per slide (largest first); this process
    registers each array as its task completes. A slide whose workers died too often (or that
    failed on its worker) is left unregistered and named in the error raised at the end, after
    every other slide is registered: running the same command again embeds just those."""
    from histstore.embeddings.slide_embed import embed_slide

    set_dir = info.directory(store)
    tiling_of = {sl.slide_id: sl.tiling_id for sl in slides}
    registered = tiles = 0
    failed: list[str] = []
    done = n_cohort - len(slides)
    bar = progress_bar(total=n_cohort, desc=f"embed {info.name}", unit="slide", disable=not show_progress)
    bar.update(done)
    rate = TileRate()
    try:
        abandon = lambda res: arrays.ArrayWriter.discard_path(res.partial, set_dir)  # noqa: E731
        with DaskRunner(where, abandon=abandon) as runner:
            if runner.has_resource("GPU"):  # GPU workers take one GPU each
                runner.resources = {"GPU": 1}
            token = check_shared_store(runner, store.root)
            try:
                beat.start()
                tasks = [Task(sl.slide_id, embed_slide, (str(set_dir), sl, ref, job, str(token)), len(sl))
                         for sl in slides]
                for result in runner.run(tasks):
                    if result.error is not None:
                        failed.append(result.error)
                        continue
                    res = result.value
                    done += 1
                    try:
                        registered += _register_result(store, info, res, tiling_of[res.slide_id], run_id, done,
                                                       warnings)
                    except BaseException:  # not registered: nobody else will publish it
                        arrays.ArrayWriter.discard_path(res.partial, set_dir)
                        raise
                    tiles += res.n_rows
                    beat.touch()
                    bar.update(1)
                    bar.set_postfix(tiles_s=rate.add(res.n_rows), failed=len(failed), refresh=False)
            finally:
                remove_token(token)  # first: tasks still running discard their arrays (the lease)
    finally:
        bar.close()
        arrays.clear_partials(set_dir)  # arrays of workers that died or were cancelled (this host)
    if failed:
        raise HiststoreError(f"{len(failed)} of {len(slides)} slides not embedded ({'; '.join(failed[:3])}"
                             + ("; ..." if len(failed) > 3 else "") + "); the others are registered - run the "
                             "same command again to embed the rest")
    return registered, tiles
