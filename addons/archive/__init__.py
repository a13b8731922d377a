"""The audit archive: every flow, masked, to a local spool and then to S3 (or a directory).

`addon`: the mitmproxy side (copies flow state to a writer process). `writer`, `store`: the
writer process and what it runs. `records`, `flow_format`, `audit_events`: what a record holds.
`spool`, `durable_files`: segments on disk. `uploads`, `backends`, `layout`: sealed segments,
the hash chain and where objects go. `reading`, `cli`: `holdgate archive verify` and `replay`.

May import `config`; nothing else of holdgate's.
"""
