"""The mitmproxy master of `holdgate run`: the proxy core and holdgate's addons, nothing else.

mitmdump loads about thirty addons, and mitmproxy calls every one of them (and an update
event after it) for each hook of each flow: about 450 µs per request on this project's
benchmark machine, whether or not an addon has anything to do. A gateway needs the proxy
server, TLS, layer detection, option checking, blocking of public clients, h2c refusal and
`-s` scripts. The rest either rewrites requests after the gateway has decided on them
(`map_remote`, `modify_headers`, `stickyauth`, replays ...) or records flows outside the
audit archive (`save_stream_file`), so leaving them out is safer as well as faster. Nor does
it send mitmproxy's `update` event after every flow hook (see `GatewayAddons`).

To run holdgate inside a full mitmdump (every mitmproxy option), load the addon as a script:
`mitmdump -s addons/gateway.py --set holdgate_config=FILE`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mitmproxy import addonmanager, hooks, master, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    errorcheck,
    next_layer,
    proxyserver,
    script,
    termlog,
    tlsconfig,
)
from mitmproxy.tools import cmdline

log = logging.getLogger("holdgate")


class GatewayAddons(addonmanager.AddonManager):
    """mitmproxy's addon manager without the `update` event after every flow hook.

    `update` tells flow views (mitmweb, the console) that a flow changed; no addon of
    `holdgate run` has one, and dispatching it after each of a flow's hooks cost about 100 µs
    per request. A `-s` script's `update` hook is therefore not called by `holdgate run`.
    """

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)


class GatewayMaster(master.Master):
    """Proxy core, then `-s` scripts, then holdgate's addons (the archive last)."""

    def __init__(
        self, opts: options.Options, event_loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(opts, event_loop=event_loop, with_termlog=False)
        self.addons = GatewayAddons(self)
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        # The deprecated `add_log` event turns every log record into a dispatch to every addon
        # (through the loop's self-pipe); no addon here listens to it.
        self._legacy_log_events.uninstall()
        self.addons.add(
            core.Core(),
            block.Block(),
            disable_h2c.DisableH2C(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
            # Scripts come before the gateway: what they change is what the gateway decides on,
            # masks and archives; nothing rewrites a request after the decision.
            script.ScriptLoader(),
            errorcheck.ErrorCheck(),
        )
        from holdgate.gateway import addons as gateway_addons

        self.addons.add(*gateway_addons)

    async def run(self) -> None:
        # mitmproxy keeps unknown options for addons that may register them later; by now the
        # scripts are loaded, so an unknown option is a mistake (or an addon left out above).
        if self.options.deferred:
            log.error(
                "holdgate run: unknown mitmproxy option(s): %s (`holdgate run -- --options` "
                "lists the known ones; `mitmdump -s addons/gateway.py` has every addon)",
                ", ".join(sorted(self.options.deferred)),
            )
        await super().run()


def make_parser(opts: options.Options) -> argparse.ArgumentParser:
    """mitmdump's common options, limited to those of the addons loaded."""
    parser = argparse.ArgumentParser(
        prog="holdgate run --",
        description="mitmproxy options for `holdgate run` (after `--`).",
    )
    # Options of addons holdgate does not load are skipped by `make_parser`.
    cmdline.common_options(parser, opts)
    return parser


def run(arguments: Sequence[str]) -> Any:
    """Run the gateway with these mitmproxy arguments until it is stopped."""
    from mitmproxy.tools.main import run as run_master

    return run_master(GatewayMaster, make_parser, arguments)
