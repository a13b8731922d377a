"""Throughput and latency through holdgate next to plain mitmdump, and the decision cost by rule count.

Keep-alive HTTPS clients (1 and 8) GET a ConfigMap from a loopback upstream: direct, through
plain mitmdump (no addons), and through `holdgate run` with 10, 1,000 and 10,000 generated rules
(bench/ruleset.py: namespace, agent and group globs, path rules, as teams write them), agents
authenticated, a mask rule on the answer, the archive on (a local directory, default settings:
these reads are released once their record is in the writer's pipe; once more at 1,000 rules
with `fsync_before_response: true`, every response waiting for its fsync), and 10,000 rules
again with the rule that allows the request last in load order. Configurations alternate within each round; figures are
medians over rounds. Then the stall while 10,000 rules hot-reload, and, in process, the
decision alone (classification, policy, masks) per request by rule count, the matching rule
first and last, with a check that the rule index decides exactly as a scan of every rule.

    .venv/bin/python bench/bench_gateway.py [--seconds 3] [--rounds 2] [--rules 10,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402
import ruleset  # noqa: E402

THROUGHPUT_GOAL = 0.90
RULES_GOAL = 0.90  # throughput with the largest rule set / the smallest, whatever the order
DECISION_GOAL = 2.0


def archive_records(home: Path) -> int:
    """Files the archive wrote (spool or directory); 0 when it is not on."""
    return sum(
        1
        for d in ("archive", "spool")
        if (home / d).exists()
        for p in (home / d).rglob("*")
        if p.is_file()
    )


def masked(status: int, body: bytes) -> bool:
    """The gateway's answer: allowed, and the mask rule applied."""
    return status == 200 and b'"password":"***"' in body and b"hunter2" not in body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rules", default="10,1000,10000")
    args = parser.parse_args()
    counts = [int(n) for n in args.rules.split(",")]

    info = rig.machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    work = Path(tempfile.mkdtemp(prefix="holdgate-bench-"))
    with rig.running_upstream(work) as upstream:
        end_to_end(work, upstream, counts, args.seconds, args.rounds)
    print()
    in_process(work, counts)
    return 0


# --- end to end -----------------------------------------------------------------------------


