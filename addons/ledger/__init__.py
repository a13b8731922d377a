"""What agents created, so leftovers can be reported and reaped.

`store`: the ledger (SQLite) and its entries (pure). `shared`: the ledger in the replicas'
state store (PostgreSQL), and which one a configuration uses. `ownership`: the mitmproxy side (labels
created objects, records them). `reaping`: existence checks and deletions through the gateway
as the agent `holdgate-reaper`. `cli`: `holdgate resources`, `reap` and `run-end`.

May import `config`, `state`, `identity`, `kube`, `request` and `policy`.
"""
