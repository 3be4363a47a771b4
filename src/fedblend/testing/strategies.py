"""Contract every Strategy must honour; run it against each one (tests/test_contracts.py).

    from fedblend.testing.strategies import check_strategy_contract
    check_strategy_contract(lambda: MyStrategy(...))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedblend.records import SiteUpdate
from fedblend.weights import Weights

__all__ = ["check_strategy_contract"]


def _weights(rng: np.random.Generator) -> Weights:
    return Weights({"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)})


def _updates(current: Weights, rng: np.random.Generator, rnd: int) -> list[SiteUpdate]:
    return [
        SiteUpdate(f"s{i}", rnd, current.map(lambda a: (a + rng.normal(scale=0.1, size=a.shape)).astype(a.dtype)), int(n))
        for i, n in enumerate((10, 30, 5))
    ]


def check_strategy_contract(factory: Callable[[], object]) -> None:
    rng = np.random.default_rng(0)
    current = _weights(rng)
    s = factory()

    # 1. no movement when every site returns the current model
    same = [SiteUpdate(f"s{i}", 1, current.copy(), 10 + i) for i in range(3)]
    out = s.aggregate(current, same)  # type: ignore[attr-defined]
    assert out.spec() == current.spec(), "aggregate must keep names, shapes and dtypes"
    assert out.allclose(current, atol=1e-6), "sites that did not move must not move the model"

    # 2. inputs are not mutated, output is finite and deterministic
    a, b = factory(), factory()
    w_a = w_b = current
    for rnd in (1, 2, 3):
        ups = _updates(w_a, np.random.default_rng(rnd), rnd)
        before = [u.weights.copy() for u in ups]
        snapshot = w_a.copy()
        w_a = a.aggregate(w_a, ups)  # type: ignore[attr-defined]
        w_b = b.aggregate(w_b, _updates(w_b, np.random.default_rng(rnd), rnd))  # type: ignore[attr-defined]
        assert all(u.weights.equal(bw) for u, bw in zip(ups, before, strict=False)), "aggregate mutated an update"
        assert w_a.is_finite()
        assert not snapshot.equal(w_a), "sites that moved must move the model"
    assert w_a.equal(w_b), "same inputs must give bit-identical outputs"

    # 3. state round trip: a restored strategy continues bit-identically
    c = factory()
    c.load_state_dict(a.state_dict())  # type: ignore[attr-defined]
    ups = _updates(w_a, np.random.default_rng(9), 4)
    assert a.aggregate(w_a, ups).equal(c.aggregate(w_a, ups))  # type: ignore[attr-defined]

    # 4. estimator rule: parameters read back unchanged and rebuild an equal strategy
    params = a.get_params()  # type: ignore[attr-defined]
    rebuilt = type(a)(**params)
    assert rebuilt.get_params() == params  # type: ignore[attr-defined]
    assert isinstance(a.configure(1), dict)  # type: ignore[attr-defined]
