"""Observability: logging and counters. Every layer may emit into it; it imports nothing
else of tubeworker's."""
