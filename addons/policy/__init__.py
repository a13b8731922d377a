"""What decides: rule files compiled into a policy, the decision for one request, mask rules.

`rules`: rule compilation, the rule index and the decision (deny-overrides); mask rules.
`rule_tests`: the `tests:` written beside rules, run through the same policy.

Pure: no mitmproxy apart from filter expressions. May import `config`, `identity`, `request`
and `masking`.
"""
