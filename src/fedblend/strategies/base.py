"""Strategy: the small protocol every aggregation rule implements.

A strategy says what extra settings sites get each round (``configure``), turns accepted site
updates into the next global model (``aggregate``), and exposes its server-side state
(``state_dict``/``load_state_dict``) so a resumed run is bit-identical. Everything else (sampling,
validation, blending, storage) lives elsewhere. Strategies follow the estimator rule: constructors
take keyword parameters and store them unchanged; ``get_params`` reads them back.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fedblend.errors import FedblendError, QuorumError, UpdateRejected
from fedblend.records import SiteUpdate
from fedblend.weights import Weights

__all__ = ["Strategy", "check_updates"]


class Strategy:
    """Base class: override ``aggregate``; the other hooks have working defaults."""

    #: registry name (``make_strategy(name)``); set by each subclass
    name: ClassVar[str] = ""

    def configure(self, round: int) -> dict[str, Any]:
        """Extra site-side training settings for ``round`` (e.g. ``{"proximal_mu": 0.01}``)."""
        return {}

    def aggregate(self, current: Weights, updates: Sequence[SiteUpdate]) -> Weights:
        """The new global weights from the current ones and the round's accepted updates."""
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate(current, updates)")

    def state_dict(self) -> dict[str, Weights]:
        """Server-side state (optimizer moments) as named Weights; empty when stateless."""
        return {}

    def load_state_dict(self, state: Mapping[str, Weights]) -> None:
        """Restore what ``state_dict`` returned."""
        if state:
            raise FedblendError(
                f"{type(self).__name__} keeps no server state but was given state {sorted(state)}; "
                "the checkpoint was written by another strategy: resume with the same [strategy] settings"
            )

    # Estimator rule ---------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, as given."""
        return {n: getattr(self, n) for n in self.param_names()}

    def clone(self) -> Strategy:
        """A fresh strategy with the same parameters and no state."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


def check_updates(current: Weights, updates: Sequence[SiteUpdate]) -> None:
    """Reject what no strategy can aggregate: no updates, bad counts, weights of another model.

    Raises QuorumError (nothing to aggregate) or UpdateRejected naming the site.
    """
    if len(updates) == 0:
        raise QuorumError(
            "aggregate() got no site updates; a round needs at least one accepted update "
            "(check the failures recorded for this round)"
        )
    for u in updates:
        n = u.num_examples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UpdateRejected(u.site_id, f"num_examples must be an int >= 0 (got {n!r})")
        try:
            current.check_compatible(u.weights, "weights")
        except FedblendError as exc:
            raise UpdateRejected(u.site_id, f"{exc} (the update does not fit the global model)") from None
    if sum(int(u.num_examples) for u in updates) == 0:
        raise QuorumError(
            f"all {len(updates)} update(s) report 0 training examples "
            f"({', '.join(u.site_id for u in updates)}); sample-weighted aggregation needs data"
        )
