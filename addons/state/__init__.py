"""Shared state of gateway replicas, in PostgreSQL (`state_store:` in the configuration).

`postgres`: settings (the password from the environment or a file, never the config), the
connections (one for transactions, one for LISTEN), schema migrations applied at start, the
replica's lease, and what the store's health is. The embedded default runs without it: one
process keeps its state in memory.

Imports nothing of holdgate's. `approvals/` builds on it.
"""
