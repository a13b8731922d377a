"""Who is asking, and what the gateway answers for them upstream.

`agents`: static agents (proxy credentials checked against a SHA-256) and OIDC agents (a JWT as
the proxy password). `proxy_auth`: the mitmproxy addon that answers 407 and keeps each
connection's identity. `upstream_credentials`: the credentials the gateway injects, so agents
never hold one.

Imports nothing else of holdgate's.
"""
