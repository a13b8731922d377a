"""What agents created, so leftovers can be reported and reaped.

`store`: the ledger (SQLite) and its entries (pure). `ownership`: the mitmproxy side (labels
created objects, records them). `reaping`: existence checks and deletions through the gateway
as the agent `holdgate-reaper`. `cli`: `holdgate resources`, `reap` and `run-end`.

May import `config`, `identity`, `kube`, `request` and `policy`.
"""
