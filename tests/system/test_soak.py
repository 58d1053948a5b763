"""The soak: random faults against a running daemon, then invariants against the truth.

Small by default (CI runs it on every push); a longer run by flag, e.g.
``pytest tests/system/test_soak.py --soak-seconds 1800 --soak-miners 200``. The seed is
printed on failure (and in soak.json in the test's tmp dir): ``--soak-seed N`` replays the
same fault schedule.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from curtaild.emulator.physics import FAULT_KINDS
from tests.support.mosquitto import MosquittoProcess
from tests.support.soak import MUST_HAPPEN, Soak, SoakPlan, dump

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_soak_keeps_control_through_faults(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed = request.config.getoption("--soak-seed")
    plan = SoakPlan(miners=request.config.getoption("--soak-miners"),
                    chaos_s=request.config.getoption("--soak-seconds"),
                    seed=seed if seed is not None else random.randrange(1_000_000))
    broker = MosquittoProcess().start()
    soak = Soak(plan, tmp_path, broker=broker)
    try:
        soak.start()
        soak.warm_up()
        soak.run_chaos()
        soak.heal_all()
        soak.converge(plan.converge_s)  # a machine still wrong is reported below
        soak.final_scan()
        problems = soak.violations()
        rc = soak.stop()
        if rc != 0:
            problems.append(f"daemon exit status {rc} on SIGTERM")
        dump(soak, tmp_path / "soak.json", problems)
        assert not problems, (f"seed {plan.seed}: {len(problems)} violations\n"
                              + "\n".join(problems[:40])
                              + f"\nsummary {soak.summary()}\nlog tail:\n"
                              + "\n".join(soak.log[-30:]))
        summary = soak.summary()
        # The soak must have exercised what it claims to (a fault menu that never fired
        # proves nothing): the warm-up curtails, and MUST_HAPPEN injects each of these
        # whatever the seed drew.
        shown = json.dumps(summary)  # a string: pytest would cut a dict's repr short
        assert summary["intents"] > 0, f"no intent journaled: {shown}"
        for kind in ("miner_fault", *(k for _, k in MUST_HAPPEN)):
            assert summary["events"].get(kind, 0) > 0, f"{kind} never happened: {shown}"
        # Every fault kind the emulator has is drawn (MUST_HAPPEN lists them from FAULT_KINDS).
        assert {f"fault:{k}" for k in FAULT_KINDS if k != "none"} <= set(summary["events"]), \
            shown
        # A lost journal was answered as the operator would: what curtaild listed as of
        # unknown owner was adopted, and the MQTT stream that was scanned for secrets exists.
        if summary["asleep_at_losses"] and not summary["stranded_unseen"]:
            assert summary["unknown_owner_listed"], f"no machine of unknown owner: {shown}"
        assert summary["events"].get("mqtt_messages", 0) > 0, shown
    finally:
        soak.close()
        broker.stop()
        broker._tmp.cleanup()
