"""The embed loop, and embedding one slide on a (Dask) worker.

`embed_loop` embeds slides in order in slide-aligned batches (a slide's bytes do not depend on
which slides share its run) and hands each finished array, still under its temporary name, to
a callback. `histstore.embed` runs it over a whole cohort in one process and registers each
slide as it completes; `embed_slide` runs it over ONE slide on a worker and returns what the
writer needs to register it (`SlideEmbedResult`): the catalog is never touched on a worker.

A worker process loads an encoder once and keeps it (`_MODELS`, keyed by the checkpoint's
sha256, or architecture + seed for a random init); the weights it loaded are checked against
the writer's (a hash of the state dict) when loaded, and compared with a copy kept on the
device after each slide (frozen means frozen).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from histstore.embeddings import arrays
from histstore.embeddings.dataset import SlideTiles
from histstore.embeddings.stain_settings import StainSettings
from histstore.errors import HiststoreError
from histstore.faults import fault_point


def state_hash(model) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def prepare_model(model, dev, amp_dtype=None):
    """The frozen encoder on its device, in eval mode, BatchNorm folded into the convolutions
    (channels-last on a CPU). Hash the weights (`state_hash`) before: folding changes them.

    amp_dtype (the autocast dtype the model will run under, or None): convolution and linear
    weights are stored in it, since autocast casts them to it at every call anyway; the
    results are bit-identical and each batch skips re-casting the whole encoder
    (tests/embeddings/test_slide_embed_model.py; bench_embed, row "inference model")."""
    import torch

    from histstore.encoders.backbones import fold_batchnorm

    model = fold_batchnorm(model.to(dev).eval())
    if dev.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    if amp_dtype is not None:
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.to(amp_dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# Tiles are read (on a CPU also stain-normalised and preprocessed) by a niced background
# thread beside the model. Where torch's threads hold every core it gets the CPU mostly while
# the model waits for its next batch, and it fills the gaps in the model's parallel work:
# bench_embed's "tile reader" row times it against reading each batch in turn with the model
# (False here) and against reader processes.
READ_IN_BACKGROUND = True


def embed_loop(slides: Sequence[SlideTiles], model, dev, amp_dtype, stainer, batch_size: int, workers: int,
               dtype: str, dim: int, set_dir: Path, on_slide: Callable, on_batch: Callable | None = None) -> int:
    """Embed the slides' tiles in order; `on_slide(writer, slide_no)` when a slide's array is
    complete (under .partial/: the callback publishes or keeps it), `on_batch(n_tiles)` after
    each batch. Returns the tiles embedded."""
    import torch

    from histstore.embeddings.dataset import TileDataset, tile_batches
    from histstore.encoders.backbones import preprocess

    dataset = TileDataset(slides)
    # On a CPU with the in-process reader, each slide's stain fit, its application and the
    # uint8 -> float preprocessing run where the tiles are read, so that only the model runs
    # here. Elsewhere they run here, on the model's device, once the batch has arrived. Same
    # operations per tile either way: the embeddings are identical
    # (tests/embeddings/test_slide_stain.py).
    on_reader = dev.type == "cpu" and workers == 0
    background = READ_IN_BACKGROUND

    def prepare(tiles, index):
        return preprocess(stainer.normalise(tiles, index), device=dev)

    loader = tile_batches(dataset, batch_size, workers, "none", pin_memory=dev.type == "cuda",
                          transform=prepare if on_reader else None, background=background)
    offsets = dataset.offsets
    writer: arrays.ArrayWriter | None = None
    current = -1
    try:
        with torch.inference_mode():
            for tiles, index in loader:
                x = tiles if on_reader else prepare(tiles.to(dev, non_blocking=True), index.numpy())
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = model(x)
                out = out.float().cpu().numpy()
                index = index.numpy()
                pos = 0
                while pos < len(index):
                    slide_no = int(np.searchsorted(offsets, index[pos], side="right") - 1)
                    if slide_no != current:
                        writer = arrays.ArrayWriter(set_dir, slides[slide_no].slide_id, len(slides[slide_no]),
                                                    dim, dtype)
                        current = slide_no
                    end_row = offsets[slide_no + 1]
                    take = int(min(len(index), pos + (end_row - index[pos])))
                    writer.write(out[pos:take])
                    pos = take
                    if index[take - 1] == end_row - 1:  # slide complete
                        done, writer = writer, None
                        on_slide(done, slide_no)
                if on_batch is not None:
                    on_batch(len(index))
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return len(dataset)


@dataclass(frozen=True)
class EncoderRef:
    """What a worker needs to build the writer's encoder: a checkpoint (absolute path on the
    shared file system + sha256) or an architecture with a seed (random init)."""
    architecture: str
    method: str
    checkpoint: str | None
    sha256: str | None
    seed: int
    weights_hash: str      # state_hash of the writer's model: the worker's must be equal

    @property
    def cache_key(self) -> str:
        return self.sha256 if self.sha256 else f"{self.method}:{self.architecture}:seed{self.seed}"


@dataclass(frozen=True)
class EmbedJob:
    """A run's settings for each slide (the same on every worker)."""
    stain: StainSettings
    batch_size: int
    dtype: str
    dim: int
    device: str        # 'auto' on a worker: its GPU if it has one
    precision: str     # auto | fp32 | bf16 | fp16


