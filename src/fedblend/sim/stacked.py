"""Local training of many clients at once: stacked parameters, ``torch.func`` + ``vmap``.

Every client trains the same architecture from the same global weights on its own minibatches,
exactly as ``TorchTask.train`` would, but one step of all clients is a single batched computation
(``vmap(grad_and_value(loss))`` over the client axis of the parameters and of the batches).

Unequal clients: clients are sorted by decreasing number of steps, so at step ``s`` the clients
still training are a prefix ``[:k]`` of the stack; the others keep their parameters (and
optimizer state) untouched. Short batches (the last batch of an epoch) are padded and masked: the
loss is the mean over the real examples only, as in ``TorchTask``.

Linear/ReLU chains (logistic regression, MLPs) skip ``vmap`` and autograd altogether:
``fedblend.sim.chain`` trains them with hand-written batched matrix products, on the CPU in
interleaved client groups, one thread each (``torch.get_num_threads()`` groups of >= 4 clients).

    results = train_stacked(model, task, weights, jobs, cfg, device=torch.device("cpu"))
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from fedblend.sim.chain import ChainTrainer
from fedblend.sim.functional import StackedOptimizer
from fedblend.sim.fused import FusedLinearSGD, NotFusable
from fedblend.task.config import TrainConfig
from fedblend.weights import Weights

__all__ = ["ClientJob", "ClientResult", "StackedTrainer", "batch_plan"]


def batch_plan(task: Any, n: int, cfg: TrainConfig, seed: int) -> list[np.ndarray]:
    """The minibatch index arrays ``TorchTask.train`` uses for ``n`` examples and ``seed``.

    Uses the task's own ``batch_plan(n, cfg, seed)`` when it has one, else the same seeded
    generator ``TorchTask.train`` builds, fed to the shared ``TorchTask.batch_indices``.
    """
    plan = getattr(task, "batch_plan", None)
    if callable(plan):
        out: list[np.ndarray] = plan(n, cfg, seed)
        return out
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    batches: list[np.ndarray] = task.batch_indices(n, cfg, rng)
    return batches


@dataclass
class ClientJob:
    """One client's local training in a round: its training tensors and its batch order."""

    site_id: str
    x: torch.Tensor
    y: torch.Tensor
    batches: list[np.ndarray]


@dataclass
class ClientResult:
    site_id: str
    weights: Weights
    train_loss: float
    steps: int


