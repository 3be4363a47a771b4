"""Server optimizers on the FedAvg pseudo-gradient: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Each round ``delta = sum_k p_k (w_k - w)`` (sample-weighted mean of the sites' changes) is fed to a
server optimizer:

* FedAvgM (Hsu et al. 2019, arXiv:1909.06335): ``m = momentum*m + delta; w += server_lr*m``.
* FedAdam / FedYogi / FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
  arXiv:2003.00295, Algorithm 2): ``m = beta1*m + (1-beta1)*delta``; ``v`` by Adam, Yogi or
  Adagrad; ``w += server_lr * m / (sqrt(v) + tau)``.

The update rule is FLamby's (``flamby/strategies/fed_opt.py``) exactly: ``m`` and ``v`` start at
zero, no bias correction, ``tau`` added after the square root. FedAdam can optionally apply Adam's
bias correction (``bias_correction=True``, step t counted from 1). Moments are float64; they are
the strategy's state (``state_dict``), so a resumed run continues bit-identically.

    strategy = make_strategy("fedadam", server_lr=0.01, beta2=0.999, tau=1e-8)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedblend.errors import FedblendError
from fedblend.records import SiteUpdate
from fedblend.strategies import aggregate as agg
from fedblend.strategies._params import check_bool, check_number
from fedblend.strategies.base import Strategy, check_updates
from fedblend.weights import Weights

__all__ = ["FedAvgM", "FedAdam", "FedYogi", "FedAdagrad"]

Moments = dict[str, np.ndarray]


class _ServerOptimizer(Strategy):
    """Shared state handling: moments named in ``_moment_names``, and the step count ``t``."""

    _moment_names: tuple[str, ...] = ("m",)

    def _state(self) -> dict[str, Moments]:
        if not hasattr(self, "_moments"):
            self._moments: dict[str, Moments] = {}
            self._t = 0
        return self._moments

    @property
    def step_count(self) -> int:
        """Server steps taken so far (rounds aggregated)."""
        self._state()
        return self._t

    def aggregate(self, current: Weights, updates: Sequence[SiteUpdate]) -> Weights:
        check_updates(current, updates)
        site_weights = [u.weights for u in updates]
        counts = [u.num_examples for u in updates]
        delta = agg.pseudo_gradient(current, site_weights, counts)
        moments = self._state()
        if not moments:
            moments.update({n: {k: np.zeros_like(d) for k, d in delta.items()} for n in self._moment_names})
        else:
            self._check_moments_fit(delta)
        self._t += 1
        step: dict[str, np.ndarray] = {}
        for k, d in delta.items():
            step[k] = self._update(k, d, moments)
        # non-float tensors (counters) follow the sample-weighted mean
        rest = agg.weighted_average(site_weights, counts) if len(step) < len(current) else None
        return agg.apply_step(current, step, rest)

    def _update(self, key: str, delta: np.ndarray, moments: dict[str, Moments]) -> np.ndarray:
        raise NotImplementedError

    def _check_moments_fit(self, delta: Mapping[str, np.ndarray]) -> None:
        for name, mom in self._moments.items():
            want = {k: d.shape for k, d in delta.items()}
            have = {k: v.shape for k, v in mom.items()}
            if want != have:
                raise FedblendError(
                    f"{type(self).__name__}: server state {name!r} does not fit the model "
                    f"(state tensors {sorted(have)} vs model float tensors {sorted(want)}, or shapes differ); "
                    "the state came from another model: start a fresh strategy or load the matching checkpoint"
                )

    def state_dict(self) -> dict[str, Weights]:
        moments = self._state()
        if not moments:
            return {}
        out = {n: Weights({k: np.array(v) for k, v in mom.items()}) for n, mom in moments.items()}
        out["step"] = Weights({"t": np.array([self._t], dtype=np.int64)})
        return out

    def load_state_dict(self, state: Mapping[str, Weights]) -> None:
        self._state()
        if not state:
            self._moments, self._t = {}, 0
            return
        expected = {*self._moment_names, "step"}
        if set(state) != expected:
            raise FedblendError(
                f"{type(self).__name__}: state must have entries {sorted(expected)} (got {sorted(state)}); "
                "the checkpoint was written by another strategy: resume with the same [strategy] settings"
            )
        specs = [{k: np.shape(v) for k, v in state[n].items()} for n in self._moment_names]
        if any(s != specs[0] for s in specs[1:]):
            raise FedblendError(
                f"{type(self).__name__}: state moments {list(self._moment_names)} differ in tensors or shapes"
            )
        t = state["step"].get("t")
        if t is None or np.size(t) != 1 or np.asarray(t).dtype.kind not in "iu" or int(np.ravel(t)[0]) < 1:
            raise FedblendError(f"{type(self).__name__}: state['step']['t'] must be one integer >= 1 (got {t!r})")
        self._moments = {n: {k: np.array(v, dtype=np.float64) for k, v in state[n].items()} for n in self._moment_names}
        self._t = int(np.ravel(t)[0])


class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum; ``server_lr=1, momentum=0`` is FedAvg."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        check_number("FedAvgM", "server_lr", server_lr, low=0.0, low_open=True)
        check_number("FedAvgM", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.server_lr = server_lr
        self.momentum = momentum

    def _update(self, key: str, delta: np.ndarray, moments: dict[str, Moments]) -> np.ndarray:
        m = moments["m"][key] = agg.heavy_ball(moments["m"][key], delta, float(self.momentum))
        return float(self.server_lr) * m


class _Adaptive(_ServerOptimizer):
    _moment_names = ("m", "v")

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        owner = type(self).__name__
        check_number(owner, "server_lr", server_lr, low=0.0, low_open=True)
        check_number(owner, "beta1", beta1, low=0.0, high=1.0, high_open=True)
        check_number(owner, "beta2", beta2, low=0.0, high=1.0, high_open=True)
        check_number(owner, "tau", tau, low=0.0, low_open=True)
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _lr(self) -> float:
        return float(self.server_lr)

    def _update(self, key: str, delta: np.ndarray, moments: dict[str, Moments]) -> np.ndarray:
        m = moments["m"][key] = agg.ema(moments["m"][key], delta, float(self.beta1))
        v = moments["v"][key] = self._second_moment(moments["v"][key], delta)
        return agg.adaptive_step(m, v, self._lr(), float(self.tau))


class FedAdam(_Adaptive):
    """Adam on the server: ``v = beta2*v + (1-beta2)*delta^2``."""

    name = "fedadam"

    def __init__(
        self,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: bool = False,
    ) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau)
        check_bool("FedAdam", "bias_correction", bias_correction)
        self.bias_correction = bias_correction

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return agg.adam_second_moment(v, delta, float(self.beta2))

    def _lr(self) -> float:
        if self.bias_correction:
            return agg.adam_bias_corrected_lr(float(self.server_lr), float(self.beta1), float(self.beta2), self._t)
        return float(self.server_lr)


class FedYogi(_Adaptive):
    """Yogi on the server: ``v = v - (1-beta2)*delta^2*sign(v - delta^2)``."""

    name = "fedyogi"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return agg.yogi_second_moment(v, delta, float(self.beta2))


class FedAdagrad(_Adaptive):
    """Adagrad on the server: ``v = v + delta^2`` (``beta2`` is unused, kept for a uniform API)."""

    name = "fedadagrad"

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return agg.adagrad_second_moment(v, delta)
