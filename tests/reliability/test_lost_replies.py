"""i. The connection dies right after a ``delete`` went out: the reply is lost.

The proxy forwards the daemon's bytes that contain ``delete `` to beanstalkd, then closes
the link: the server side with a FIN after those bytes (beanstalkd executes the delete,
and whatever else was pipelined with it, and its replies go nowhere), the daemon's side
with an RST (``client="rst"``) or a FIN (``client="fin"``). The daemon cannot know whether
the delete was applied; beanstalkd returns whatever else that connection held.

Every acknowledged job must end deleted after a completed run; a job that runs again must
have been in flight on the link at a cut (the cut times come from the proxy). No job may end
buried: the handlers never fail, and a delivery that ended because the daemon's own
connection was lost (the job returned by the cut, or its outcome never confirmed) is excused
from ``redelivery_limit`` on its next delivery to the same process
(``worker/runtime/excuses.py``), so a burst of cuts must not bury healthy jobs as poison.
The burial count is a figure (``buried``). Short: 5 cuts over 60 jobs; long: 20 cuts over
300.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from tests.reliability.conftest import Scale
from tests.reliability.harness import (
    DaemonConfig,
    events_named,
    finish,
    settled,
    start_daemon,
    tube_counts,
    wait_for,
    write_config,
)
from tests.reliability.ledger import Ledger
from tests.reliability.proxy import Proxy
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import DaemonProcess

pytestmark = pytest.mark.slow

TUBE = "rel-cut"


@pytest.mark.parametrize("client_close", ["rst", "fin"])
def test_cut_right_after_a_delete(
    beanstalkd: BeanstalkdProcess,
    make_proxy: Callable[[str], Proxy],
    daemons: list[DaemonProcess],
    ledger: Ledger,
    tmp_path: Path,
    scale: Scale,
    client_close: Literal["rst", "fin"],
) -> None:
    cuts, jobs = scale.pick(5, 20), scale.pick(60, 300)
    rng = random.Random(13)
    address = (beanstalkd.host, beanstalkd.port)
    ledger.put_many(
        address,
        TUBE,
        ((f"i{i}", {"sleep": round(rng.uniform(0.01, 0.1), 3)}) for i in range(jobs)),
    )
    proxy = make_proxy(beanstalkd.address)
    proxy.cut_after(b"delete ", times=cuts, client=client_close, server="fin")
    config = DaemonConfig(
        server=proxy.address,
        tube=TUBE,
        concurrency=10,
        jobs_per_connection=5,
    )
    start_daemon(daemons, write_config(tmp_path / "w.toml", config), tmp_path, ledger)
    budget = 30 + jobs * 0.1
    all_done = wait_for(lambda: settled(address, TUBE), timeout=budget, interval=0.1)
    for cut in proxy.cuts:
        ledger.fault(f"link {cut.link} cut after a delete", cut.at)
    buried = tube_counts(address, TUBE)["buried"]
    burials = events_named(daemons, "job buried")
    print(f"\n[reliability] i. cut after delete ({client_close}): {buried} of {jobs} jobs buried")
    violations = []
    if not all_done:
        violations.append(f"jobs not done {budget:g} s after the start")
    if len(proxy.cuts) < cuts:
        violations.append(f"staging: only {len(proxy.cuts)} of {cuts} cuts happened")
    if buried or burials:
        reasons = [f"job {e.get('job_id')}: {e.get('reason')}" for e in burials[:5]]
        violations.append(
            f"{buried} of {jobs} jobs buried ({len(burials)} 'job buried' lines) after "
            f"{len(proxy.cuts)} link cuts; wanted none (deliveries ended by the daemon's own "
            f"lost connection are excused from redelivery_limit): {reasons}"
        )
    finish(
        f"i. cut after delete (client side {client_close})",
        ledger,
        daemons,
        address,
        TUBE,
        tmp_path,
        violations=violations,
        figures={
            "jobs": jobs,
            "cuts": len(proxy.cuts),
            "links_opened": proxy.opened,
            "buried": buried,
            "extra_runs": sum(k - 1 for k in ledger.starts().values()),
        },
    )