class StackedTrainer:
    """Trains clients of one model side by side; build once per (model, task), reuse every round.

    The forward pass is ``vmap``-ed over the client axis; the loss is computed outside ``vmap``
    (per example, then per client) and differentiated with ordinary autograd: the clients'
    losses are independent, so the gradient of their sum holds each client's own gradient.
    """

    min_group = 4  # clients per thread below which one thread trains them all
    max_groups = 8  # threads at most (their Python work shares the GIL)

    def __init__(self, model: nn.Module, task: Any, device: torch.device) -> None:
        self.model = model
        self.task = task
        self.device = device
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        self._forward: Callable[..., Any] = vmap(
            lambda p, fz, x: functional_call(model, (p, fz), (x,)), in_dims=(0, None, 0)
        )
        self.fused = FusedLinearSGD(model, self.trainable, self.client_loss)
        self.chain = ChainTrainer(model, self.trainable, task, self.client_loss)

    def client_loss(self, out: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """Each client's mean loss over its batch (over its real examples when ``w`` masks padding),
        as ``TorchTask.loss_fn`` computes it."""
        k, b = y.shape[0], y.shape[1]
        per = self.task.per_example_loss(out.reshape(k * b, *out.shape[2:]), y.reshape(k * b)).view(k, b)
        return per.mean(dim=1) if w is None else (per * w).sum(dim=1) / w.sum(dim=1)

    def train(self, weights: Weights, jobs: Sequence[ClientJob], cfg: TrainConfig) -> list[ClientResult]:
        """Train ``jobs`` from ``weights``; results in the order of ``jobs``."""
        if not jobs:
            return []
        dev = self.device
        steps = np.array([len(j.batches) for j in jobs])
        order = np.argsort(-steps, kind="stable")  # most steps first: active clients are a prefix
        sjobs = [jobs[i] for i in order]
        c, s_max = len(sjobs), int(steps.max())
        bsz = max(len(b) for j in sjobs for b in j.batches)
        idx, mask, full = _index_plan(sjobs, s_max, bsz)
        active = [int((steps[order] > s).sum()) for s in range(s_max)]
        settings = self.task.optimizer_settings(cfg)
        mu = float(cfg.proximal_mu)
        anchor = {n: torch.from_numpy(np.array(weights[n])).to(dev).unsqueeze(0) for n in self.trainable}
        got = None
        if self.chain.usable(sjobs):  # hand-written Linear/ReLU training, no autograd
            try:
                got = self._train_chain(weights, sjobs, idx, mask, settings, mu, anchor)
            except NotFusable:
                got = None
        if got is None:
            params, losses = self._train_general(weights, sjobs, idx, mask, full, active, settings, mu, anchor)
            arrays = {n: p.detach().cpu().numpy() for n, p in params.items()}
            got = ([{n: a[i] for n, a in arrays.items()} for i in range(c)], losses.double().sum(dim=1).cpu().numpy())
        trained, loss_sums = got
        results: list[ClientResult | None] = [None] * c
        for pos, job_i in enumerate(order):
            arrays = {n: (trained[pos][n] if n in trained[pos] else np.array(weights[n])) for n in weights}
            n_steps = int(steps[job_i])
            mean = float(loss_sums[pos] / n_steps) if n_steps else math.nan
            results[job_i] = ClientResult(jobs[job_i].site_id, Weights(arrays), mean, n_steps)
        return [r for r in results if r is not None]

    def _train_chain(
        self,
        weights: Weights,
        sjobs: Sequence[ClientJob],
        idx: np.ndarray,
        mask: np.ndarray,
        settings: dict[str, Any],
        mu: float,
        anchors: dict[str, torch.Tensor],
    ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """The hand-written path: each client's trained parameters (in the order of ``sjobs``) and
        summed step losses.

        On the CPU with ``torch.get_num_threads() = T > 1`` the clients are split into T
        interleaved groups (of at least ``min_group`` clients) trained by T threads, each running
        its operations single-threaded: independent clients need no synchronisation until the
        end, where intra-op threads would meet at a barrier after every small matrix product."""
        c = len(sjobs)
        dev = self.device
        offsets = np.cumsum([0] + [len(j.y) for j in sjobs[:-1]]).reshape(c, 1, 1)
        idx = np.maximum(idx - offsets, 0)  # rows of each client's own data (padding: row 0)
        steps = np.array([len(j.batches) for j in sjobs])  # non-increasing
        groups = 1
        if dev.type == "cpu":
            groups = max(1, min(torch.get_num_threads(), os.cpu_count() or 1, self.max_groups, c // self.min_group))
        parts = [np.arange(g, c, groups) for g in range(groups)]  # interleaved: similar step counts
        trained: list[dict[str, np.ndarray]] = [{} for _ in range(c)]
        loss_sums = np.zeros(c)

        def train_group(pos: np.ndarray) -> None:
            st = steps[pos]
            s_n = int(st.max())
            active = [int((st > s).sum()) for s in range(s_n)]
            params = {n: _stack(weights[n], len(pos), dev) for n in self.trainable}
            jobs = [sjobs[i] for i in pos]
            losses = self.chain.run(params, anchors, jobs, idx[pos, :s_n], mask[pos, :s_n], active, settings, mu)
            arrays = {n: p.cpu().numpy() for n, p in params.items()}
            for row, i in enumerate(pos):
                trained[i] = {n: a[row] for n, a in arrays.items()}
            loss_sums[pos] = losses.double().sum(dim=1).cpu().numpy()

        errors: list[BaseException] = []

        def work(g: int) -> None:
            try:
                if groups > 1:
                    torch.set_num_threads(1)
                train_group(parts[g])
            except BaseException as exc:  # re-raised in the calling thread
                errors.append(exc)

        threads_before = torch.get_num_threads()
        workers = [threading.Thread(target=work, args=(g,), daemon=True) for g in range(1, groups)]
        try:
            for t in workers:
                t.start()
            work(0)
            for t in workers:
                t.join()
        finally:
            torch.set_num_threads(threads_before)
        for exc in errors:  # a failed self-check first: the caller then takes the general path
            if isinstance(exc, NotFusable):
                raise exc
        if errors:
            raise errors[0]
        return trained, loss_sums

    def _train_general(
        self,
        weights: Weights,
        sjobs: Sequence[ClientJob],
        idx: np.ndarray,
        mask: np.ndarray,
        full: list[bool],
        active: list[int],
        settings: dict[str, Any],
        mu: float,
        anchors: dict[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """vmap + autograd (or the fused Linear path): the trained stacked parameters and the
        per-step losses (C, S)."""
        dev = self.device
        c, s_max = idx.shape[0], idx.shape[1]
        x_all = torch.cat([j.x for j in sjobs]).to(dev)
        y_all = torch.cat([j.y for j in sjobs]).to(dev)
        idx_t = torch.from_numpy(idx).to(dev)
        mask_t = torch.from_numpy(mask).to(dev)
        fuse = self.fused.usable(settings)
        params = {n: _stack(weights[n], c, dev).requires_grad_(not fuse) for n in self.trainable}
        frozen = {n: torch.from_numpy(np.array(weights[n])).to(dev) for n in self.frozen}
        plist = list(params.values())
        opt = StackedOptimizer(settings, mu=mu)
        anchor = [anchors[n] for n in self.trainable]
        state = opt.init(plist, anchor if mu > 0 else None)
        losses = torch.zeros((c, s_max), dtype=torch.float32, device=dev)

        for s in range(s_max):
            k = active[s]
            ps = params if k == c else {n: p[:k] for n, p in params.items()}
            it = idx_t[:k, s]
            xb, yb = x_all[it], y_all[it]
            wb = None if full[s] else mask_t[:k, s]
            if fuse:
                try:
                    loss = self.fused.step(ps, frozen, xb, yb, wb, settings, mu, anchors)
                    losses[:k, s] = loss.detach()
                    continue
                except NotFusable:  # decided once, on the first batch: this model takes the general path
                    fuse = False
                    for p in plist:
                        p.requires_grad_(True)
            loss = self.client_loss(self._forward(ps, frozen, xb), yb, wb)
            grads = torch.autograd.grad(loss.sum(), [ps[n] for n in self.trainable])
            opt.step(plist, list(grads), state, k)
            losses[:k, s] = loss.detach()
        return params, losses


def _stack(arr: np.ndarray, c: int, dev: torch.device) -> torch.Tensor:
    base = torch.from_numpy(np.array(arr)).to(dev)
    return base.unsqueeze(0).repeat(c, *([1] * base.ndim))


def _index_plan(jobs: Sequence[ClientJob], s_max: int, bsz: int) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Row indices into the concatenated chunk data (C, S, B), the 0/1 example mask, and for each
    step whether every active client has a full batch (then no mask is needed)."""
    c = len(jobs)
    idx = np.zeros((c, s_max, bsz), dtype=np.int64)
    mask = np.zeros((c, s_max, bsz), dtype=np.float32)
    full = [True] * s_max
    off = 0
    for ci, j in enumerate(jobs):
        bs = j.batches
        if bs and all(len(b) == bsz for b in bs):
            idx[ci, : len(bs)] = np.stack(bs) + off
            mask[ci, : len(bs)] = 1.0
        else:
            for si, b in enumerate(bs):
                m = len(b)
                idx[ci, si, :m] = b + off
                idx[ci, si, m:] = off  # padding: any valid row, weight 0
                mask[ci, si, :m] = 1.0
                if m != bsz:
                    full[si] = False
        off += len(j.y)
    return idx, mask, full