@dataclass(frozen=True)
class SlideEmbedResult:
    slide_id: str
    partial: str       # the array under .partial/ (absolute path), for the writer to publish
    n_rows: int
    checksum: str
    stain: object      # slide_stain.StainRecord, or None (--stain-norm none)
    seconds: float
    host: str


_MODELS: dict[str, tuple] = {}  # per worker process: cache key -> (model, device, amp dtype, hash)


def _worker_model(ref: EncoderRef, job: EmbedJob):
    key = (ref.cache_key, job.device, job.precision)
    got = _MODELS.get(key)
    if got is not None:
        return got
    import torch

    from histstore.devices import resolve_amp, resolve_device
    from histstore.encoders.backbones import build_backbone
    from histstore.hashing import sha256_file

    if ref.checkpoint is not None:
        path = Path(ref.checkpoint)
        if not path.is_file():
            raise HiststoreError(f"encoder checkpoint {path} is not on this worker")
        if ref.sha256 and sha256_file(path) != ref.sha256:
            raise HiststoreError(f"encoder checkpoint {path} differs on this worker (sha256)")
        model, _ = build_backbone(ref.architecture, path)
    else:
        torch.manual_seed(ref.seed)
        model, _ = build_backbone(ref.architecture, None, allow_random=True)
    dev = resolve_device(job.device)
    amp = resolve_amp({"auto": "auto", "fp32": "off", "bf16": "bf16", "fp16": "fp16"}[job.precision], dev)
    weights = state_hash(model)
    model = prepare_model(model, dev, amp)
    if weights != ref.weights_hash:
        raise HiststoreError(f"the encoder built on this worker differs from the writer's "
                             f"({ref.architecture}: other torch/torchvision version?)")
    frozen = frozen_copy(model)
    _MODELS.clear()  # one encoder per worker at a time: GPU memory
    _MODELS[key] = got = (model, dev, amp, frozen)
    return got


def frozen_copy(model) -> list:
    """A copy of the weights on the model's device: checking later that nothing changed them
    (`unchanged`) is then a compare in memory, not a copy to the host and a hash."""
    return [v.detach().clone() for v in model.state_dict().values()]


def unchanged(model, frozen: list) -> bool:
    import torch

    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), frozen))


def embed_slide(set_dir: str, slide: SlideTiles, ref: EncoderRef, job: EmbedJob,
                lease: str | None = None) -> SlideEmbedResult:
    """On a worker: embed one slide into its array under .partial/ in the set's folder (shared
    store), and return what the writer registers. Pure apart from that file.

    lease: a file the writer keeps in the store while it registers results (the shared file
    system check's token); when it is gone (the writer stopped, was interrupted) the array is
    removed again instead of being left for nobody to register."""
    import os
    import socket

    if lease is not None and not os.path.exists(lease):
        raise HiststoreError(f"worker on {socket.gethostname()} cannot see the store at "
                             f"{os.path.dirname(lease)} (or its writer has stopped)")

    from histstore.embeddings.slide_stain import SlideStainer

    t0 = time.perf_counter()
    model, dev, amp, frozen = _worker_model(ref, job)
    stainer = SlideStainer([slide], np.array([0, len(slide)]), job.stain)
    finished: dict = {}

    def keep(writer: arrays.ArrayWriter, slide_no: int) -> None:
        finished.update(partial=str(writer.tmp), checksum=writer.finish(), stain=stainer.summary(slide_no))
        stainer.forget(slide_no)

    n = embed_loop([slide], model, dev, amp, stainer, job.batch_size, 0, job.dtype, job.dim, Path(set_dir), keep)
    try:
        fault_point(f"embed.worker_slide/{slide.slide_id}")
        if lease is not None and not os.path.exists(lease):
            raise HiststoreError("the writer has stopped: array discarded")
        if not unchanged(model, frozen):
            _MODELS.clear()
            raise HiststoreError("the encoder's weights changed during embedding: results discarded")
    except BaseException:
        arrays.ArrayWriter.discard_path(Path(finished["partial"]), Path(set_dir))
        raise
    return SlideEmbedResult(slide.slide_id, finished["partial"], n, finished["checksum"], finished["stain"],
                            time.perf_counter() - t0, socket.gethostname())
