"""`histstore embed`: tiles of a cohort -> one embedding set of per-slide zarr arrays.

The frozen encoder embeds every tile of every slide; slides already registered in the set are
skipped, a half-written array is discarded and redone, and the set is reused when encoder and
settings are the same (nothing is ever silently overwritten). After the run the encoder's
weights are checked to be unchanged.

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
from histstore.embeddings import arrays
from histstore.embeddings.sets import (EmbeddingSetInfo, finished_slides, get_or_create_set,
                                       register_array, set_status)
from histstore.encoder_catalog import EncoderInfo, find_encoder, register_encoder
from histstore.errors import EmptyCohort, HiststoreError, InvalidInput, MissingStep
from histstore.faults import fault_point
from histstore.ids import check_id
from histstore.jobs import Heartbeat, interrupt_dead_runs, record_progress
from histstore.progress import progress_bar
from histstore.runs import create_run, end_run, run_outcome
from histstore.store import Store

STAIN_NORMS = ("macenko", "none")
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


def _state_hash(model) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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


def embed(store: Store, encoder: str, cohort: str, *, tiling: str | None = None,
          weights: Path | None = None, allow_random: bool = False, seed: int = 0,
          stain_norm: str = "macenko", batch_size: int = 64, device: str = "auto",
          workers: int | None = None, precision: str = "auto", name: str | None = None,
          dtype: str = "float16", show_progress: bool = True) -> EmbedReport:
    import torch

    from histstore.devices import resolve_amp, resolve_device
    from histstore.embeddings.dataset import TileDataset, load_slide_tiles, tile_batches
    from histstore.encoders.backbones import preprocess

    if stain_norm not in STAIN_NORMS:
        raise InvalidInput(f"--stain-norm must be one of {', '.join(STAIN_NORMS)}")
    if dtype not in DTYPES:
        raise InvalidInput(f"--dtype must be one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise InvalidInput("--batch-size must be >= 1")
    if name is not None:
        check_id(name, "embedding set name (--name)")
    check_id(encoder, "encoder name (--encoder)")
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
                                                                  "precision": precision, "device": str(dev)},
                                    seed=seed, cohort=cohort, model=enc.name,
                                    embedding_set_id=info.embedding_set_id, encoder_id=enc.encoder_id,
                                    name=info.name, progress_total=len(slide_ids), progress_unit="slide")
                record_progress(conn, run_id, done=len(slide_ids) - len(todo))
        set_dir = info.directory(store)
        set_dir.mkdir(parents=True, exist_ok=True)
        arrays.clear_partials(set_dir)  # leftovers of interrupted runs (never a live writer's)
        report = EmbedReport(info.name, info.embedding_set_id, created, len(slide_ids), len(done),
                             0, 0, 0.0, str(dev), str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32")
        if todo:
            with store.read() as conn:
                slides = load_slide_tiles(conn, todo, key)
            with Heartbeat(store, run_id, start_later=True) as beat, \
                    run_outcome(store, run_id, "run the same `histstore embed` again to continue"):
                report.n_embedded, report.n_tiles = _run(
                    store, info, slides, model, dev, amp_dtype, stain_norm, batch_size, workers, dtype,
                    show_progress, preprocess, TileDataset, tile_batches, run_id, len(slide_ids), beat)
        with store.commit("the end of the embedding run") as conn:
            if len(finished_slides(conn, info.embedding_set_id)) >= len(slide_ids):
                set_status(conn, info.embedding_set_id, "complete")
            if run_id is not None:
                end_run(conn, run_id, "finished")
    report.seconds = time.perf_counter() - t_start
    return report


def _register(store: Store, info: EmbeddingSetInfo, writer: arrays.ArrayWriter, sl, run_id: int,
              done: int) -> bool:
    """Publish a finished array and register it, in one commit; False (array discarded) when
    another process registered the slide in this set meanwhile."""
    checksum = writer.finish()
    fault_point("embed.after_array_write")
    with store.commit(f"slide {sl.slide_id}") as conn:
        taken = conn.exec_driver_sql(
            "SELECT count(*) FROM embedding_arrays WHERE embedding_set_id = ? AND slide_id = ?",
            (info.embedding_set_id, sl.slide_id)).scalar()
        if not taken:
            writer.publish()
            fault_point("embed.mid_commit")
            register_array(conn, info, sl.slide_id, sl.tiling_id, len(sl), checksum)
        record_progress(conn, run_id, done=done)
    if taken:
        writer.discard()
    fault_point("embed.after_commit")
    return not taken


def _run(store: Store, info: EmbeddingSetInfo, slides, model, dev, amp_dtype, stain_norm,
         batch_size, workers, dtype, show_progress, preprocess, TileDataset, tile_loader,
         run_id: int, n_cohort: int, beat: Heartbeat) -> tuple[int, int]:
    """Embed the slides; returns (slides registered by this run, tiles embedded)."""
    import torch

    model = model.to(dev).eval()
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    before = _state_hash(model)
    dataset = TileDataset(slides)
    loader = tile_loader(dataset, batch_size, workers, stain_norm, pin_memory=dev.type == "cuda")
    offsets = dataset.offsets
    set_dir = info.directory(store)
    writer: arrays.ArrayWriter | None = None
    current = -1
    total = len(dataset)
    registered = 0
    bar = progress_bar(total=total, desc=f"embed {info.name}", unit="tile", disable=not show_progress)
    try:
        batches = iter(loader)  # forks the tile readers (if any) ...
        beat.start()            # ... before the heartbeat thread exists
        with torch.inference_mode():
            for tiles, index in batches:
                x = preprocess(tiles, device=dev)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = model(x)
                out = out.float().cpu().numpy()
                index = index.numpy()
                pos = 0
                while pos < len(index):
                    slide_no = int(np.searchsorted(offsets, index[pos], side="right") - 1)
                    if slide_no != current:
                        sl = slides[slide_no]
                        writer = arrays.ArrayWriter(set_dir, sl.slide_id, len(sl), info.dim, dtype)
                        current = slide_no
                    end_row = offsets[slide_no + 1]
                    take = int(min(len(index), pos + (end_row - index[pos])))
                    writer.write(out[pos:take])
                    pos = take
                    if index[take - 1] == end_row - 1:  # slide complete: move into place, register
                        sl = slides[slide_no]
                        registered += _register(store, info, writer, sl, run_id,
                                                n_cohort - len(slides) + slide_no + 1)
                        writer = None
                        beat.touch()
                bar.update(len(index))
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        bar.close()
    if _state_hash(model) != before:
        raise HiststoreError("the encoder's weights changed during embedding: results discarded")
    return registered, total
