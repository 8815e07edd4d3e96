"""Putting jobs, by concern: ``errors`` (what a put can raise), ``checks`` (a put checked
before anything is sent), ``failover`` (which server, what a reply means: written once),
``sync_io`` (:class:`Producer`, blocking) and ``trio_io`` (:class:`AsyncProducer`), each
on ``workflows`` (chains and batches) and ``spooling`` (to the spool when no server
stores a job, and its flushing; ``spool`` keeps the jobs). The public names are
:mod:`tubeworker.producer`'s."""
