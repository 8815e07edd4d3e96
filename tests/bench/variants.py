"""The daemon scenarios' opt-in variants of ``tubeworker`` that change what a job carries,
the way to the server, or what else the config declares (tests/bench/daemon.py runs them
like any system):

- ``tubeworker-signed``: ``[security] require_signature``, every prefilled body signed
  (HMAC-SHA256) as producers sign: each job's signature verified.
- ``tubeworker-envelope``: an envelope pool (no ``handler =``: the body's ``task`` picks
  the handler), bodies made by ``tubeworker.producer.make_envelope``. The baseline of:
- ``tubeworker-secret``: the same envelopes, each with an encrypted ``secret`` sealed as
  producers seal it (AES-256-GCM, ``make_envelope(..., secret=..., sealer=...)``), and the
  daemon configured with ``[security] encryption_keys_file``: each job's secret opened
  before its handler runs (a bound pool never reads an envelope, hence the envelope pool).
- ``tubeworker-tls``: ``tubeworker`` reaching the same beanstalkd through a local stunnel
  (tests/support/tls.py: Debian's stunnel4, mutual TLS, certificates made with openssl),
  ``servers = ["tls://..."]`` with ``[tls]``. stunnel's own CPU is measured too
  (``terminator_cpu_s`` in the run's JSON): the server side's price of TLS.
- ``tubeworker-features``: ``tubeworker`` exactly (pool, tube, handler, bodies, job lines
  on), its config also declaring what a team's config declares for OTHER jobs
  (:data:`UNUSED_FEATURES`): an API with hosts, a breaker and a limit, with a tube bound
  to it (``[api.partner]``); a ``[[limit]]`` on that tube and one on a handler; a nightly
  ``[[schedule]]`` (cron ``30 2 * * *``) and an hourly ``[[heartbeat]]``. Signatures stay
  off (the default: no ``[security]``). So it measures what features configured but
  unused by a job cost that job. No bench job needs the API or runs under a limit. The
  clock fires only at 02:30 UTC and on the hour: rarely during a run, and then one put
  into a tube no pool here works (a fire due while no such daemon runs is put, coalesced,
  by the next one's clock as it starts). Its steady work is in every run: the planner's
  look every ~5 s, the heartbeat's read every 2 s, a reserve blocked on the ticks. No pool
  here works the features' tubes (another daemon of the fleet would): no extra lane.
  A clock's first start on the bench's beanstalkd makes the ticks while holding its plan
  job, then releases the plan: :func:`clock_releases` counts that, and the daemon
  scenarios take it out of beanstalkd's ``cmd-release`` (it is no job's release).

Only the worker's side differs: prefill, gate and checks talk to beanstalkd directly.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import BenchError, SyncBeanstalk, job_body
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.tls import Stunnel, make_certificates
from tubeworker.beanstalk import protocol as p
from tubeworker.producer import make_envelope
from tubeworker.runtime.clock import PLAN_TUBE
from tubeworker.security.keys import parse_keys
from tubeworker.security.signing import sign

__all__ = ["VARIANTS", "Route", "body_of", "clock_releases", "config_of", "open_route"]

TUBEWORKER_SIGNED = "tubeworker-signed"
TUBEWORKER_ENVELOPE = "tubeworker-envelope"
TUBEWORKER_SECRET = "tubeworker-secret"
TUBEWORKER_TLS = "tubeworker-tls"
TUBEWORKER_FEATURES = "tubeworker-features"
VARIANTS = (
    TUBEWORKER_SIGNED,
    TUBEWORKER_ENVELOPE,
    TUBEWORKER_SECRET,
    TUBEWORKER_TLS,
    TUBEWORKER_FEATURES,
)
# Variants whose pool dispatches envelopes by their task instead of binding the handler.
ENVELOPE_POOLS = (TUBEWORKER_ENVELOPE, TUBEWORKER_SECRET)

BENCH_KEYS = f"bench: {base64.b64encode(b'b' * 32).decode()}\n"
ENCRYPTION_KEYS = f"bench-aes: {base64.b64encode(b'e' * 32).decode()}\n"
# A card-sized secret: what docs/security.md's example seals.
SECRET = {"card": "4111 1111 1111 1111", "cvc": "123"}

# tubeworker-features: flow control, limits and the clock, as a team's config declares
# them, all for other tubes and handlers than the bench's (its tube is unique per run, its
# handler bench.noop). Local limits only: a fleet limit's tokens live in beanstalkd and
# are released after use, which the runs' check would count. No [security]: signatures
# off, the default.
UNUSED_FEATURES = """\
[api.partner]
hosts = ["api.partner.example", "*.partner.example"]
tubes = ["partner-webhooks"]
pause_tubes = true
consecutive_failures = 5
failure_rate = 0.5
min_calls = 20
window = "60s"
cooldown = "30s"
cooldown_cap = "10m"
probes = 1
rate = 50
burst = 10
max_concurrent = 8
[[limit]]
name = "per-customer"
tubes = ["partner-webhooks"]
key = "customer_id"
rate = 5
[[limit]]
name = "invoices"
handlers = ["billing.send_invoice"]
max_concurrent = 2
[[schedule]]
name = "nightly-report"
cron = "30 2 * * *"
tube = "reports"
task = "build-report"
payload = { kind = "daily" }
[[heartbeat]]
tube = "partner-webhooks"
every = "1h"
"""


def _signed_body(seq: int) -> bytes:
    """The bench body (tests/bench/common.py job_body), signed as producers sign."""
    return sign(json.loads(job_body(seq)), parse_keys(BENCH_KEYS))


def _envelope_body(task: str, sealed: bool) -> Callable[[int], bytes]:
    keys = parse_keys(ENCRYPTION_KEYS, exact_bytes=32)

    def body(seq: int) -> bytes:
        secret = SECRET if sealed else None
        return make_envelope(task, {"seq": seq}, secret=secret, sealer=keys)

    return body


def body_of(system: str, handler: str) -> Callable[[int], bytes] | None:
    """Each prefilled job's body (None: the default job_body)."""
    if system == TUBEWORKER_SIGNED:
        return _signed_body
    if system in ENVELOPE_POOLS:
        return _envelope_body(f"bench.{handler}", sealed=system == TUBEWORKER_SECRET)
    return None


