"""Archive settings: defaults, every field, the errors naming the bad value, what is privileged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from holdgate.config.archive_settings import (
    ArchiveSettings,
    ArchiveSettingsError,
    RequireFor,
    is_privileged,
)


def test_settings_defaults(tmp_path: Path) -> None:
    settings = ArchiveSettings.from_dict({}, tmp_path, tmp_path / "var")
    assert settings.directory == tmp_path / "var" / "archive"
    assert settings.spool == tmp_path / "var" / "spool"
    assert settings.s3 is None and settings.audit_webhook is None
    assert settings.require_for is RequireFor.PRIVILEGED
    assert settings.rotate_bytes == 4 * 1024 * 1024 and settings.rotate_seconds == 30
    assert ArchiveSettings.from_dict(None, tmp_path, tmp_path) == ArchiveSettings.from_dict(
        {}, tmp_path, tmp_path
    )


def test_settings_full(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = ArchiveSettings.from_dict(
        {
            "directory": "arch",
            "s3": {
                "bucket": "audit",
                "prefix": "/holdgate/",
                "endpoint_url": "http://127.0.0.1:9000",
                "region": "eu-west-1",
                "addressing_style": "path",
                "sse": "aws:kms",
                "kms_key_id": "alias/audit",
                "object_lock": {"mode": "COMPLIANCE", "days": 30},
            },
            "rotate_bytes": 1000,
            "rotate_seconds": 2.5,
            "require_for": "all",
            "audit_webhook": {"url": "https://falco.example/k8s-audit", "ca": "ca.pem"},
        },
        tmp_path,
        tmp_path / "var",
    )
    assert settings.directory == tmp_path / "arch"
    assert settings.s3 is not None and settings.s3.prefix == "holdgate"
    assert settings.s3.object_lock is not None and settings.s3.object_lock.days == 30
    assert settings.audit_webhook is not None and settings.audit_webhook.ca == ca
    assert settings.require_for is RequireFor.ALL
    assert settings.destination == "s3://audit/holdgate"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "archive.bogus: unknown field"),
        ({"s3": {"prefix": "x"}}, "archive.s3.bucket: required"),
        ({"s3": {"bucket": "b", "sse": "DES"}}, "archive.s3.sse: 'DES' is not AES256 or aws:kms"),
        ({"s3": {"bucket": "b", "kms_key_id": "k"}}, "archive.s3.kms_key_id: needs sse: aws:kms"),
        ({"s3": {"bucket": "b", "endpoint_url": "ftp://x"}}, "archive.s3.endpoint_url"),
        (
            {"s3": {"bucket": "b", "object_lock": {"mode": "LEGAL", "days": 1}}},
            "archive.s3.object_lock.mode: 'LEGAL' is not GOVERNANCE or COMPLIANCE",
        ),
        (
            {"s3": {"bucket": "b", "object_lock": {"mode": "GOVERNANCE", "days": 0}}},
            "archive.s3.object_lock.days: must be an integer >= 1",
        ),
        ({"s3": {"bucket": "b", "addressing_style": "dns"}}, "archive.s3.addressing_style"),
        ({"rotate_bytes": "big"}, "archive.rotate_bytes: must be an integer >= 1"),
        ({"rotate_seconds": 0}, "archive.rotate_seconds: must be a number"),
        ({"require_for": "writes"}, "archive.require_for: 'writes' is not one of"),
        (
            {"audit_webhook": "falco:9765"},
            "archive.audit_webhook: 'falco:9765' is not an http(s) URL",
        ),
        ({"audit_webhook": {"url": "http://x", "ca": "nope.pem"}}, "archive.audit_webhook.ca"),
        (
            {"fsync_before_response": "yes"},
            "archive.fsync_before_response: must be true, false or privileged",
        ),
        ({"upload_retry": {"max_seconds": -1}}, "archive.upload_retry.max_seconds"),
    ],
)
def test_settings_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ArchiveSettingsError) as e:
        ArchiveSettings.from_dict(data, tmp_path, tmp_path)
    assert message in str(e.value)
    assert e.value.location == tuple(str(e.value).split(":")[0].split(".")[1:])


def test_schema_matches_the_parser(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from holdgate.config.archive_settings import ARCHIVE_SCHEMA

    good = {
        "directory": "var/archive",
        "s3": {"bucket": "b", "object_lock": {"mode": "GOVERNANCE", "days": 1}},
        "audit_webhook": "https://falco.example/k8s-audit",
        "require_for": "none",
    }
    jsonschema.Draft202012Validator(ARCHIVE_SCHEMA).validate(good)
    ArchiveSettings.from_dict(good, tmp_path, tmp_path)
    assert not jsonschema.Draft202012Validator(ARCHIVE_SCHEMA).is_valid({"bogus": 1})


@pytest.mark.parametrize(
    ("request_facts", "action", "privileged"),
    [
        ({"kubernetes": {"verb": "get", "resource": "pods"}}, "allow", False),
        ({"kubernetes": {"verb": "watch", "resource": "pods"}}, "allow", False),
        ({"kubernetes": {"verb": "delete", "resource": "pods"}}, "allow", True),
        ({"kubernetes": {"verb": "get", "resource": "pods", "subresource": "exec"}}, "allow", True),
        ({"kubernetes": {"verb": "get", "resource": "secrets"}}, "approve", True),
        ({"kubernetes": {"verb": "proxy", "resource": "services"}}, "allow", True),
        ({"method": "GET"}, "allow", False),
        ({"method": "POST"}, "allow", True),
    ],
)
def test_is_privileged(request_facts: dict[str, Any], action: str, privileged: bool) -> None:
    assert is_privileged(request_facts, action) is privileged