def end_to_end(
    work: Path, upstream: rig.Upstream, counts: list[int], seconds: float, rounds: int
) -> None:
    mitmdump = rig.start_mitmdump(work / "mitmdump", upstream.ca)
    mid = 1000 if 1000 in counts else counts[len(counts) // 2]
    # The default archive settings: reads released once in the writer's pipe, writes fsynced.
    variants: list[tuple[str, int, bool | str, bool]] = [
        (f"holdgate {n} rules", n, "privileged", False) for n in counts
    ]
    variants.append((f"holdgate {counts[-1]}, matching rule last", counts[-1], "privileged", True))
    variants.append((f"holdgate {mid}, every response fsynced", mid, True, False))
    gateways: dict[str, rig.Proxy] = {}
    try:
        for label, n, fsync, last in variants:
            home = work / label.replace(" ", "-").replace(",", "")
            config = ruleset.write_gateway_home(
                home,
                n,
                ruleset.Upstreams(upstream.url, upstream.ca),
                fsync_before_response=fsync,
                matching_last=last,
            )
            gateways[label] = rig.start_holdgate(home, config)
        auth = rig.basic(ruleset.BENCH_AGENT, ruleset.BENCH_TOKEN)

        def through_gateway(proxy: rig.Proxy) -> Callable[[], Awaitable[rig.Tunnel]]:
            context = rig.client_context(proxy.ca)
            return lambda: rig.Tunnel.open(
                ruleset.KUBE_HOST, 443, context, proxy_port=proxy.port, proxy_authorization=auth
            )

        direct_context = rig.client_context(upstream.ca)
        md_context = rig.client_context(mitmdump.ca)
        setups: dict[str, tuple[Callable[[], Awaitable[rig.Tunnel]], rig.Proxy | None]] = {
            "direct": (
                lambda: rig.Tunnel.open("localhost", upstream.port, direct_context),
                None,
            ),
            "mitmdump": (
                lambda: rig.Tunnel.open(
                    "localhost", upstream.port, md_context, proxy_port=mitmdump.port
                ),
                mitmdump,
            ),
        }
        for label, proxy in gateways.items():
            setups[label] = (through_gateway(proxy), proxy)
        print(
            f"started: mitmdump in {mitmdump.started_in:.1f}s; "
            + ", ".join(f"{label} in {p.started_in:.1f}s" for label, p in gateways.items())
        )

        results: dict[tuple[str, int], list[rig.LoadResult]] = {}
        for _ in range(rounds):
            for clients in (1, 8):
                for name, (opener, proxy) in setups.items():
                    result = asyncio.run(
                        rig.run_load(
                            opener,
                            ruleset.CONFIGMAP_PATH,
                            clients,
                            seconds,
                            check=masked if name.startswith("holdgate") else answered,
                            proxy=proxy,
                        )
                    )
                    if result.errors:
                        raise RuntimeError(f"{name}: {result.errors} failed requests")
                    results.setdefault((name, clients), []).append(result)
        report(results, list(setups), rounds, seconds, f"holdgate {mid} rules")
        largest = f"holdgate {counts[-1]} rules"
        stall, took = asyncio.run(reload_stall(gateways[largest], setups[largest][0]))
        print(
            f"\nhot reload of {counts[-1]} rules (a rule file changed): the slowest request while "
            f"reloading took {stall * 1e3:.0f} ms; reload done {took:.1f}s after the change"
        )
        for label, proxy in gateways.items():
            records = archive_records(proxy.log.parent)
            print(
                f"{label}: RSS {proxy.rss_mib():.0f} MiB after the runs; archive: "
                + (f"{records} files written" if records else "nothing written (not on)")
            )
        print(f"mitmdump: RSS {mitmdump.rss_mib():.0f} MiB")
    finally:
        mitmdump.stop()
        for proxy in gateways.values():
            proxy.stop()


async def reload_stall(
    proxy: rig.Proxy, opener: Callable[[], Awaitable[rig.Tunnel]]
) -> tuple[float, float]:
    """Change a rule file (same rules) and keep one client busy until the gateway has reloaded:
    (the slowest request's seconds, seconds from the change to the reload's log line)."""
    tunnel = await opener()
    await tunnel.get(ruleset.CONFIGMAP_PATH)
    rules = proxy.log.parent / "rules" / "10-teams.yaml"
    logged = proxy.log.read_text().count("rules reloaded")
    rules.write_text(rules.read_text() + "\n# changed by the benchmark\n")
    changed = time.monotonic()
    slowest, reloaded = 0.0, 0.0
    try:
        while time.monotonic() - changed < 300:
            start = time.perf_counter()
            await tunnel.get(ruleset.CONFIGMAP_PATH)
            slowest = max(slowest, time.perf_counter() - start)
            if not reloaded and proxy.log.read_text().count("rules reloaded") > logged:
                reloaded = time.monotonic() - changed
            if reloaded and time.monotonic() - changed > reloaded + 1:
                break
    finally:
        tunnel.close()
    return slowest, reloaded


def answered(status: int, body: bytes) -> bool:
    return status == 200


def report(
    results: dict[tuple[str, int], list[rig.LoadResult]],
    names: list[str],
    rounds: int,
    seconds: float,
    mid: str,
) -> None:
    print(f"\nkeep-alive HTTPS GETs, median of {rounds} rounds of {seconds:g}s")
    print(
        f"{'configuration':<30}{'clients':>8}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'CPU/req: proxy':>16}{'+ writer':>10}"
    )
    med: dict[tuple[str, int], dict[str, float]] = {}
    for clients in (1, 8):
        for name in names:
            rs = results[(name, clients)]
            m = {
                key: rig.median([getattr(r, attr) for r in rs])
                for key, attr in (
                    ("rps", "rps"),
                    ("p50", "p50_ms"),
                    ("p99", "p99_ms"),
                    ("cpu", "cpu_us"),
                    ("tree", "tree_cpu_us"),
                )
            }
            med[(name, clients)] = m
            cpu = f"{m['cpu']:.0f} us" if m["cpu"] == m["cpu"] else "-"
            tree = f"{m['tree']:.0f} us" if m["tree"] == m["tree"] else "-"
            print(
                f"{name:<30}{clients:>8}{m['rps']:>8.0f}{m['p50']:>8.2f}{m['p99']:>8.2f}"
                f"{cpu:>16}{tree:>10}"
            )
    gateways = [n for n in names if n.startswith("holdgate") and n.endswith(" rules")]
    print("\nratios (same run)")
    for name in (mid, *[n for n in names if "fsynced" in n]):
        for clients in (1, 8):
            ratio = med[(name, clients)]["rps"] / med[("mitmdump", clients)]["rps"]
            verdict = "met" if ratio >= THROUGHPUT_GOAL else "MISSED"
            goal = f"  (goal >= {THROUGHPUT_GOAL:.2f}: {verdict})" if name == mid else ""
            print(f"  {name} / mitmdump throughput, {clients} client(s): {ratio:.2f}{goal}")
    low, high = gateways[0], gateways[-1]
    for clients in (1, 8):
        per_request = med[(low, clients)]["rps"] / med[(high, clients)]["rps"]
        added_low = med[(low, clients)]["cpu"] - med[("mitmdump", clients)]["cpu"]
        added_high = med[(high, clients)]["cpu"] - med[("mitmdump", clients)]["cpu"]
        print(
            f"  per-request time, {high} / {low}, {clients} client(s): {per_request:.2f}; "
            f"gateway CPU added over mitmdump: {added_high:.0f} us vs {added_low:.0f} us"
        )
    for name in (high, *[n for n in names if n.endswith("matching rule last")]):
        for clients in (1, 8):
            ratio = med[(name, clients)]["rps"] / med[(low, clients)]["rps"]
            verdict = "met" if ratio >= RULES_GOAL else "MISSED"
            print(
                f"  throughput {name} / {low}, {clients} client(s): {ratio:.2f}  "
                f"(goal >= {RULES_GOAL:.2f}: {verdict})"
            )


# --- in process -----------------------------------------------------------------------------


def best_per_call(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Microseconds per call, best of `repeats` batches (GC off while timing)."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - start) / calls * 1e6)
    finally:
        gc.enable()
    return min(times)


def in_process(work: Path, counts: list[int]) -> None:
    print("decision cost in process (best of 5 batches, GC off while timing)")
    print(
        f"{'rules':>7}{'matching rule':>15}{'load':>8}{'candidates':>12}{'Policy.decide':>15}"
        f"{'+ facts, masks':>16}{'decide_url':>12}"
    )
    rows = {}
    checks: list[int] = []
    for n in counts:
        for last in (False, True):
            load, candidates, checked, *timings = decision_cost(work, n, last)
            checks.append(checked)
            rows[n, last] = timings
            decide, path, full = timings
            where = "last" if last else "first"
            print(
                f"{n:>7}{where:>15}{load:>7.1f}s{candidates:>12}{decide:>13.1f}us"
                f"{path:>14.1f}us{full:>10.1f}us"
            )
            gc.collect()
    print(
        f"  index exact: {'/'.join(map(str, checks))} requests made from the rules' own values "
        "decided as a scan of every rule decides them"
    )
    low, high = counts[0], counts[-1]
    for last in (False, True):
        for label, i in (("Policy.decide", 0), ("classify + decide + masks", 1), ("decide_url", 2)):
            ratio = rows[high, last][i] / rows[low, last][i]
            verdict = "met" if ratio <= DECISION_GOAL else "MISSED"
            print(
                f"  {label}, {high} / {low} rules, matching rule {'last' if last else 'first'}: "
                f"{ratio:.2f}  (goal <= {DECISION_GOAL:.1f}: {verdict})"
            )


def index_differs(config: Any, policy: Any) -> tuple[int, list[str]]:
    """Requests made from the rules' own values (agents, namespaces, resources, verbs, paths)
    that the indexed policy decides differently from a scan of every rule (none when exact),
    and how many were checked."""
    import random

    from holdgate.identity.agents import Identity
    from holdgate.request.facts import build_facts

    n_rules = len(policy.rules)
    raw = ruleset.BASE_RULES + ruleset.generated_rules(max(0, n_rules - len(ruleset.BASE_RULES)))
    rng = random.Random(n_rules)
    methods = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST", "update": "PUT"}
    methods |= {"patch": "PATCH", "delete": "DELETE", "deletecollection": "DELETE"}
    out = []
    # Every sample scans all rules: keep the work about constant.
    samples = min(3000, max(200, 2_000_000 // n_rules))
    for _ in range(samples):
        rule = rng.choice(raw)

        def pick(field: str, default: str, rule: dict[str, Any] = rule) -> str:
            values = rule.get(field) or [default]
            return rng.choice([*values, default]).replace("*", "x")

        agent = None if rng.random() < 0.1 else pick("agents", ruleset.BENCH_AGENT)
        identity = Identity(agent, groups=(pick("groups", "g"),)) if agent else None
        if "targets" in rule:
            host = f"{pick('targets', 'svc-00')}.internal"
            method, path = pick("methods", "GET"), pick("paths", "/v1/x")
        else:
            host, verb = ruleset.KUBE_HOST, pick("verbs", "get")
            group, namespace = pick("apiGroups", ""), pick("namespaces", "")
            base, _, sub = pick("resources", "configmaps").partition("/")
            name = (
                "" if verb in ("list", "watch", "create", "deletecollection") and not sub else "x"
            )
            path = ("/api/v1" if not group else f"/apis/{group}/v1") + (
                f"/namespaces/{namespace}" if namespace else ""
            )
            path += f"/{base}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
            path += "?watch=true" if verb == "watch" else ""
            method = methods.get(verb, "GET")
        facts = build_facts(
            config, method=method, host=host, port=443, path_and_query=path, identity=identity
        )
        indexed = policy.decide(facts, config)
        scanned = _scan(policy.rules, facts)
        if (indexed.action, indexed.rule) != (scanned.action, scanned.rule):
            got, want = (
                f"{d.action} ({d.rule.id if d.rule else 'default'})" for d in (indexed, scanned)
            )
            out.append(f"{method} {host}{path} as {agent}: {got}, a full scan says {want}")
    return samples, out


def _scan(rules: Any, facts: Any) -> Any:
    """Deny-overrides by looking at every rule: the reference the index must agree with."""
    from holdgate.policy.rules import Action, Decision

    matching = [r for r in rules if r.matches(facts)]
    for action in (Action.DENY, Action.APPROVE, Action.ALLOW):
        first = next((r for r in matching if r.action is action), None)
        if first is not None:
            return Decision(action, first, "")
    return Decision(Action(facts.target.default), None, "")


def decision_cost(
    work: Path, n: int, matching_last: bool = False
) -> tuple[float, int, int, float, float, float]:
    """Load time, candidate rules, requests checked against a full scan, and microseconds per
    request: Policy.decide alone; what the gateway's request hook computes (classification,
    decision, masks); `decide_url`."""
    from holdgate.config.gateway_config import load_config
    from holdgate.identity.agents import Identity
    from holdgate.policy.rule_tests import decide_url
    from holdgate.policy.rules import Action, load_policy
    from holdgate.request.facts import build_facts
    from holdgate.request.flow_filter import compile_filter
    from holdgate.sandbox.kube_tls import ensure_tls

    ca = ensure_tls(work / "upstream-tls").ca_cert
    identity = Identity(ruleset.BENCH_AGENT, groups=("bench",))
    url = f"https://{ruleset.KUBE_HOST}{ruleset.CONFIGMAP_PATH}"
    config_path = ruleset.write_gateway_home(
        work / f"in-process-{n}-{'last' if matching_last else 'first'}",
        n,
        ruleset.Upstreams("https://127.0.0.1:1", ca),
        matching_last=matching_last,
    )
    start = time.perf_counter()
    config = load_config(config_path)
    loaded = load_policy(config.rule_files(), config, compile_filter)
    load = time.perf_counter() - start
    decision, facts = decide_url(config, loaded, "GET", url, identity=identity)
    assert decision.action is Action.ALLOW and decision.rule is not None
    assert decision.rule.id == "allow-bench-reads", decision
    assert loaded.masking.for_request(facts).rules == ("mask-config-passwords",)
    candidates = sum(1 for _ in loaded.policy.candidates(facts))
    policy, masking = loaded.policy, loaded.masking
    checked, differ = index_differs(config, policy)
    if differ:
        raise AssertionError(f"{n} rules: the index decided differently: {differ[:5]}")

    def gateway_path() -> None:
        f = build_facts(
            config,
            method="GET",
            host=ruleset.KUBE_HOST,
            port=443,
            path_and_query=ruleset.CONFIGMAP_PATH,
            identity=identity,
        )
        policy.decide(f, config)
        masking.for_request(f)

    calls = 20000
    decide = best_per_call(lambda: policy.decide(facts, config), calls)
    path = best_per_call(gateway_path, calls)
    full = best_per_call(lambda: decide_url(config, loaded, "GET", url, identity=identity), 2000)
    return load, candidates, checked, decide, path, full


if __name__ == "__main__":
    sys.exit(main())
