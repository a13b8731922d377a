"""Where the gateway's time goes per request: py-spy samples `holdgate run` under load.

Not part of scripts/bench: py-spy is installed ad hoc (`.venv/bin/pip install py-spy`; it needs
ptrace, which root or CAP_SYS_PTRACE gives). Prints, for the functions of addons/ and the
mitmproxy functions that dispatch to them, the CPU time per request (inclusive), and keeps the
raw samples for flame graphs (`py-spy record -f raw` output, one stack per line).

    .venv/bin/python bench/profile_gateway.py [--rules 1000] [--seconds 10] [--fsync-every-response]
                                              [--writer]

With --writer the archive's writer process is sampled instead of the gateway process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rig  # noqa: E402
import ruleset  # noqa: E402

SHOWN = ("addons/", "logging/", "mitmproxy/addonmanager.py", "mitmproxy/log.py")


def per_request(samples: Path, cpu_us: float, top: int) -> list[tuple[float, str]]:
    """Inclusive microseconds per request of each function in the sampled stacks."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        seen = set()
        for frame in stack.split(";"):
            function, _, where = frame.partition(" (")
            path = where.split(":")[0].split("site-packages/")[-1]
            name = f"{function} ({path})"
            if path.startswith(SHOWN) and "cli.py" not in path and name not in seen:
                seen.add(name)
                inclusive[name] += int(count)
    return [(n / total * cpu_us, name) for name, n in inclusive.most_common(top)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--fsync-every-response", action="store_true", help="fsync_before_response: true"
    )
    parser.add_argument(
        "--writer", action="store_true", help="sample the archive's writer process instead"
    )
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", default=str(rig.ROOT / "var" / "bench" / "gateway-profile.txt"))
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(rig.BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="holdgate-profile-"))
    with rig.running_upstream(work) as upstream:
        config = ruleset.write_gateway_home(
            work / "holdgate",
            args.rules,
            ruleset.Upstreams(upstream.url, upstream.ca),
            fsync_before_response=True if args.fsync_every_response else "privileged",
        )
        proxy = rig.start_holdgate(work / "holdgate", config)
        try:
            context = rig.client_context(proxy.ca)
            auth = rig.basic(ruleset.BENCH_AGENT, ruleset.BENCH_TOKEN)
            pid = proxy.descendants()[0] if args.writer else proxy.process.pid
            recorder = subprocess.Popen(
                [spy, "record", "-p", str(pid), "-r", "500", "-f", "raw"]
                + ["-d", str(int(args.seconds + 2)), "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            result = asyncio.run(
                rig.run_load(
                    lambda: rig.Tunnel.open(
                        ruleset.KUBE_HOST,
                        443,
                        context,
                        proxy_port=proxy.port,
                        proxy_authorization=auth,
                    ),
                    ruleset.CONFIGMAP_PATH,
                    8,
                    args.seconds,
                    proxy=proxy,
                )
            )
            recorder.wait(timeout=args.seconds + 60)
        finally:
            proxy.stop()
    cpu_us = result.tree_cpu_us - result.cpu_us if args.writer else result.cpu_us
    print(
        f"holdgate, {args.rules} rules, 8 clients: {result.rps:.0f} req/s, {cpu_us:.0f} us CPU "
        f"per request in the {'writer' if args.writer else 'gateway'} process; samples in {out}"
    )
    print(f"{'us/request':>11}  function (inclusive)")
    for us, name in per_request(out, cpu_us, args.top):
        print(f"{us:>11.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
