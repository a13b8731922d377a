"""What the agent must not see: JSONPath masks over JSON documents, Kubernetes-aware.

`masks`: the pure core (compiling masks, masking bodies, lists, tables and watch events).
`responses`: the mitmproxy side (ask upstream for JSON, mask buffered bodies and live streams,
withhold what cannot be masked).

May import `kube` and `request`.
"""
