"""The legitimate customer (testbed/legit.py) over real HTTP under several policies (a live server)."""

from __future__ import annotations

import pytest

from shared.data.synthetic import DataSpec
from testbed.policies import policy_tiers

TINY = DataSpec().scaled(0.05)


@pytest.mark.slow
@pytest.mark.live
def test_legit_customer_over_http_under_every_policy(tiny_victim, tmp_path):
    from shared.cache import QueryCache
    from testbed.legit import LegitTask, legit_user
    from testbed.policies import representation_scale
    from testbed.services import serve

    scale = representation_scale(tiny_victim)
    assert scale > 0
    tiers = policy_tiers(["none", "noise", "b4b"], tiny_victim / "legit_profile.json", scale)
    task = LegitTask(images=150)
    with serve(tiny_victim, {"tiers": tiers}) as srv:
        res = {}
        for pol in ("none", "noise", "b4b"):
            with QueryCache(tmp_path / pol) as cache:
                res[pol] = legit_user(srv.url, srv.new_account(f"c-{pol}", f"policy-{pol}"), cache, task, spec=TINY,
                                      progress=False)
            assert res[pol]["bought"] == res[pol]["queries"] > 0
            assert 0.0 <= res[pol]["accuracy"] <= 1.0
        st = srv.account_defences("c-b4b")
        assert st["images"] == res["b4b"]["queries"] and st["coverage"] > 0
        # the same customer again: everything from its cache, nothing bought twice
        with QueryCache(tmp_path / "none") as cache:
            again = legit_user(srv.url, srv.new_account("c-none-2", "policy-none"), cache, task, spec=TINY, progress=False)
        assert again["bought"] == again["queries"]  # another account: its own answers
        assert srv.account("c-none")["usage"]["images"] == res["none"]["queries"]
    assert srv.proc.poll() is not None  # the server is gone after the context
