"""Rule 6b weighs the restart the machine itself reports (``MinerReading.switching``, issue 16):
the backtest's fast-boot Whatsminer and the loop's ``[guards] limit_restart_s`` reach the guards
and the policy as one figure, instead of the guards assuming the family's."""

from __future__ import annotations

from dataclasses import replace

from curtaild.core.switching import SwitchingCosts
from tests.controller.test_guards_limit_dwell import cfg, economic, guard, m30s, sent


def test_a_machine_that_reports_a_free_restart_gets_a_small_gain_sent() -> None:
    """+0.04 USD/day over 3600 s = 0.0017 USD: not worth 120 s of whatsminer restart
    (0.0020 USD, held) -- but worth it on a machine whose reading says its restart is free
    (fast boot)."""
    small = economic(new=1.40, hold=1.36)
    assert sent(guard(m30s(), small)) is None
    fast = replace(m30s(), switching=SwitchingCosts(120.0, 480.0, 0.0))
    c = sent(guard(fast, small))
    assert c is not None and c.action == "limit" and c.power_limit_w == 2500.0


def test_the_readings_restart_wins_over_the_family_default() -> None:
    """+0.40 USD/day gains 0.0167 USD over the hour: more than a 600 s restart forgoes
    (600 x (1.40 + 0.07)/86400 = 0.0102 USD: sent), less than a 3000 s one (0.0510 USD: held,
    the reason naming the reading's 3000 s)."""
    big = economic(new=1.40, hold=1.00)
    assert sent(guard(replace(m30s(), switching=SwitchingCosts(120.0, 0.0, 600.0)), big))
    slow = replace(m30s(), switching=SwitchingCosts(120.0, 0.0, 3000.0))
    r = guard(slow, big, config=cfg())
    assert sent(r) is None
    assert "3000 s of whatsminer restart" in r.held["W"]

