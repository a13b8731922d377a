"""Rolling rules out from what agents did: `holdgate rules suggest` proposes least-privilege
allow rules (with `tests:`) from archived traffic, `holdgate rules report` says where rules
and traffic drifted apart (rules that never matched, requests left to a target's default,
approve rules whose holds always go one way, approval latency, holds nobody answered).

Pure cores (`observed.py`, `suggest.py`, `drift.py`) take archive index lines and the
loaded policy; `cli.py` reads the archive. May import archive, policy, config and below.
"""
