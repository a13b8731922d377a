"""The configuration and what the gateway keeps on disk.

`yaml_source`: YAML that remembers FILE:LINE for every error. `gateway_config`: the config file
(targets, agents, approvals, where the rules are), validated against `schema/`.
`archive_settings`, `slack_settings`: the typed settings of those sections. `state_files`:
0600 files in the state directory. `gateway_ca`: the CA agents trust.

May import `identity`; nothing from mitmproxy.
"""
