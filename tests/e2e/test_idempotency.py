"""Once per key through `tubeworker run`, as docs/unique.md writes it: the web app's outbox
(the order and its job's key in one transaction; a relay that puts with the key as the
envelope's id) and the worker's `idempotent(store)` handler. An order placed twice, and a
relay that "crashed" between a put and its mark: three puts, each receipt mailed once, the
extra job done as a duplicate."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.docs import block, run_block
from tests.support.process import DaemonProcess
from tests.support.waiting import wait_until
from tubeworker.producer import Producer

pytestmark = pytest.mark.slow

STORE_PATH = "/var/lib/myapp/receipts.sqlite"  # the docs' path, replaced by the test's
# The application code the handler calls: here, a line per receipt mailed.
MAILER = """

import os as _os


async def mail_receipt(order_id: int) -> None:
    with open(_os.environ["MAILED"], "a") as mailed:
        mailed.write(f"{order_id}\\n")
"""

CONFIG = """\
[worker]
servers = ["{address}"]

[handlers]
"send-receipt" = "myapp.receipts:send_receipt"

[[pool]]
name = "receipts"
tubes = ["receipts"]
"""


def _events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


async def test_given_an_outbox_and_an_idempotent_handler_then_each_receipt_is_mailed_once(
    beanstalkd: BeanstalkdProcess, tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    handler = block("docs/unique.md", "# myapp/receipts.py").code
    assert STORE_PATH in handler
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "receipts.py").write_text(
        handler.replace(STORE_PATH, str(tmp_path / "receipts.sqlite")) + MAILER
    )
    config = tmp_path / "worker.toml"
    config.write_text(CONFIG.format(address=beanstalkd.address))
    mailed = tmp_path / "mailed"
    daemon = DaemonProcess(config, tmp_path, env={"MAILED": str(mailed)})
    daemons.append(daemon.start())
    daemon.wait_ready()

    app = run_block("docs/unique.md", "# myapp/orders.py (the web app)")
    db = sqlite3.connect(tmp_path / "app.sqlite")
    db.executescript(str(app["SCHEMA"]))
    place_order: Any = app["place_order"]
    relay: Any = app["relay"]
    with Producer([beanstalkd.address]) as producer:
        place_order(db, 1, 100)
        place_order(db, 1, 100)  # the request, retried: nothing changes
        place_order(db, 2, 250)
        relay(db, producer)
        # The relay "crashed" after putting receipt-1 and before marking it: next time it
        # puts it again, with the same id.
        with db:
            db.execute("UPDATE outbox SET sent = 0 WHERE id = 'receipt-1'")
        relay(db, producer)
    assert db.execute("SELECT count(*) FROM orders").fetchone() == (2,)

    await wait_until(
        lambda: len(_events(daemon, "job done")) == 3, timeout=30, what="three jobs done"
    )
    done = _events(daemon, "job done")
    assert sorted(e.get("cause", "completed") for e in done) == [
        "completed",
        "completed",
        "duplicate",
    ]
    (duplicate,) = [e for e in done if e.get("cause") == "duplicate"]
    assert duplicate["id_key"] == "receipt-1"
    assert duplicate["reason"] == "idempotency key 'receipt-1' was done already"
    assert sorted(mailed.read_text().split()) == ["1", "2"]
