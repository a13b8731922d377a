"""Archive keys parse back into gateway, sequence, kind and hour."""

from __future__ import annotations

from holdgate.archive.layout import Kind, parse_key


def test_keys_parse_back() -> None:
    info = parse_key("pre/fix", "pre/fix/2024/05/06/07/holdgate-prod-1-0000000042.audit.jsonl")
    assert info is not None
    assert (info.gateway, info.seq, info.kind, info.hour) == (
        "holdgate-prod-1",
        42,
        Kind.AUDIT,
        "2024/05/06/07",
    )
    assert parse_key("pre", "other/2024/05/06/07/gw-0000000001.mitm") is None
    assert parse_key("", "2024/05/06/07/gw-1.mitm") is None
