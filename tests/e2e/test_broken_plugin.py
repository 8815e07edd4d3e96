"""A handler package whose plugin fails to import, as a newcomer meets it: the daemon
starts (no pool binds it) and says so; its jobs are not "unknown": each says the handler
failed to load and why, is retried (another worker, or this one fixed, may run it), and
is buried saying the same once its attempts are spent."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import REPO, DaemonProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def install_broken_plugin(site: Path) -> None:
    """What `pip install` leaves for a package with an entry point (its metadata), whose
    module needs a dependency that is missing."""
    info = site / "acme_reports-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-reports\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tubeworker.handlers]\nacme.report = acme_reports:build_report\n"
    )
    (site / "acme_reports.py").write_text("import pdf_toolkit_not_installed\n")


def test_given_a_plugin_that_failed_to_import_then_its_jobs_say_so(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    site = tmp_path / "site"
    install_broken_plugin(site)
    config = tmp_path / "worker.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [worker]
            servers = ["{beanstalkd.address}"]

            [[pool]]
            tubes = ["reports"]

            [pool.retry]
            max_attempts = 2
            backoff_base = 1
            backoff_cap = 1
            """
        )
    )
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    daemon = DaemonProcess(config, tmp_path, env=env)
    daemons.append(daemon.start())
    daemon.wait_ready()
    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="reports") as client:
        job_id = client.put(json.dumps({"task": "acme.report", "payload": {"day": "monday"}}))

    def buried() -> list[dict[str, object]]:
        return [e for e in daemon.events() if e.get("event") == "job buried"]

    wait_until_sync(lambda: bool(buried()), timeout=30, what="the job's burial")
    (released,) = [e for e in daemon.events() if e.get("event") == "job released"]
    (burial,) = buried()
    for line in (released, burial):
        assert line["job_id"] == job_id
        assert line["cause"] == "handler_broken"
        reason = str(line["reason"])
        assert "handler 'acme.report' is registered but failed to load" in reason
        assert "acme_reports:build_report from acme-reports" in reason
        assert "ModuleNotFoundError: No module named 'pdf_toolkit_not_installed'" in reason
    assert str(burial["reason"]).endswith("(attempt 2 of 2: giving up)")
    assert "unknown_task" not in daemon.stdout.read_text()
    assert "Traceback" not in daemon.stderr.read_text()
