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

__all__ = ["Spool", "Upload"]

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

    def read_chunk(self, model_id: str, index: int) -> bytes:
        with self._lock:
            entry = self._models.get(model_id)
        if entry is None:
            raise WireError("gone", f"model {model_id!r} is no longer offered (its round is over); fetch new work")
        path, ref = entry
        if not 0 <= index < len(ref.chunks):
            raise WireError("not_found", f"model {model_id!r} has chunks 0..{len(ref.chunks) - 1} (asked for {index})")
        try:
            with open(path, "rb") as f:
                f.seek(index * ref.chunk_bytes)
                return f.read(ref.chunk_bytes)
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

    def put_chunk(self, up: Upload, index: int, data: bytes) -> None:
        if not 0 <= index < up.num_chunks:
            raise WireError("bad_chunk", f"chunk index {index} is out of range 0..{up.num_chunks - 1}", record=True)
        want = up.expected_len(index)
        if len(data) != want:
            raise WireError("bad_chunk", f"chunk {index} has {len(data)} bytes, expected {want} (truncated or padded chunk)", record=True)
        digest = hashlib.sha256(data).hexdigest()
        if digest != up.manifest.chunks[index]:
            raise WireError("bad_chunk", f"chunk {index} sha256 {digest[:12]}... does not match the manifest's "
                            f"{up.manifest.chunks[index][:12]}... (corrupted in transit); send it again", record=True)
        fd = os.open(up.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, index * up.chunk_bytes)
        finally:
            os.close(fd)
        with up.lock:
            up.received.add(index)

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
