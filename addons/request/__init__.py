"""One request as the gateway sees it, and what it answers instead of the upstream.

`facts`: `RequestFacts`, built the same way for the proxy, `holdgate explain` and rule tests
(target, identity, Kubernetes classification, body). `refusal`: every 403/407 the gateway sends.
`flow_filter`: mitmproxy filter expressions for rules, and flows built for `explain`.

May import `config`, `identity` and `kube`.
"""
