"""beanstalkd's own health, per configured server, from the poller's ``stats`` of each:
up (0 the round it stops answering, not a missing series), connections, jobs, job
timeouts, draining, uptime, binlog files and records, CPU, and an info series with its
version, host name and id. Every daemon exports them; alerts take the max by server."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tubeworker.control.poller import TubeDepths

__all__ = ["ServerCollector"]


class ServerCollector(Collector):
    def __init__(self, depths: TubeDepths, max_connections: int = 0) -> None:
        self.depths = depths
        self.max_connections = max_connections

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "tubeworker_server_up", "1 if the server answered the last poll", labels=["server"]
        )
        connections = GaugeMetricFamily(
            "tubeworker_server_connections",
            "Open connections by kind: current (all), producers, workers, waiting (blocked "
            "in a reserve)",
            labels=["server", "kind"],
        )
        limit = GaugeMetricFamily(
            "tubeworker_server_max_connections",
            "The servers' connection limit as configured ([control] server_max_connections)",
            labels=["server"],
        )
        jobs = GaugeMetricFamily(
            "tubeworker_server_jobs", "Jobs on the server by state", labels=["server", "state"]
        )
        timeouts = CounterMetricFamily(
            "tubeworker_server_job_timeouts",
            "Reservations that ran out of TTR (workers dying, or TTRs too short)",
            labels=["server"],
        )
        draining = GaugeMetricFamily(
            "tubeworker_server_draining", "1 while the server takes no new jobs", labels=["server"]
        )
        uptime = GaugeMetricFamily(
            "tubeworker_server_uptime_seconds", "Since the server started", labels=["server"]
        )
        binlog = GaugeMetricFamily(
            "tubeworker_server_binlog_index",
            "The binlog's oldest file still needed and the current one (files between them "
            "are kept on disk)",
            labels=["server", "file"],
        )
        records = CounterMetricFamily(
            "tubeworker_server_binlog_records",
            "Binlog records written, and migrated (compacted into newer files)",
            labels=["server", "kind"],
        )
        binlog_size = GaugeMetricFamily(
            "tubeworker_server_binlog_max_size_bytes", "Each binlog file's size", labels=["server"]
        )
        cpu = CounterMetricFamily(
            "tubeworker_server_cpu_seconds",
            "The server process's CPU time (rusage)",
            labels=["server", "mode"],
        )
        batches = GaugeMetricFamily(
            "tubeworker_server_batches",
            "Batches the server keeps: open, running, or ended within their retention "
            "(docs/workflows.md#batches)",
            labels=["server"],
        )
        info = GaugeMetricFamily(
            "tubeworker_server_info",
            "The server's version, host name and id (a new id: it restarted, ids may repeat)",
            labels=["server", "version", "hostname", "id"],
        )
        for server, seen in sorted(self.depths.servers.items()):
            up.add_metric([server], 1.0 if seen.up else 0.0)
            if self.max_connections:
                limit.add_metric([server], self.max_connections)
            s = seen.stats
            if s is None:
                continue
            for kind, count in (
                ("current", s.current_connections),
                ("producers", s.current_producers),
                ("workers", s.current_workers),
                ("waiting", s.current_waiting),
            ):
                connections.add_metric([server, kind], count)
            for state, count in (
                ("ready", s.current_jobs_ready),
                ("urgent", s.current_jobs_urgent),
                ("reserved", s.current_jobs_reserved),
                ("delayed", s.current_jobs_delayed),
                ("buried", s.current_jobs_buried),
            ):
                jobs.add_metric([server, state], count)
            timeouts.add_metric([server], s.job_timeouts)
            draining.add_metric([server], 1.0 if s.draining else 0.0)
            uptime.add_metric([server], s.uptime)
            binlog.add_metric([server, "oldest"], s.binlog_oldest_index)
            binlog.add_metric([server, "current"], s.binlog_current_index)
            records.add_metric([server, "written"], s.binlog_records_written)
            records.add_metric([server, "migrated"], s.binlog_records_migrated)
            binlog_size.add_metric([server], s.binlog_max_size)
            cpu.add_metric([server, "user"], s.rusage_utime)
            cpu.add_metric([server, "system"], s.rusage_stime)
            info.add_metric([server, s.version, s.hostname, s.id], 1.0)
            batches.add_metric([server], seen.batches)
        yield from (up, connections, limit, jobs, timeouts, draining, uptime)
        yield from (binlog, records, binlog_size, cpu, info, batches)
