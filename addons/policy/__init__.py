"""What decides: rule files compiled into a policy, the decision for one request, mask rules.

`rules`: rule compilation, the rule index and the decision (deny-overrides, privileged
subresources only where named, impersonation per header); mask rules. `lint`: what a rule says
that it cannot mean (singular resources, reviewers who can never approve). `rule_tests`: the
`tests:` written beside rules, run through the same policy (a reload whose tests fail is
refused).

Pure: no mitmproxy apart from filter expressions. May import `config`, `identity`, `kube`,
`request` and `masking`.
"""
