"""VectorizedPool: simulate many sites of one TorchTask at once (stacked weights, vmap).

Training runs the chosen sites in chunks of at most ``chunk_size`` clients through
``StackedTrainer`` (one batched step for all clients of a chunk), which reproduces
``TorchTask.train`` for each site: same per-site seed (``site_seed``), same minibatch order
(``batch_plan``), same SGD/Adam/FedProx arithmetic, so the result equals ``SequentialPool``'s
within float tolerance. Evaluation scores one model on many sites in shared batches and sums per
site. Memory is bounded by the chunk (weights, gradients, optimizer state and the chunk's data),
never by the total number of sites or by the number of rounds.

Models that are a chain of ``nn.Linear`` and ReLU layers (logistic regression, the 2NN) train
without autograd: a hand-written forward/backward with batched matrix products
(``fedblend.sim.chain``), any SGD/Adam setting, on the CPU in client groups on one thread each.
Other plain-SGD models made of ``nn.Linear`` layers take a fused path (``fedblend.sim.fused``)
that updates the stacked weights with one GEMM per layer instead of gradient-then-update; the
rest runs ``vmap`` + autograd. Works for models without buffers, dropout or recurrent layers
(``vmap_blocker`` says why a model does not qualify); ``make_pool("auto", ...)`` falls back to
another pool for those. ``device="auto"`` uses the GPU when there is one.

    pool = VectorizedPool(runners, device="auto", chunk_size=128)
    updates = pool.train(plan, weights)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fedblend.data.base import ArraySplit
from fedblend.engine.site import SiteRunner, site_seed
from fedblend.errors import ConfigError
from fedblend.records import EvalReport, RoundPlan, SiteFailure, SiteStats, SiteUpdate
from fedblend.sim.heap import trim_heap
from fedblend.sim.stacked import ClientJob, StackedTrainer, batch_plan
from fedblend.weights import Weights

__all__ = ["VectorizedPool", "vmap_blocker", "resolve_device"]

log = logging.getLogger(__name__)

_NOT_VMAPPABLE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase, nn.RNNBase)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"pool device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {device!r})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"pool device {device!r} asked for, but no CUDA GPU is available; use 'auto' or 'cpu'")
    return dev


def _default_memory_mb(device: torch.device) -> int:
    """Working memory for one chunk of clients: 1 GiB on the CPU, a quarter of the free GPU memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(256, int(free / 4 / 2**20))
    return 1024


def vmap_blocker(task: Any) -> str | None:
    """Why ``task`` cannot be vectorized, or None when it can."""
    from fedblend.task.torch_task import TorchTask

    if not isinstance(task, TorchTask):
        return f"the task is a {type(task).__name__}, not a TorchTask"
    with torch.random.fork_rng(devices=[]):
        model = task.build_model()
    if any(True for _ in model.buffers()):
        return "the model has buffers (e.g. BatchNorm running statistics) that training changes"
    for name, m in model.named_modules():
        if isinstance(m, _NOT_VMAPPABLE):
            return f"the model has a {type(m).__name__} layer ({name!r}); dropout, normalisation and recurrent layers are not vectorized"
    return None


