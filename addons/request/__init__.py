"""One request as the gateway sees it, and what it answers instead of the upstream.

`authority`: the one host:port a request's names (CONNECT, SNI, Host, :authority) agree on.
`headers`: the headers dropped before a decision (front-proxy identity, method overrides).
`facts`: `RequestFacts`, built the same way for the proxy, `holdgate explain` and rule tests
(target, identity, Kubernetes classification, impersonation, body). `refusal`: every
403/407/413/429 the gateway sends. `flow_filter`: mitmproxy filter expressions for rules, and
flows built for `explain`.

May import `config`, `identity` and `kube`.
"""
