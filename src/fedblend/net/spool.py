"""The server's disk spool: published models (sent down in chunks) and incoming uploads.

Memory stays bounded by a chunk, not a model: a published model is written tensor by tensor and
read back one chunk per request; an upload is written chunk by chunk at its offset into a sparse
file, each chunk checked against the sha256 the site announced, and the finished file checked
against the whole-file sha256 and parsed by ``codec.DiskWeights`` before anyone reads a tensor.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fedblend.errors import FedblendError
from fedblend.net.codec import DiskWeights, file_digests, write_weights
from fedblend.net.wire import ModelRef, UploadManifest, WireError
from fedblend.weights import Weights

__all__ = ["Spool", "Upload", "ChunkWriter"]

log = logging.getLogger(__name__)


@dataclass
class Upload:
    upload_id: str
    task_id: str
    site: str
    manifest: UploadManifest
    path: Path
    chunk_bytes: int
    received: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False

    @property
    def num_chunks(self) -> int:
        return len(self.manifest.chunks)

    def expected_len(self, index: int) -> int:
        start = index * self.chunk_bytes
        return min(self.chunk_bytes, self.manifest.size - start)


class ChunkWriter:
    """Writes one uploaded chunk straight into the spool file as it streams in (nothing buffered),
    then checks its length and sha256. A chunk received before is not written again."""

    def __init__(self, up: Upload, index: int) -> None:
        self.up, self.index = up, index
        self.want = up.expected_len(index)
        self.base = index * up.chunk_bytes
        self.skip = index in up.received
        self.n = 0
        self.h = hashlib.sha256()
        self.fd = -1 if self.skip else os.open(up.path, os.O_WRONLY)

    def write(self, piece: bytes) -> None:
        if self.n + len(piece) > self.want:
            self.abort()
            raise WireError("bad_chunk", f"chunk {self.index} is longer than the {self.want} bytes expected (padded chunk)", record=True)
        if not self.skip:
            os.pwrite(self.fd, piece, self.base + self.n)
            self.h.update(piece)
        self.n += len(piece)

    def finish(self) -> None:
        self.abort()
        if self.skip:
            return
        if self.n != self.want:
            raise WireError("bad_chunk", f"chunk {self.index} has {self.n} bytes, expected {self.want} (truncated or padded chunk)", record=True)
        digest = self.h.hexdigest()
        if digest != self.up.manifest.chunks[self.index]:
            raise WireError("bad_chunk", f"chunk {self.index} sha256 {digest[:12]}... does not match the manifest's "
                            f"{self.up.manifest.chunks[self.index][:12]}... (corrupted in transit); send it again", record=True)
        with self.up.lock:
            self.up.received.add(self.index)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spool:
    """Files under ``root``: ``models/<id>.safetensors`` and ``uploads/<id>.part``."""

    def __init__(self, root: str | Path, chunk_bytes: int) -> None:
        self.root = Path(root)
        self.chunk_bytes = chunk_bytes
        self.models_dir = self.root / "models"
        self.uploads_dir = self.root / "uploads"
        self.keep_dir = self.root / "keep"
        for d in (self.models_dir, self.uploads_dir, self.keep_dir):
            shutil.rmtree(d, ignore_errors=True)  # nothing in the spool survives a restart
            d.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, tuple[Path, ModelRef]] = {}
        self._lock = threading.Lock()

    # -- models going down ----------------------------------------------------------------------
    def publish(self, weights: Weights) -> ModelRef:
        tmp = self.models_dir / f"new-{secrets.token_hex(8)}.safetensors"
        write_weights(weights, tmp)
        dig = file_digests(tmp, self.chunk_bytes)
        model_id = dig.sha256[:24]
        path = self.models_dir / f"{model_id}.safetensors"
        os.replace(tmp, path)
        ref = ModelRef(model_id=model_id, size=dig.size, sha256=dig.sha256, chunk_bytes=dig.chunk_size, chunks=list(dig.chunks))
        with self._lock:
            self._models[model_id] = (path, ref)
        return ref

    def chunk_span(self, model_id: str, index: int) -> tuple[Path, int, int]:
        """(file, offset, length) of chunk ``index`` of a published model."""
        with self._lock:
            entry = self._models.get(model_id)
        if entry is None:
            raise WireError("gone", f"model {model_id!r} is no longer offered (its round is over); fetch new work")
        path, ref = entry
        if not 0 <= index < len(ref.chunks):
            raise WireError("not_found", f"model {model_id!r} has chunks 0..{len(ref.chunks) - 1} (asked for {index})")
        offset = index * ref.chunk_bytes
        return path, offset, min(ref.chunk_bytes, ref.size - offset)

    def read_chunk(self, model_id: str, index: int) -> bytes:
        path, offset, length = self.chunk_span(model_id, index)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise WireError("gone", f"model {model_id!r} is no longer offered (its round is over); fetch new work") from None

    def retire_models(self, keep: set[str]) -> None:
        with self._lock:
            drop = [m for m in self._models if m not in keep]
            for m in drop:
                path, _ = self._models.pop(m)
                path.unlink(missing_ok=True)

    # -- models kept between rounds -------------------------------------------------------------
    def keep(self, weights: Weights, tag: str) -> DiskWeights:
        """``weights`` as a file-backed DiskWeights under ``keep/`` (the previous file of ``tag`` is removed)."""
        if isinstance(weights, DiskWeights) and weights.path.parent == self.keep_dir and weights.path.name.startswith(f"{tag}-"):
            return weights
        path = self.keep_dir / f"{tag}-{secrets.token_hex(6)}.safetensors"
        write_weights(weights, path)
        kept = DiskWeights(path)
        for old in self.keep_dir.glob(f"{tag}-*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)
        return kept

    # -- updates coming up ----------------------------------------------------------------------
    def open_upload(self, task_id: str, site: str, manifest: UploadManifest, max_bytes: int) -> Upload:
        if manifest.size > max_bytes:
            raise WireError("too_large", f"update of {manifest.size} bytes exceeds max_update_mb "
                            f"({max_bytes} bytes); the server refuses it before storing a byte", record=True)
        n = math.ceil(manifest.size / self.chunk_bytes)
        if len(manifest.chunks) != n:
            raise WireError("bad_request", f"an update of {manifest.size} bytes in chunks of {self.chunk_bytes} bytes "
                            f"has {n} chunks, but the manifest lists {len(manifest.chunks)}", record=True)
        up = Upload(secrets.token_hex(12), task_id, site, manifest, self.uploads_dir / f"{task_id}-{secrets.token_hex(4)}.part",
                    self.chunk_bytes)
        with open(up.path, "wb") as f:
            f.truncate(manifest.size)
        return up

    def chunk_writer(self, up: Upload, index: int) -> ChunkWriter:
        if not 0 <= index < up.num_chunks:
            raise WireError("bad_chunk", f"chunk index {index} is out of range 0..{up.num_chunks - 1}", record=True)
        return ChunkWriter(up, index)

    def put_chunk(self, up: Upload, index: int, data: bytes) -> None:
        w = self.chunk_writer(up, index)
        w.write(data)
        w.finish()

    def finish(self, up: Upload) -> DiskWeights:
        """Check the assembled file; raises WireError('rejected') with the reason when it is bad."""
        missing = sorted(set(range(up.num_chunks)) - up.received)
        if missing:
            raise WireError("bad_request", f"cannot commit: chunks {missing[:10]}{'...' if len(missing) > 10 else ''} "
                            "were not received yet")
        h = hashlib.sha256()
        with open(up.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != up.manifest.sha256:
            raise WireError("rejected", "the assembled update does not match its announced sha256 (corrupt upload)", record=True)
        try:
            return DiskWeights(up.path)
        except FedblendError as exc:
            raise WireError("rejected", f"the update is not a valid weights file: {exc}", record=True) from None

    def discard(self, paths: list[Path]) -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
