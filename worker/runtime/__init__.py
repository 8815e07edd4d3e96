"""The runtime: reserving jobs, running their handlers, and telling beanstalkd how each
ended. The files, in the order of a job's life:

1. ``serve.py`` runs a pool; ``pool.py`` knows its tubes (patterns found by polling
   ``list-tubes``), its dispatch rules and its :class:`~admission.Admission`, and splits
   its concurrency into lanes. ``slots.py``: the process-wide cap on jobs in flight.
2. ``lane.py``: one beanstalkd connection and its pump, which writes outcomes, touches and
   reserves in one batch (``outbox.py``: what is queued and on the wire; ``batching.py``:
   how big a batch may be) and asks ``stats-job`` for what it reserved
   (``lane_connection.py``: its connection life, connect, lose, back off, again).
3. ``lanejobs.py``: the jobs side of a lane, entered once per event of a job: it arrives
   (``dispatch.py`` plans it, pure: a handler or a burial; ``policy.py`` counts its
   attempts; ``excuses.py`` and ``returns`` records excuse redeliveries that were not its
   fault), it starts, it finishes, beanstalkd confirms its outcome (``lane_outcomes.py``:
   the outcome side, its base class).
4. ``admission.py``: whether it may run now, or waits for its APIs and limits (held,
   touched), or is deferred.
5. ``run.py``: its run (its own deadline before the TTR, its touch schedule);
   ``runs.py`` starts and finishes the runs of a lane (``in_turn.py``: the runs of a batch
   in one task, each with a task and a cancel scope of its own only once it waits;
   ``detours.py``: a copy for a newer worker, a chain's next step, a unique key's lock);
   ``invoke.py`` calls the handler
   (the only ``except`` around handler code; ``processes.py`` for the compute profile).
6. ``binlog.py``: a failure or burial held while its server's binlog has no room.
7. ``outcome.py``: what became of it (delete, release, bury, return, and why);
   ``outcome_log.py``: its one log line and its counters, once beanstalkd confirmed it;
   ``records.py``: what is kept in beanstalkd about it (why it was buried; a return the
   daemon chose).

``services.py`` holds what lanes share (config, registry, producer, HTTP client, flow
control, records); ``state.py`` the process's run state (fetching, quiet, drain).
"""
