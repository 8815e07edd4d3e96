"""Batches: sets of jobs whose callbacks fire exactly once (docs/workflows.md#batches).

``model`` says how a batch is kept in beanstalkd, ``ops`` what its makers, members and
keepers send (no I/O), ``drive`` runs those exchanges on a connection.
"""