def _tensors(split: ArraySplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``TorchTask.to_tensors``, without copying on the CPU when the arrays allow it."""
    x = np.asarray(split.x)
    x = np.ascontiguousarray(x, dtype=np.int64 if x.dtype.kind in "iub" else np.float32)
    y = np.ascontiguousarray(np.asarray(split.y), dtype=np.int64)
    if not x.flags.writeable:
        x = x.copy()
    if not y.flags.writeable:
        y = y.copy()
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


class VectorizedPool:
    """Many sites of one TorchTask trained side by side; see the module docstring."""

    def __init__(
        self,
        runners: Sequence[SiteRunner],
        *,
        task: Any = None,
        device: str = "auto",
        chunk_size: int = 0,
        memory_mb: int | None = None,
        warm_up: bool = True,
    ) -> None:
        if not runners:
            raise ConfigError("VectorizedPool needs at least one SiteRunner (got none)")
        self.runners = {r.site_id: r for r in runners}
        if len(self.runners) != len(runners):
            raise ConfigError("VectorizedPool: site ids must be unique")
        self.task = task if task is not None else runners[0].task
        reason = vmap_blocker(self.task)
        if reason is not None:
            raise ConfigError(f"pool kind 'vectorized' cannot run this task: {reason}; use 'process' or 'sequential'")
        for r in runners:
            if r.task is not self.task and getattr(r.task, "get_params", lambda: None)() != self.task.get_params():
                raise ConfigError(
                    f"VectorizedPool: site {r.site_id!r} runs a different task than the others; "
                    "vectorization needs one model for all sites (use pool kind 'sequential' or 'process')"
                )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise ConfigError(
                f"VectorizedPool: 'chunk_size' must be an integer >= 0, 0 for automatic (got {chunk_size!r})"
            )
        self.device = resolve_device(device)
        self.memory_mb = int(memory_mb) if memory_mb is not None else _default_memory_mb(self.device)
        with torch.random.fork_rng(devices=[]):
            self.model = self.task.build_model().to(self.device)
        self.model.train()
        self.spec = {
            k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in self.model.state_dict().items()
        }
        n_params = sum(p.numel() for p in self.model.parameters())
        # weights, gradients, up to two optimizer buffers and temporaries: ~6 copies per client
        auto = max(1, int(self.memory_mb * 2**20 // max(1, n_params * 4 * 6)))
        self.chunk_size = chunk_size or min(auto, 1024)
        self.trainer = StackedTrainer(self.model, self.task, self.device)
        self._eval_model: nn.Module | None = None
        self._cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._fits: set[tuple[str, str]] = set()
        if warm_up:
            self._warm_up()

    # -- SitePool -------------------------------------------------------------------------------
    def site_ids(self) -> list[str]:
        return list(self.runners)

    def stats(self) -> dict[str, SiteStats]:
        return {sid: r.stats() for sid, r in self.runners.items()}

    def close(self) -> None:
        self._cache.clear()

    def train(self, plan: RoundPlan, weights: Weights) -> list[SiteUpdate | SiteFailure]:
        done: dict[str, SiteUpdate | SiteFailure] = {}
        try:
            cfg = self.task.train_config(plan.config)
            self._check_weights(weights)
        except Exception as exc:
            return [SiteFailure(sid, plan.round, f"{type(exc).__name__}: {exc}") for sid in plan.site_ids]
        jobs: list[ClientJob] = []
        for sid in dict.fromkeys(plan.site_ids):  # a site listed twice trains once
            try:
                jobs.append(self._job(sid, plan, cfg))
            except Exception as exc:
                done[sid] = SiteFailure(sid, plan.round, f"{type(exc).__name__}: {exc}")
        for start in range(0, len(jobs), self.chunk_size):
            chunk = jobs[start : start + self.chunk_size]
            t0 = time.perf_counter()
            try:
                results = self.trainer.train(weights, chunk, cfg)
            except Exception:  # isolate the failing site(s): run this chunk site by site
                log.warning(
                    "round %d: vectorized chunk failed; retrying its %d sites one by one",
                    plan.round,
                    len(chunk),
                    exc_info=True,
                )
                for j in chunk:
                    done[j.site_id] = self._fit_one(j.site_id, plan, weights)
                continue
            per_site = (time.perf_counter() - t0) / len(chunk)
            for r in results:
                n = len(self.runners[r.site_id].site.train)
                done[r.site_id] = SiteUpdate(
                    site_id=r.site_id,
                    round=plan.round,
                    weights=r.weights,
                    num_examples=n,
                    metrics={"train_loss": r.train_loss, "steps": r.steps},
                    duration_s=per_site,
                )
        trim_heap()  # the round's buffers go back to the OS: memory flat across rounds
        return [done[sid] for sid in plan.site_ids]

    def evaluate(
        self, weights: Weights, site_ids: Sequence[str], split: str, reference: Weights | None = None
    ) -> list[EvalReport | SiteFailure]:
        out: dict[str, EvalReport | SiteFailure] = {}
        try:
            self._check_weights(weights)
            if reference is not None:
                self._check_weights(reference)
        except Exception as exc:
            return [SiteFailure(sid, 0, f"{type(exc).__name__}: {exc}") for sid in site_ids]
        ok: list[str] = []
        for sid in dict.fromkeys(site_ids):
            try:
                x, y = self._data(sid, split)
                if len(y) == 0:
                    out[sid] = EvalReport(sid, split, 0, 0.0, 0.0)
                    continue
                self._check_labels(sid, split)
                ok.append(sid)
            except Exception as exc:
                out[sid] = SiteFailure(sid, 0, f"{type(exc).__name__}: {exc}")
        if ok:
            losses, correct = self._score(weights, ok, split)
            ref = self._score(reference, ok, split)[0] if reference is not None else None
            for i, sid in enumerate(ok):
                d = (losses[i] - ref[i]) if ref is not None else None
                out[sid] = EvalReport(
                    sid,
                    split,
                    int(len(losses[i])),
                    float(losses[i].sum()),
                    float(correct[i]),
                    diff_sum=float(d.sum()) if d is not None else 0.0,
                    diff_sq_sum=float((d * d).sum()) if d is not None else 0.0,
                )
        return [out[sid] for sid in site_ids]

    # -- helpers --------------------------------------------------------------------------------
    def _warm_up(self) -> None:
        """One step on one example, so that torch.func's first-use cost lands here, not in round 1."""
        first = next(iter(self.runners.values()))
        if len(first.site.train) == 0:
            return
        x, y = _tensors(first.site.train.subset(np.arange(1)), self.device)
        job = ClientJob(first.site_id, x, y, [np.zeros(1, dtype=np.int64)])
        try:
            self.trainer.train(Weights.from_torch(self.model), [job], self.task.train_config())
        except Exception:  # a site that cannot train fails in train(), with its reason
            log.debug("vectorized warm-up failed", exc_info=True)

    def _check_weights(self, weights: Weights) -> None:
        if weights.spec() != self.spec:
            self.task.load(weights)  # raises TorchTask's ModelError naming the mismatch
            raise ConfigError(f"weights {weights.spec()} do not match the model {self.spec}")

    def _job(self, sid: str, plan: RoundPlan, cfg: Any) -> ClientJob:
        if sid not in self.runners:
            raise KeyError(f"site {sid!r} is not in this pool (sites: {len(self.runners)})")
        n = len(self.runners[sid].site.train)
        if n == 0:
            raise ConfigError("cannot train on 0 examples; give the site training data or leave it out of the round")
        self._check_labels(sid, "train")
        x, y = self._data(sid, "train")
        return ClientJob(sid, x, y, batch_plan(self.task, n, cfg, site_seed(plan.seed, plan.round, sid)))

    def _fit_one(self, sid: str, plan: RoundPlan, weights: Weights) -> SiteUpdate | SiteFailure:
        try:
            return self.runners[sid].fit(plan, weights)
        except Exception as exc:
            return SiteFailure(sid, plan.round, f"{type(exc).__name__}: {exc}")

    def _data(self, sid: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if sid not in self.runners:
            raise KeyError(f"site {sid!r} is not in this pool")
        key = (sid, split)
        got = self._cache.get(key)
        if got is None:
            got = _tensors(self.runners[sid].site.split(split), self.device)
            self._cache[key] = got
        return got

    def _check_labels(self, sid: str, split: str) -> None:
        """TorchTask's ``check_fit`` on this site's labels (ModelError when the model cannot score them)."""
        key = (sid, split)
        if key in self._fits:
            return
        y = np.asarray(self.runners[sid].site.split(split).y)
        x, _ = self._data(sid, split)
        with torch.no_grad():
            out = self.model(x[:1])
        self.task.check_fit(out, np.array([int(y.min()), int(y.max())]))
        self._fits.add(key)

    def _score(self, weights: Weights, sids: list[str], split: str) -> tuple[list[np.ndarray], list[int]]:
        """Per-example losses (float64) and correct counts of ``weights`` on each site, batching
        consecutive sites together."""
        if self._eval_model is None:
            with torch.random.fork_rng(devices=[]):
                self._eval_model = self.task.build_model().to(self.device)
        model = self._eval_model
        with torch.no_grad():
            for k, t in model.state_dict().items():
                t.copy_(torch.from_numpy(np.array(weights[k])))
        model.eval()
        bs = int(getattr(self.task, "eval_batch_size", 512))
        losses: list[list[torch.Tensor]] = [[] for _ in sids]
        correct = [0] * len(sids)
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        size = 0

        def flush() -> None:
            nonlocal pending, size
            if not pending:
                return
            xb = torch.cat([p[1] for p in pending])
            yb = torch.cat([p[2] for p in pending])
            with torch.no_grad():
                out = model(xb)
                per = self.task.per_example_loss(out, yb).double().cpu()
                ok = self.task.correct(out, yb).cpu()
            pos = 0
            for i, xs, _ in pending:
                m = len(xs)
                losses[i].append(per[pos : pos + m])
                correct[i] += int(ok[pos : pos + m].sum())
                pos += m
            pending, size = [], 0

        for i, sid in enumerate(sids):
            x, y = self._data(sid, split)
            for a in range(0, len(y), bs):
                xs, ys = x[a : a + bs], y[a : a + bs]
                if size + len(ys) > bs:
                    flush()
                pending.append((i, xs, ys))
                size += len(ys)
        flush()
        return [torch.cat(parts).numpy() if parts else np.zeros(0) for parts in losses], correct
