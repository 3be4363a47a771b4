"""Hand-written local training for models that are a chain of ``nn.Linear`` and ReLU layers.

Logistic regression and MLPs such as McMahan's 2NN (``flatten -> Linear -> ReLU -> ... ->
Linear``) need no autograd: for a layer ``a_out = a_in W^T + b`` the batch gradients are
``delta^T a_in`` and ``sum(delta)``, and ``delta`` of the layer below is ``(delta W) * [a_in > 0]``.
``ChainTrainer`` runs every client's steps side by side with that arithmetic as batched matrix
products (``torch.baddbmm`` / ``bmm`` into buffers allocated once per round, under
``torch.no_grad``), reading each step's minibatches from a gather of the clients' data done a
window of steps at a time (one ``index_select`` per client, at most 64 MiB). Plain SGD (weight decay and FedProx included) updates the stacked weights in place
with one GEMM per layer (``W <- beta W - lr delta^T a_in (+ lr mu W_global)``); momentum and Adam
go through ``StackedOptimizer`` with explicit gradients.

The model is recognised by tracing it (``torch.fx``); the loss must be the task's cross-entropy
(mean over the batch, over the real examples when the last batch is short) or, for one output,
binary cross-entropy with logits. The first batch (and the first short batch) is checked against
ordinary autograd gradients of the real model and ``task.per_example_loss``; any difference
raises ``NotFusable`` (before that batch's update) and the caller trains the round again from
the global weights on the general path, and takes it for good.

    trainer = ChainTrainer(model, trainable, task, loss)   # trainer.reason: why not, or None
    losses = trainer.run(stacked_params, anchors, jobs, idx, mask, active, settings, mu)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fedblend.sim.functional import StackedOptimizer
from fedblend.sim.fused import NotFusable

__all__ = ["ChainTrainer", "LayerSpec", "trace_chain"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

_RELU_FUNCS = {torch.relu, torch.relu_, F.relu}
_GATHER_BYTES = 64 * 2**20  # at most this much of gathered minibatches at a time


@dataclass(frozen=True)
class LayerSpec:
    weight: str  # parameter names in the model's state dict
    bias: str | None
    in_features: int
    out_features: int
    relu: bool  # a ReLU follows this layer


def trace_chain(model: nn.Module) -> tuple[list[LayerSpec], bool] | str:
    """The model's layers and whether it flattens its input first, or why it is not a
    ``[flatten] -> Linear [-> ReLU] -> ... -> Linear [-> ReLU]`` chain."""
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # dynamic control flow and the like
        return f"cannot trace the model ({type(exc).__name__})"
    mods = dict(gm.named_modules())
    layers: list[LayerSpec] = []
    flatten = False
    prev: torch.fx.Node | None = None
    used: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return "the model takes more than one input"
            prev = node
            continue
        if node.op == "output":
            if node.args[0] is not prev or not layers:
                return "the model's output is not its last layer"
            break
        if prev is None or not node.args or node.args[0] is not prev or len(node.users) > 1:
            return f"operation {node.name!r} is not part of a single chain"
        if any(a is not prev and isinstance(a, torch.fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            return f"operation {node.name!r} takes more than the previous result"
        mod = mods.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, nn.Linear):
            if node.target in used:
                return f"layer {node.target!r} runs more than once"
            used.add(str(node.target))
            layers.append(
                LayerSpec(
                    f"{node.target}.weight",
                    f"{node.target}.bias" if mod.bias is not None else None,
                    mod.in_features,
                    mod.out_features,
                    False,
                )
            )
        elif _is_relu(node, mod):
            if not layers or layers[-1].relu:
                return f"ReLU {node.name!r} does not follow a linear layer"
            last = layers[-1]
            layers[-1] = LayerSpec(last.weight, last.bias, last.in_features, last.out_features, True)
        elif _is_flatten(node, mod):
            if layers or flatten:
                return "flatten is only supported on the input"
            flatten = True
        else:
            what = (
                type(mods[node.target]).__name__
                if node.op == "call_module"
                else getattr(node.target, "__name__", node.target)
            )
            return f"operation {node.name!r} ({what}) is not Linear/ReLU/flatten"
        prev = node
    names = {n for n, _ in model.named_parameters()}
    mine = {s.weight for s in layers} | {s.bias for s in layers if s.bias is not None}
    if names != mine:
        return "the model has parameters outside its linear layers"
    for a, b in zip(layers, layers[1:], strict=False):
        if a.out_features != b.in_features:
            return "consecutive linear layers do not fit"
    return layers, flatten


def _is_relu(node: torch.fx.Node, mod: nn.Module | None) -> bool:
    if isinstance(mod, nn.ReLU):
        return True
    if node.op == "call_function" and node.target in _RELU_FUNCS:
        return len(node.args) == 1 and set(node.kwargs) <= {"inplace"}
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1 and not node.kwargs


def _is_flatten(node: torch.fx.Node, mod: nn.Module | None) -> bool:
    if isinstance(mod, nn.Flatten):
        return mod.start_dim == 1 and mod.end_dim == -1
    if (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten
    ):
        args = list(node.args[1:])
        start = args[0] if args else node.kwargs.get("start_dim", 0)
        end = args[1] if len(args) > 1 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False


class ChainTrainer:
    """See the module docstring. ``reason`` is None when the model qualifies."""

    def __init__(self, model: nn.Module, trainable: list[str], task: Any, loss: LossFn) -> None:
        self.model = model
        self.task = task
        self.loss = loss
        traced = trace_chain(model)
        self.reason: str | None = traced if isinstance(traced, str) else None
        self.layers: list[LayerSpec] = [] if isinstance(traced, str) else traced[0]
        self.flatten = False if isinstance(traced, str) else traced[1]
        if self.reason is None and set(trainable) != {n for n, _ in model.named_parameters()}:
            self.reason = "some parameters are frozen"
        self.verified: dict[bool, bool] = {}  # masked? -> checked against autograd
        self._lock = threading.Lock()
        self._neg: torch.Tensor | None = None  # -1s for softmax - onehot, kept between steps
        self.kind = ""
        if self.reason is None:
            width = self.layers[-1].out_features
            loss_name = getattr(task, "loss", "ce")
            if width == 1 and loss_name in ("bce", "auto"):
                self.kind = "bce"
            elif width > 1 and loss_name in ("ce", "auto"):
                self.kind = "ce"
            else:
                self.reason = f"loss {loss_name!r} with {width} outputs"

    def usable(self, jobs: Sequence[Any]) -> bool:
        if self.reason is not None or False in self.verified.values():
            return False
        f = self.layers[0].in_features
        dtype = next(self.model.parameters()).dtype
        for j in jobs:
            if j.x.dtype != dtype or j.x.ndim < 2 or int(np.prod(j.x.shape[1:])) != f:
                return False
            if j.x.ndim > 2 and not self.flatten:  # nn.Linear would act on the last axis only
                return False
        return True

    # -- training -------------------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        params: dict[str, torch.Tensor],
        anchors: dict[str, torch.Tensor],
        jobs: Sequence[Any],
        idx: np.ndarray,
        mask: np.ndarray,
        active: list[int],
        settings: dict[str, Any],
        mu: float,
    ) -> torch.Tensor:
        """Train the stacked ``params`` (client axis first, in the order of ``jobs``) in place over
        the step plan ``idx`` (C, S, B) of row indices into each job's own data (padding and
        finished clients: any valid row, ``mask`` 0); the per-step losses (C, S)."""
        c, s_max, bsz = idx.shape
        full = [bool(mask[:a, si].all()) for si, a in enumerate(active)]  # no padding among the active
        w0 = params[self.layers[0].weight]
        dev, dtype = w0.device, w0.dtype
        xs = [j.x.reshape(j.x.shape[0], -1) for j in jobs]
        ys = [j.y for j in jobs]
        f = self.layers[0].in_features
        acts = [torch.empty((c, bsz, s.out_features), dtype=dtype, device=dev) for s in self.layers]
        losses = torch.zeros((c, s_max), dtype=torch.float32, device=dev)
        plain = settings["name"] == "sgd" and settings["momentum"] == 0.0
        opt = None if plain else StackedOptimizer(settings, mu=mu)
        plist = [params[n] for s in self.layers for n in (s.weight, s.bias) if n is not None]
        state = None
        if opt is not None:
            anchor_list = [anchors[n] for s in self.layers for n in (s.weight, s.bias) if n is not None]
            state = opt.init(plist, anchor_list if mu > 0 else None)
        window = max(1, min(s_max, _GATHER_BYTES // max(1, c * bsz * f * w0.element_size())))
        idx_t = torch.from_numpy(idx).to(dev)
        mask_t = torch.from_numpy(mask).to(dev).to(dtype)
        xw = torch.empty((c, window, bsz, f), dtype=dtype, device=dev)
        yw = torch.empty((c, window, bsz), dtype=torch.int64, device=dev)
        for s in range(s_max):
            k = active[s]
            if s % window == 0:
                self._gather(xs, ys, idx_t, s, min(s_max, s + window), active[s], xw, yw)
            xb, yb = xw[:k, s % window], yw[:k, s % window]
            wb = None if full[s] else mask_t[:k, s]
            ps = {n: p[:k] for n, p in params.items()} if k < c else params
            if not self.verified.get(wb is not None, False):
                with self._lock:  # functional_call swaps the model's parameters: one thread at a time
                    if not self.verified.get(wb is not None, False):
                        self._verify(ps, xb, yb, wb)
            loss, deltas = self._forward_backward(ps, xb, yb, wb, [a[:k] for a in acts])
            losses[:k, s] = loss
            inputs = [xb] + [a[:k] for a in acts[:-1]]
            if opt is None:
                self._sgd_update(ps, anchors, deltas, inputs, settings, mu)
            else:
                grads = []
                for spec, d, a in zip(self.layers, deltas, inputs, strict=True):
                    grads.append(torch.bmm(d.transpose(1, 2), a))
                    if spec.bias is not None:
                        grads.append(d.sum(1))
                assert state is not None
                opt.step(plist, grads, state, k)
        return losses

    def _gather(
        self,
        xs: list[torch.Tensor],
        ys: list[torch.Tensor],
        idx_t: torch.Tensor,
        s0: int,
        s1: int,
        k: int,
        xw: torch.Tensor,
        yw: torch.Tensor,
    ) -> None:
        """The minibatches of steps ``s0..s1-1`` of the first ``k`` clients into ``xw`` (C, W, B, F)
        and ``yw`` (C, W, B)."""
        bsz, f, w = idx_t.shape[2], xw.shape[3], s1 - s0
        for ci in range(k):
            rows = idx_t[ci, s0:s1].reshape(-1)
            torch.index_select(xs[ci], 0, rows, out=xw[ci, :w].view(w * bsz, f))
            torch.index_select(ys[ci], 0, rows, out=yw[ci, :w].view(w * bsz))

    def _forward_backward(
        self,
        ps: dict[str, torch.Tensor],
        xb: torch.Tensor,
        yb: torch.Tensor,
        wb: torch.Tensor | None,
        acts: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-client mean losses (k,) and each layer's output gradient (k, B, out), for the
        clients in ``ps`` on their batches; the layers' outputs are left in ``acts``."""
        a = xb
        for spec, out in zip(self.layers, acts, strict=True):
            w = ps[spec.weight]
            if spec.bias is not None:
                torch.baddbmm(ps[spec.bias].unsqueeze(1), a, w.transpose(1, 2), out=out)
            else:
                torch.bmm(a, w.transpose(1, 2), out=out)
            if spec.relu:
                out.relu_()
            a = out
        k, bsz = yb.shape
        if self.kind == "ce":
            g = torch.log_softmax(a, dim=2)  # what F.cross_entropy computes
            y3 = yb.unsqueeze(2)
            per = g.gather(2, y3).squeeze(2).neg_()
            g.exp_().scatter_add_(2, y3, self._minus_one(k, bsz, g))  # softmax - onehot
        else:  # bce with one logit
            logit = a.squeeze(2)
            t = yb.to(a.dtype)
            per = logit.clamp(min=0) - logit * t + torch.log1p(torch.exp(-logit.abs()))
            g = (torch.sigmoid(logit) - t).unsqueeze(2)
        if wb is None:
            loss = per.mean(dim=1)
            g.mul_(1.0 / bsz)
        else:
            total = wb.sum(dim=1, keepdim=True)
            loss = (per * wb).sum(dim=1) / total.squeeze(1)
            g.mul_((wb / total).unsqueeze(2))
        if self.layers[-1].relu:
            g.mul_(a > 0)
        deltas: list[torch.Tensor] = [g]
        for i in range(len(self.layers) - 1, 0, -1):
            below = torch.bmm(deltas[0], ps[self.layers[i].weight])
            if self.layers[i - 1].relu:
                below = torch.ops.aten.threshold_backward(below, acts[i - 1], 0)
            deltas.insert(0, below)
        return loss, deltas

    def _minus_one(self, k: int, bsz: int, like: torch.Tensor) -> torch.Tensor:
        got = self._neg
        if (
            got is None
            or got.shape[0] < k
            or got.shape[1] != bsz
            or got.dtype != like.dtype
            or got.device != like.device
        ):
            got = self._neg = torch.full((k, bsz, 1), -1.0, dtype=like.dtype, device=like.device)
        return got[:k]

    def _sgd_update(
        self,
        ps: dict[str, torch.Tensor],
        anchors: dict[str, torch.Tensor],
        deltas: list[torch.Tensor],
        inputs: list[torch.Tensor],
        settings: dict[str, Any],
        mu: float,
    ) -> None:
        lr, wd = settings["lr"], settings["weight_decay"]
        beta = 1.0 - lr * wd - lr * mu
        for spec, d, a in zip(self.layers, deltas, inputs, strict=True):
            w = ps[spec.weight]
            w.baddbmm_(d.transpose(1, 2), a, beta=beta, alpha=-lr)
            if mu > 0:
                w.add_(anchors[spec.weight], alpha=lr * mu)
            if spec.bias is not None:
                b = ps[spec.bias]
                if beta != 1.0:
                    b.mul_(beta)
                b.sub_(d.sum(1), alpha=lr)
                if mu > 0:
                    b.add_(anchors[spec.bias], alpha=lr * mu)

    # -- self-check -----------------------------------------------------------------------------
    def _verify(self, ps: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, wb: torch.Tensor | None) -> None:
        """The hand-written losses and gradients equal autograd's on the model (first two clients)."""
        masked = wb is not None
        n = min(2, xb.shape[0])
        wn = wb[:n] if wb is not None else None
        pn = {k: v[:n] for k, v in ps.items()}
        ok = False
        try:
            with torch.enable_grad():
                leaves = {k: v.detach().clone().requires_grad_(True) for k, v in pn.items()}
                out = vmap(lambda pp, xx: functional_call(self.model, pp, (xx,)))(leaves, xb[:n])
                ref_loss = self.loss(out, yb[:n], wn)
                ref = dict(zip(leaves, torch.autograd.grad(ref_loss.sum(), list(leaves.values())), strict=True))
            acts = [
                torch.empty((n, xb.shape[1], s.out_features), dtype=xb.dtype, device=xb.device) for s in self.layers
            ]
            loss, deltas = self._forward_backward(pn, xb[:n], yb[:n], wn, acts)
            inputs = [xb[:n]] + acts[:-1]
            ok = torch.allclose(loss, ref_loss.detach(), rtol=1e-4, atol=1e-6)
            for spec, d, a in zip(self.layers, deltas, inputs, strict=True):
                ok &= torch.allclose(torch.bmm(d.transpose(1, 2), a), ref[spec.weight], rtol=1e-4, atol=1e-6)
                if spec.bias is not None:
                    ok &= torch.allclose(d.sum(1), ref[spec.bias], rtol=1e-4, atol=1e-6)
        except Exception as exc:
            log.debug("hand-written chain training failed its check: %s", exc, exc_info=True)
            ok = False
        self.verified[masked] = bool(ok)
        if not ok:
            log.warning(
                "hand-written Linear/ReLU training does not reproduce this model's gradients; using the general path"
            )
            raise NotFusable("hand-written gradients differ from autograd's")
