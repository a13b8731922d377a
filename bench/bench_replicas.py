"""Replicas sharing holds in PostgreSQL: how fast a decision taken on one replica lets a request
held by another through; and `holdgate run --workers N` against plain mitmdump.

A real PostgreSQL (initdb in a temporary directory, loopback), two `holdgate run` replicas with
the same rules (bench/ruleset.py), one Socket Mode connection each to the tests' Slack
simulator. Held requests go through replica A; each is approved on replica B: through B's
approvals API (the clock runs from B's recorded decision, `decided_at`, to the request's
arrival at the upstream from A), and with a Slack click delivered to B's Socket Mode
connection (from B's acknowledgement of the click to the arrival). Both clocks are this host's.

Then read throughput, 8 keep-alive clients, the same upstream, in one run: plain mitmdump,
`holdgate run --workers 1` and `--workers 2` (the same 1,000 rules and state store), rounds
interleaved.

    .venv/bin/python bench/bench_replicas.py [--resumes 100] [--rules 1000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402
import ruleset  # noqa: E402
from bench_gateway import answered, masked  # noqa: E402
from bench_holds import SLACK_ENV, Page, SlackRig, print_resume, resume_latencies  # noqa: E402

from tests.state.postgres import running_postgres, unavailable  # noqa: E402

RESUME_GOAL_MS = 20.0
WORKERS_GOAL = 1.5  # --workers 2 / plain mitmdump, 8 clients
CLIENTS = 8


def replica_home(
    work: Path, name: str, rules: int, upstream: rig.Upstream, slack: SlackRig, store: dict
) -> tuple[Path, Path]:
    """A replica's home and config: the benchmark's rules, Slack, the shared state store."""
    home = work / name
    config = ruleset.write_gateway_home(
        home,
        rules,
        ruleset.Upstreams(upstream.url, upstream.ca),
        approvals=True,
        slack=slack.section(),
    )
    raw = yaml.safe_load(config.read_text())
    raw["gateway"]["name"] = name
    raw["state_store"] = store
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    return home, config


async def measure(
    a: rig.Proxy, b: rig.Proxy, upstream: rig.Upstream, count: int, slack: SlackRig
) -> list[float]:
    page_b = Page(b)
    try:
        print(f"approved on replica B, held on replica A, {count} holds one after another:")
        api = await resume_latencies(a, page_b, upstream, count, "cross-api")
        p50_api = print_resume("B's approvals API", api)
        clicks = await resume_latencies(a, page_b, upstream, count, "cross-slack", slack)
        p50_slack = print_resume("Slack click on B's connection", clicks, slack=True)
        return [p50_api, p50_slack]
    finally:
        await page_b.close()


def workers_throughput(
    work: Path, upstream: rig.Upstream, rules: int, store: dict, env: dict, seconds: float
) -> None:
    """Read throughput with 8 clients: mitmdump, --workers 1, --workers 2 (rounds interleaved)."""
    mitmdump = rig.start_mitmdump(work / "mitmdump", upstream.ca)
    gateways: dict[str, rig.Proxy] = {}
    try:
        for count in (1, 2):
            home = work / f"workers-{count}"
            config = ruleset.write_gateway_home(
                home, rules, ruleset.Upstreams(upstream.url, upstream.ca)
            )
            raw = yaml.safe_load(config.read_text())
            raw["gateway"]["name"] = f"throughput-{count}"
            raw["state_store"] = store
            config.write_text(yaml.safe_dump(raw, sort_keys=False))
            gateways[f"--workers {count}"] = rig.start_holdgate(
                home, config, env=env, workers=count
            )
        auth = rig.basic(ruleset.BENCH_AGENT, ruleset.BENCH_TOKEN)
        md_context = rig.client_context(mitmdump.ca)
        setups = {
            "mitmdump": (
                lambda: rig.Tunnel.open(
                    "localhost", upstream.port, md_context, proxy_port=mitmdump.port
                ),
                answered,
            )
        }
        for label, proxy in gateways.items():
            context = rig.client_context(proxy.ca)
            setups[label] = (
                lambda p=proxy, c=context: rig.Tunnel.open(
                    ruleset.KUBE_HOST, 443, c, proxy_port=p.port, proxy_authorization=auth
                ),
                masked,
            )
        results: dict[str, list[float]] = {}
        busy: dict[str, list[float]] = {}
        for _ in range(2):
            for name, (opener, check) in setups.items():
                before = _cpu_times()
                load = asyncio.run(
                    rig.run_load(opener, ruleset.CONFIGMAP_PATH, CLIENTS, seconds, check=check)
                )
                busy.setdefault(name, []).append(_busy_share(before, _cpu_times()))
                if load.errors:
                    raise RuntimeError(f"{name}: {load.errors} failed requests")
                results.setdefault(name, []).append(load.rps)
        baseline = sum(results["mitmdump"]) / len(results["mitmdump"])
        print(f"\nread throughput, {CLIENTS} clients, {seconds:.0f} s x 2 rounds interleaved:")
        for name, rps in results.items():
            mean = sum(rps) / len(rps)
            goal = ""
            if name == "--workers 2":
                met = mean / baseline >= WORKERS_GOAL
                goal = f"  (goal >= {WORKERS_GOAL:.1f}x mitmdump: {'met' if met else 'MISSED'})"
            cpu = sum(busy[name]) / len(busy[name])
            print(
                f"  {name:<12} {mean:>7.0f} req/s  {mean / baseline:>5.2f}x mitmdump  "
                f"(machine's CPUs {cpu:.0%} busy: clients, upstream and proxy share them){goal}"
            )
    finally:
        mitmdump.stop()
        for proxy in gateways.values():
            proxy.stop()


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resumes", type=int, default=100)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if why := unavailable():
        print(f"bench_replicas: skipped: {why}")
        return 0
    print("machine: " + ", ".join(f"{k} {v}" for k, v in rig.machine().items()))
    work = Path(tempfile.mkdtemp(prefix="holdgate-bench-replicas-"))
    with rig.running_upstream(work) as upstream, running_postgres() as pg:
        slack = SlackRig()
        store = {"url": pg.url, "lease_seconds": 15}
        env = {**SLACK_ENV, "HOLDGATE_STATE_STORE_PASSWORD": pg.password}
        home_a, config_a = replica_home(work, "replica-a", args.rules, upstream, slack, store)
        home_b, config_b = replica_home(work, "replica-b", args.rules, upstream, slack, store)
        a = rig.start_holdgate(home_a, config_a, env=env)
        # One CA for both replicas, as behind one Service (B reads A's).
        os.symlink(home_a / "certs", home_b / "certs", target_is_directory=True)
        b = rig.start_holdgate(home_b, config_b, env=env)
        try:
            # B connected last: the simulator delivers clicks to the newest connection, B's.
            p50s = asyncio.run(measure(a, b, upstream, args.resumes, slack))
            met = all(p <= RESUME_GOAL_MS for p in p50s)
            print(f"  goal p50 < {RESUME_GOAL_MS:.0f} ms: {'met' if met else 'MISSED'}")
        finally:
            b.stop()
            a.stop()
            slack.close()
        workers_throughput(work, upstream, args.rules, store, env, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
