"""Masking cost: a 5,000-Secret list against a bare json.loads + json.dumps, and per watch event.

Run: .venv/bin/python bench/bench_masking.py [--secrets N] [--events N] [--runs N]
Prints a short table; the list goal is a ratio of at most 2.0.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from holdgate.masking.masks import (  # noqa: E402
    KUBERNETES_SECRET_MASKS,
    LAST_APPLIED,
    MaskStyle,
    WatchMasker,
    mask_json_body,
)

GOAL = 2.0
SEPARATORS = (",", ":")


def secret(i: int) -> dict[str, Any]:
    """A Secret as the apiserver returns it after `kubectl apply`: data, labels, annotations."""
    name = f"app-{i:05d}-credentials"
    data = {
        key: base64.b64encode(f"{key}-{i}-{'s3cr3t' * (6 + i % 5)}".encode()).decode()
        for key in ("username", "password", "api-key", "tls.crt", "tls.key")
    }
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "prod", "labels": {"app": f"app-{i % 50}"}},
        "type": "Opaque",
        "data": data,
    }
    return {
        "metadata": {
            "name": name,
            "namespace": "prod",
            "uid": f"6f1c2d3e-{i:04x}-4a5b-8c9d-0e1f2a3b4c5d",
            "resourceVersion": str(100000 + i),
            "creationTimestamp": "2026-01-02T03:04:05Z",
            "labels": {
                "app": f"app-{i % 50}",
                "team": "payments",
                "app.kubernetes.io/managed-by": "kubectl",
                "tier": "backend",
            },
            "annotations": {
                LAST_APPLIED: json.dumps(applied, separators=SEPARATORS) + "\n",
                "owner": "platform@example.com",
            },
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-01-02T03:04:05Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:data": {f"f:{k}": {} for k in data},
                        "f:metadata": {"f:annotations": {".": {}, f"f:{LAST_APPLIED}": {}}},
                        "f:type": {},
                    },
                }
            ],
        },
        "data": data,
        "type": "Opaque",
    }


def secret_list(n: int) -> bytes:
    doc = {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "200000"},
        "items": [secret(i) for i in range(n)],
    }
    return json.dumps(doc, separators=SEPARATORS).encode()


def watch_events(n: int) -> list[bytes]:
    events = []
    for i in range(n):
        obj = {"kind": "Secret", "apiVersion": "v1", **secret(i)}
        line = json.dumps({"type": "MODIFIED", "object": obj}, separators=SEPARATORS)
        events.append(line.encode() + b"\n")
    return events


def best(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bare(body: bytes) -> bytes:
    return json.dumps(json.loads(body), separators=SEPARATORS).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=5000)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    body = secret_list(args.secrets)
    keyed = KUBERNETES_SECRET_MASKS.with_style(MaskStyle.keyed(b"bench-secret-0123456789abcdef"))
    result = mask_json_body(body, KUBERNETES_SECRET_MASKS)
    assert not result.replaced_whole and b"s3cr3t" not in result.body
    assert result.masked == 10 * args.secrets, result.masked

    baseline = best(lambda: bare(body), args.runs)
    fixed = best(lambda: mask_json_body(body, KUBERNETES_SECRET_MASKS), args.runs)
    hashed = best(lambda: mask_json_body(body, keyed), args.runs)

    events = watch_events(args.events)

    def passthrough() -> None:
        out = [chunk for chunk in events]
        assert len(out) == len(events)

    def masked_stream(masks: Any) -> Callable[[], None]:
        def run() -> None:
            masker = WatchMasker(masks)
            for chunk in events:
                masker.feed(chunk)
            masker.flush()

        return run

    def bare_events() -> None:
        for chunk in events:
            bare(chunk)

    watch_runs = max(3, args.runs // 2)
    through = best(passthrough, watch_runs)
    bare_per_event = best(bare_events, watch_runs) / args.events * 1e6
    watch_fixed = best(masked_stream(KUBERNETES_SECRET_MASKS), watch_runs)
    watch_hashed = best(masked_stream(keyed), watch_runs)
    per_fixed = (watch_fixed - through) / args.events * 1e6
    per_hashed = (watch_hashed - through) / args.events * 1e6

    size = len(body) / 1e6
    print(f"SecretList: {args.secrets} Secrets, {size:.1f} MB JSON, best of {args.runs} runs")
    print(f"{'case':<44}{'time':>10}{'ratio':>8}")
    print(f"{'bare json.loads + json.dumps':<44}{baseline * 1e3:>8.1f}ms{1.0:>8.2f}")
    print(
        f"{'mask_json_body, Secret built-ins, fixed':<44}{fixed * 1e3:>8.1f}ms{fixed / baseline:>8.2f}"
    )
    print(
        f"{'mask_json_body, Secret built-ins, hmac':<44}{hashed * 1e3:>8.1f}ms{hashed / baseline:>8.2f}"
    )
    print(
        f"goal: ratio <= {GOAL:.1f} (fixed style): {'met' if fixed / baseline <= GOAL else 'MISSED'}"
    )
    print()
    print(f"Watch: {args.events} single-Secret events, one per chunk")
    print(f"{'case':<44}{'per event':>12}")
    print(f"{'pass bytes through':<44}{through / args.events * 1e6:>10.2f}us")
    print(f"{'(reference: bare json.loads + json.dumps)':<44}{bare_per_event:>10.2f}us")
    print(f"{'WatchMasker, added, fixed':<44}{per_fixed:>10.2f}us")
    print(f"{'WatchMasker, added, hmac':<44}{per_hashed:>10.2f}us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
