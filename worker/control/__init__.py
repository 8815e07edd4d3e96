"""The control plane: Prometheus metrics, health and readiness, status, token-guarded
actions and a WebSocket of live events, served beside the daemon by ``tubeworker run
--control HOST:PORT`` (or ``[control] listen``)."""
