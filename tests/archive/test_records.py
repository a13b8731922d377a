"""Archive records: credential headers masked, Secrets masked without a masker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from holdgate.archive.records import Submission, mask_header_value
from holdgate.archive.store import ArchiveStore
from tests.archive.canaries import (
    KUBE_GET,
    archived_files,
    canary_flow,
    read_flows,
    settings_for,
)


@pytest.mark.parametrize(
    ("name", "value", "masked"),
    [
        (b"Authorization", b"Bearer abc.def", b"Bearer <masked>"),
        (
            b"authorization",
            b"AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ff",
            b"AWS4-HMAC-SHA256 <masked>",
        ),
        (b"Authorization", b"rawtoken", b"<masked>"),
        (b"Proxy-Authorization", b"Basic YTpi", b"Basic <masked>"),
        (b"Cookie", b"a=1; b=2", b"a=<masked>; b=<masked>"),
        (b"Set-Cookie", b"sid=s3cr3t; Path=/; HttpOnly", b"sid=<masked>; Path=/; HttpOnly"),
        (b"X-Amz-Security-Token", b"tok", b"<masked>"),
    ],
)
def test_mask_header_value(name: bytes, value: bytes, masked: bytes) -> None:
    assert mask_header_value(name, value) == masked


def test_builtin_secret_mask_when_no_masker(
    tmp_path: Path, store_factory: Callable[..., ArchiveStore]
) -> None:
    settings = settings_for(tmp_path)
    store = store_factory(settings)
    secret_kube = {**KUBE_GET, "verb": "create", "resource": "secrets", "name": ""}
    flow = canary_flow(kube=secret_kube)
    flow.request.method = "POST"
    flow.request.headers["Content-Type"] = "application/json"
    flow.request.content = json.dumps(
        {"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "CANARY-sd-1"}}
    ).encode()
    assert flow.response is not None
    flow.response.content = json.dumps(
        {"kind": "Secret", "metadata": {"name": "s"}, "data": {"password": "Q0FOQVJZLXNkLTE="}}
    ).encode()
    protobuf = canary_flow(kube=secret_kube)
    protobuf.request.headers["Content-Type"] = "application/vnd.kubernetes.protobuf"
    protobuf.request.content = b"k8s\x00\n\x0c\n\x02v1\x12\x06Secret CANARY-pb-2"
    store.submit(Submission(flow.get_state()))
    store.submit(Submission(protobuf.get_state()))
    assert store.drain(timeout=10)
    for key, blob in archived_files(settings.directory).items():
        for needle in (b"CANARY-sd-1", b"Q0FOQVJZLXNkLTE=", b"CANARY-pb-2"):
            assert needle not in blob, key
    (mitm,) = settings.directory.rglob("*.mitm")
    first, second = read_flows(mitm.read_bytes())
    assert json.loads(first.request.content or b"")["stringData"] == {"password": "<masked>"}
    assert b"withheld" in (second.request.content or b"")
