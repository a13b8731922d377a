"""The embedded default's sandbox: a Kubernetes API simulator faithful to the wire (discovery,
CRUD, protobuf bodies, watches, WebSocket exec, OpenAPI), run as the upstream of one target.

May import `config` and `kube`; the gateway hands itself to `addon.Sandbox` (no import back).
"""
