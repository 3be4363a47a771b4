"""Every Strategy and every RunStore passes the same contract suite (fedblend/testing)."""

from __future__ import annotations

import pytest

from fedblend.errors import StoreError
from fedblend.store import SqlRunStore
from fedblend.strategies import STRATEGIES, make_strategy
from fedblend.testing.stores import check_store_contract
from fedblend.testing.strategies import check_strategy_contract


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_contract(name):
    check_strategy_contract(lambda: make_strategy(name))


def test_sqlite_store_contract(tmp_path):
    check_store_contract(lambda: SqlRunStore(tmp_path / "run"))


def test_store_reopens_and_refuses_missing_runs(tmp_path):
    check_store_contract(lambda: SqlRunStore(tmp_path / "run"))
    again = SqlRunStore(tmp_path / "run", create=False)
    assert again.last_round() == 3
    again.close()
    with pytest.raises(StoreError, match="no run at"):
        SqlRunStore(tmp_path / "missing", create=False)


def test_store_bad_site_field(tmp_path):
    st = SqlRunStore(tmp_path / "r")
    with pytest.raises(StoreError, match="unknown site fields"):
        st.set_site_state("a", colour="red")
    st.close()


def test_missing_checkpoint_file_is_a_clear_error(tmp_path):
    st = SqlRunStore(tmp_path / "r")
    check_store_contract(lambda: st)
    for p in (tmp_path / "r" / "checkpoints").iterdir():
        p.unlink()
    st2 = SqlRunStore(tmp_path / "r")
    with pytest.raises(StoreError, match="checkpoint of round 3 is missing"):
        st2.last_checkpoint()
    st2.close()
