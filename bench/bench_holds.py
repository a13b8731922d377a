"""Held requests: the gateway's memory and other traffic with 1,000 and 10,000 requests held, and
how fast an approval lets a held request through.

One `holdgate run` with 1,000 generated rules (bench/ruleset.py), the approvals page on, agents
authenticated. Held requests are GETs of Secrets in `bench` (rule `approve-bench-secrets`), one
TLS connection each, opened by raw asyncio clients that then wait. Non-held traffic is 8
keep-alive clients reading a ConfigMap. The resume latency runs from the moment the gateway
records the approval (the approvals API's `decided_at`) to the request's arrival at the upstream
(the upstream's own clock, same host); then the same through Slack: the tests' wire-level Slack
simulator (Socket Mode) clicks Approve, and the clock runs from the gateway's acknowledgement of
the click to the arrival at the upstream.

    .venv/bin/python bench/bench_holds.py [--held 1000,10000] [--resumes 200] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402
import ruleset  # noqa: E402

from tests.sim.slack_sim import SlackSimulator  # noqa: E402

T = TypeVar("T")

THROUGHPUT_GOAL = 0.90
RESUME_GOAL_MS = 20.0
OPEN_CONCURRENCY = 64
SETTLE_TIMEOUT = 300.0


class Page:
    """The gateway's approvals API."""

    def __init__(self, proxy: rig.Proxy) -> None:
        self.url = proxy.page_url
        self.client = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {proxy.admin_token}"}, timeout=60, trust_env=False
        )

    async def pending(self) -> int:
        """Holds pending now (the Prometheus gauge: cheap even with 10,000 held)."""
        r = await self.client.get(f"{self.url}/metrics")
        for line in r.text.splitlines():
            if line.startswith("holdgate_holds_pending "):
                return int(float(line.split()[1]))
        raise RuntimeError("no holdgate_holds_pending in /metrics")

    async def wait_pending(self, count: int) -> float:
        """Wait (bounded) until exactly `count` holds are pending; returns the seconds waited."""
        start = time.monotonic()
        while (n := await self.pending()) != count:
            if time.monotonic() - start > SETTLE_TIMEOUT:
                raise RuntimeError(f"{n} holds pending, expected {count}")
            await asyncio.sleep(0.2)
        return time.monotonic() - start

    async def approve(self, hold_id: str) -> dict:
        r = await self.client.post(f"{self.url}/api/holds/{hold_id}/approve", json={})
        r.raise_for_status()
        return r.json()["hold"]

    async def close(self) -> None:
        await self.client.aclose()


SLACK_CHANNEL = "C0BENCH"
SLACK_ENV = {"HOLDGATE_BENCH_SLACK_BOT": "xoxb-bench-bot", "HOLDGATE_BENCH_SLACK_APP": "xapp-bench"}


class SlackRig:
    """The Slack simulator on its own event loop in a thread, started before the gateway."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="slack", daemon=True)
        self.thread.start()
        simulator = SlackSimulator(
            bot_token=SLACK_ENV["HOLDGATE_BENCH_SLACK_BOT"],
            app_token=SLACK_ENV["HOLDGATE_BENCH_SLACK_APP"],
            channels=(SLACK_CHANNEL,),
            users={ruleset.SLACK_REVIEWER: "Bench Reviewer"},
        )
        self.sim = asyncio.run_coroutine_threadsafe(simulator.start(), self.loop).result(30)

    def section(self) -> dict[str, Any]:
        """The gateway's `approvals.slack` configuration for this simulator."""
        return {
            "channel": SLACK_CHANNEL,
            "mode": "socket",
            "api_base_url": self.sim.base_url,
            "bot_token_env": "HOLDGATE_BENCH_SLACK_BOT",
            "app_token_env": "HOLDGATE_BENCH_SLACK_APP",
        }

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the simulator's loop, from the benchmark's loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class HeldClients:
    """Agents whose requests wait at the gateway, one TLS connection each."""

    def __init__(self, proxy: rig.Proxy) -> None:
        self.proxy = proxy
        self.context = rig.client_context(proxy.ca)
        self.auth = rig.basic(ruleset.BENCH_AGENT, ruleset.BENCH_TOKEN)
        self.tunnels: list[rig.Tunnel] = []

    async def connect(self) -> rig.Tunnel:
        return await rig.Tunnel.open(
            ruleset.KUBE_HOST,
            443,
            self.context,
            proxy_port=self.proxy.port,
            proxy_authorization=self.auth,
        )

    async def open_one(self, name: str) -> rig.Tunnel:
        tunnel = await self.connect()
        tunnel.send_get(ruleset.HELD_PATH.format(name))
        return tunnel

    async def connect_more(self, count: int) -> list[rig.Tunnel]:
        """`count` more idle connections (CONNECT and TLS done, no request yet)."""
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def one() -> rig.Tunnel:
            async with gate:
                return await self.connect()

        tunnels = await asyncio.gather(*(one() for _ in range(count)))
        self.tunnels += tunnels
        return tunnels

    def send(self, tunnels: list[rig.Tunnel]) -> None:
        """One held request on each of these connections."""
        for tunnel in tunnels:
            tunnel.send_get(ruleset.HELD_PATH.format(f"bg-{id(tunnel)}"))

    def close(self) -> None:
        for t in self.tunnels:
            t.close()
        self.tunnels = []