def config_of(system: str, workdir: Path, route: Route) -> str:
    """Tables appended to the generated config."""
    if system == TUBEWORKER_SIGNED:
        keys = workdir / "bench-keys"
        keys.write_text(BENCH_KEYS)
        return f'[security]\nsigning_keys_file = "{keys}"\nrequire_signature = true\n'
    if system == TUBEWORKER_SECRET:
        keys = workdir / "bench-encryption-keys"
        keys.write_text(ENCRYPTION_KEYS)
        keys.chmod(0o600)
        return f'[security]\nencryption_keys_file = "{keys}"\n'
    if system == TUBEWORKER_FEATURES:
        return UNUSED_FEATURES
    return route.config


def clock_releases(server: BeanstalkdProcess) -> int:
    """The releases of the clock's plan job on ``server`` so far (0: no daemon with
    schedules ran there). A clock that finds a tick missing (the first start of a daemon
    with schedules on this beanstalkd) makes it while holding the plan, then releases the
    plan: the clock's own bookkeeping, no job handled twice."""
    with SyncBeanstalk(server.host, server.port) as conn:
        replies = conn.pipeline([p.Use(PLAN_TUBE), p.PeekReady(), p.PeekDelayed()])
        releases = 0
        for job_id in {r.id for r in replies[1:] if isinstance(r, p.Found)}:
            stats = conn.request(p.StatsJob(job_id))
            if isinstance(stats, p.JobStats):
                releases += stats.releases
        return releases


@dataclass(frozen=True)
class Route:
    """How the system under test reaches beanstalkd."""

    address: str
    config: str = ""  # e.g. [tls]
    terminator_pid: int | None = None  # a process in the way whose CPU is measured too


@contextlib.contextmanager
def open_route(system: str, server: BeanstalkdProcess, workdir: Path) -> Iterator[Route]:
    """Directly, or (tubeworker-tls) through a stunnel started here and stopped by PID."""
    if system != TUBEWORKER_TLS:
        yield Route(server.address)
        return
    certs = make_certificates(workdir / "tls")  # fresh for each run: not timed
    with Stunnel(certs, server.port) as tunnel:
        if tunnel.proc is None:
            raise BenchError("stunnel did not start")
        yield Route(
            tunnel.address,
            f'[tls]\nca_file = "{certs.ca}"\ncert_file = "{certs.client_cert}"\n'
            f'key_file = "{certs.client_key}"\n',
            tunnel.proc.pid,
        )
