"""holdgate: a human-in-the-loop gateway for automated agents, built as mitmproxy addons.

The repository keeps this package in `addons/`; it installs as `holdgate`. One folder per concern,
dependencies pointing down this list (a folder imports only from folders below it):

- `gateway.py`, `master.py`, `cli.py`: the shell. The mitmproxy addon that ties the concerns to
  mitmproxy's hooks, the master `holdgate run` starts, and the command line;
  `unsafe_options.py` (mitmproxy options refused or held safe) and `request_limits.py` (head,
  body and buffer bounds), `operations.py` (/healthz, /readyz, /metrics) and `workers.py`
  (`holdgate run --workers N`: processes behind one port) belong to it.
  `metrics.py` (the gateway's Prometheus metrics), `printable.py` (outside text escaped for
  logs and tables) and `listening.py` (serving an aiohttp app on a port) import nothing of
  holdgate's, so any folder may use them.
- `rollout/`: rules from archived traffic: `holdgate rules suggest` and `rules report`.
- `sandbox/`: the embedded default's Kubernetes API simulator (imports config, kube).
- `ledger/`: what agents created, ownership labels, reaping, `holdgate resources`/`reap`.
- `archive/`: the audit archive: writer process, spool, uploads, reading, `holdgate archive`.
- `approvals/`: holds and their reviews: state machine, desk, approvals page, `slack/`.
- `policy/`: rule files compiled into decisions and mask rules; rule `tests:`.
- `masking/`: JSONPath masks over JSON bodies and watch streams, and the mitmproxy side of it.
- `request/`: one request as the gateway sees it (facts for the policy) and the refusals it sends.
- `state/`: the replicas' shared state in PostgreSQL: connections, migrations, leases.
- `config/`: the configuration file, every section's settings, state files, the gateway's CA.
- `identity/`: who is asking (proxy credentials, OIDC) and the upstream credentials injected.
- `kube/`: Kubernetes requests classified as the apiserver does, protobuf bodies, kubeconfigs.

Pure cores import nothing from mitmproxy; the addons are thin shells over them.
"""