async def throughput(proxy: rig.Proxy, seconds: float) -> rig.LoadResult:
    context = rig.client_context(proxy.ca)
    auth = rig.basic(ruleset.BENCH_AGENT, ruleset.BENCH_TOKEN)
    return await rig.run_load(
        lambda: rig.Tunnel.open(
            ruleset.KUBE_HOST, 443, context, proxy_port=proxy.port, proxy_authorization=auth
        ),
        ruleset.CONFIGMAP_PATH,
        8,
        seconds,
        proxy=proxy,
    )


async def resume_latencies(
    proxy: rig.Proxy,
    page: Page,
    upstream: rig.Upstream,
    count: int,
    tag: str,
    slack: SlackRig | None = None,
) -> dict[str, list[float]]:
    """Hold `count` requests one after another, approve each (on the approvals API, or with a
    click in Slack), and time its way to the upstream."""
    held = HeldClients(proxy)
    created: dict[str, asyncio.Future[str]] = {}
    connected = asyncio.Event()

    async def watch() -> None:
        async with page.client.stream("GET", f"{page.url}/api/events", timeout=None) as events:
            connected.set()
            async for line in events.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                name = ((event["hold"].get("request") or {}).get("kubernetes") or {}).get("name")
                future = created.get(name or "")
                if event["kind"] == "created" and future is not None and not future.done():
                    future.set_result(event["hold"]["id"])

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(connected.wait(), 30)
    sent_at: dict[str, float] = {}
    decided_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    try:
        for i in range(count):
            name = f"{tag}-{i}"
            created[f"held-{name}"] = asyncio.get_running_loop().create_future()
            tunnel = await held.open_one(name)
            hold_id = await asyncio.wait_for(created[f"held-{name}"], 30)
            if slack is None:
                sent_at[name] = time.time()
                hold = await page.approve(hold_id)
                decided_at[name] = hold["decided_at"]
            else:
                # click() first waits for the hold's Slack message; the clock starts at the send.
                delivery = await slack.run(slack.sim.click(hold_id, ruleset.SLACK_REVIEWER))
                await slack.run(slack.sim.wait_for(lambda d=delivery: d.acked, 10, "the ack"))
                assert delivery.ack_latency is not None
                to_wall = time.time() - time.monotonic()  # both clocks read on this host
                sent_at[name] = delivery.sent_at + to_wall
                decided_at[name] = delivery.sent_at + delivery.ack_latency + to_wall
            status, _ = await asyncio.wait_for(tunnel.read_response(), 30)
            answered_at[name] = time.time()
            tunnel.close()
            if status != 200:
                raise RuntimeError(f"approved request answered {status}")
    finally:
        watcher.cancel()
    direct = await rig.Tunnel.open("localhost", upstream.port, rig.client_context(upstream.ca))
    _, body = await direct.get("/_bench/arrivals?clear")
    direct.close()
    arrivals = json.loads(body)
    out: dict[str, list[float]] = {"decision": [], "post": [], "agent": []}
    for name, decided in decided_at.items():
        arrived = arrivals[ruleset.HELD_PATH.format(name)]
        out["decision"].append((arrived - decided) * 1e3)
        out["post"].append((arrived - sent_at[name]) * 1e3)
        out["agent"].append((answered_at[name] - sent_at[name]) * 1e3)
    return out


def print_resume(label: str, latencies: dict[str, list[float]], slack: bool = False) -> float:
    p50 = rig.percentile(latencies["decision"], 50)
    decision, sent = (
        ("click acknowledged", "click sent")
        if slack
        else ("decision recorded", "approve POST sent")
    )
    print(
        f"  {label}: {decision} -> upstream p50 {p50:.1f} ms, "
        f"p99 {rig.percentile(latencies['decision'], 99):.1f} ms  "
        f"(goal p50 < {RESUME_GOAL_MS:.0f} ms: {'met' if p50 < RESUME_GOAL_MS else 'MISSED'}); "
        f"{sent} -> upstream p50 {rig.percentile(latencies['post'], 50):.1f} ms, "
        f"p99 {rig.percentile(latencies['post'], 99):.1f} ms; "
        f"-> agent has the answer p50 {rig.percentile(latencies['agent'], 50):.1f} ms"
    )
    return p50


