"""The gateway's CA: created in the certs directory on first start, key material readable by us only."""

from __future__ import annotations

import os
from pathlib import Path

from mitmproxy.certs import CertStore

# mitmproxy's file names, so `mitmdump --set confdir=certs/` finds the same CA.
BASENAME = "mitmproxy"
KEY_SIZE = 2048


def ca_cert_path(certs_dir: Path) -> Path:
    """The PEM certificate agents must trust."""
    return certs_dir / f"{BASENAME}-ca-cert.pem"


def ensure_ca(certs_dir: Path) -> Path:
    """Create the CA if missing, tighten file modes, and return the certificate's path."""
    certs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(certs_dir, 0o700)
    CertStore.from_store(certs_dir, BASENAME, KEY_SIZE)
    for path in certs_dir.glob(f"{BASENAME}-*"):
        # Files holding a private key stay private; the public certificate may be shared.
        private = path.name in (
            f"{BASENAME}-ca.pem",
            f"{BASENAME}-ca.p12",
            f"{BASENAME}-dhparam.pem",
        )
        os.chmod(path, 0o600 if private else 0o644)
    return ca_cert_path(certs_dir)