async def run(
    proxy: rig.Proxy, upstream: rig.Upstream, held_counts: list[int], resumes: int, seconds: float
) -> None:
    page = Page(proxy)
    held = HeldClients(proxy)
    try:
        rss0 = proxy.rss_mib()
        base = await throughput(proxy, seconds)
        print(
            f"no request held: RSS {rss0:.0f} MiB; other traffic {base.rps:.0f} req/s, p99 {base.p99_ms:.1f} ms"
        )
        print(f"approval resume latency, {resumes} holds one after another:")
        print_resume(
            "0 other holds pending", await resume_latencies(proxy, page, upstream, resumes, "idle")
        )
        rows = []
        rss_before = rss0
        for count in held_counts:
            start = time.monotonic()
            tunnels = await held.connect_more(count - len(held.tunnels))
            rss_connected = proxy.rss_mib()
            held.send(tunnels)
            await page.wait_pending(count)
            took = time.monotonic() - start
            rss = proxy.rss_mib()
            load = await throughput(proxy, seconds)
            added = len(tunnels) / 1024  # KiB per added connection from MiB deltas
            rows.append(
                (
                    count,
                    rss,
                    (rss_connected - rss_before) / added,
                    (rss - rss_connected) / added,
                    load,
                    took,
                )
            )
            rss_before = proxy.rss_mib()
            if count == held_counts[0]:
                print_resume(
                    f"{count} other holds pending",
                    await resume_latencies(
                        proxy, page, upstream, max(20, resumes // 2), f"busy{count}"
                    ),
                )
        start = time.monotonic()
        held.close()
        await page.wait_pending(0)
        released = time.monotonic() - start
        after = await throughput(proxy, seconds)
        baseline = (base.rps + after.rps) / 2
        print(
            f"\nheld requests (one TLS connection each); other traffic: 8 keep-alive clients, "
            f"{seconds:g}s; baseline {baseline:.0f} req/s (mean of before, {base.rps:.0f}, and "
            f"after release, {after.rps:.0f})"
        )
        print(
            f"{'held':>7}{'RSS MiB':>9}{'connection':>12}{'+ request':>11}"
            f"{'other req/s':>13}{'ratio':>7}{'p99 ms':>8}{'held in':>9}"
        )
        for count, rss, per_connection, per_request, load, took in rows:
            ratio = load.rps / baseline
            print(
                f"{count:>7}{rss:>9.0f}{per_connection:>9.1f}KiB{per_request:>8.1f}KiB"
                f"{load.rps:>13.0f}{ratio:>7.2f}{load.p99_ms:>8.1f}{took:>8.1f}s"
                f"  (goal >= {THROUGHPUT_GOAL:.2f}: {'met' if ratio >= THROUGHPUT_GOAL else 'MISSED'})"
            )
        print(
            "  (connection: RSS per idle agent connection, CONNECT and TLS done; + request: "
            "RSS per held request on it)"
        )
        print(
            f"releasing {held_counts[-1]} holds (clients disconnect, holds cancelled): {released:.1f}s"
        )
    finally:
        held.close()
        await page.close()


async def slack_resumes(
    proxy: rig.Proxy, upstream: rig.Upstream, count: int, slack: SlackRig
) -> None:
    page = Page(proxy)
    try:
        print(f"\napproval resume latency through Slack (Socket Mode), {count} holds:")
        latencies = await resume_latencies(proxy, page, upstream, count, "slack", slack)
        print_resume("0 other holds pending", latencies, slack=True)
    finally:
        await page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="1000,10000")
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rules", type=int, default=1000)
    args = parser.parse_args()
    held_counts = [int(n) for n in args.held.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(held_counts) + 1000
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        raise SystemExit(f"bench_holds: open files limit {soft} < {needed}: raise ulimit -n")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in rig.machine().items()))
    work = Path(tempfile.mkdtemp(prefix="holdgate-bench-holds-"))
    with rig.running_upstream(work) as upstream:
        home = work / "holdgate"
        config = ruleset.write_gateway_home(
            home, args.rules, ruleset.Upstreams(upstream.url, upstream.ca), approvals=True
        )
        proxy = rig.start_holdgate(home, config)
        try:
            print(f"holdgate with {args.rules} rules, started in {proxy.started_in:.1f}s")
            asyncio.run(run(proxy, upstream, held_counts, args.resumes, args.seconds))
        finally:
            proxy.stop()
        # Through Slack: a second gateway, the same rules, Slack approvals on (every hold is
        # posted to the simulator, so the 10,000-hold runs above stay without it).
        slack = SlackRig()
        home = work / "holdgate-slack"
        config = ruleset.write_gateway_home(
            home,
            args.rules,
            ruleset.Upstreams(upstream.url, upstream.ca),
            approvals=True,
            slack=slack.section(),
        )
        proxy = rig.start_holdgate(home, config, env=SLACK_ENV)
        try:
            asyncio.run(slack_resumes(proxy, upstream, max(20, args.resumes // 2), slack))
        finally:
            proxy.stop()
            slack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
