"""Where sealed segments are stored: an S3 bucket or a local archive directory (same layout)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from holdgate.archive.durable_files import atomic_write
from holdgate.config.archive_settings import ArchiveSettings, S3Settings


class BackendError(Exception):
    """The archive store could not be reached or refused an operation (retried)."""


class ObjectConflict(BackendError):
    """A key already holds different content: holdgate never overwrites archived objects."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object in the archive store."""

    key: str
    size: int


class Backend(Protocol):
    """Where sealed segments are stored: S3 or a local directory."""

    prefix: str

    def describe(self) -> str:
        """A human-readable location."""
        ...

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object."""
        ...

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key`, or None when there is none."""
        ...

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        ...

    def list(self) -> Iterator[StoredObject]:
        """Every object under the prefix."""
        ...


class DirectoryBackend:
    """The local archive directory (the embedded default): the same layout as S3."""

    prefix = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        """A human-readable location."""
        return str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise BackendError(f"key {key!r} escapes {self.root}")
        return path

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object (atomically, read-only once written)."""
        path = self._path(key)
        try:
            atomic_write(path, data, mode=0o444)
        except OSError as e:
            raise BackendError(f"cannot write {path}: {e}") from e

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key`, or None when there is none."""
        try:
            return hashlib.sha256(self._path(key).read_bytes()).hexdigest()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BackendError(f"cannot read {key}: {e}") from e

    def get(self, key: str) -> bytes:
        """The bytes of one object."""
        try:
            return self._path(key).read_bytes()
        except OSError as e:
            raise BackendError(f"cannot read {key}: {e}") from e

    def list(self) -> Iterator[StoredObject]:
        """Every object under the archive directory."""
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                if name.startswith(".tmp-"):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                with contextlib.suppress(FileNotFoundError):
                    yield StoredObject(key, path.stat().st_size)


class S3Backend:
    """An S3 bucket (AWS, MinIO, SeaweedFS, Ceph...) through boto3, with SSE and Object Lock."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self.prefix = settings.prefix
        self._client: Any = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        """A human-readable location."""
        prefix = f"/{self.prefix}" if self.prefix else ""
        endpoint = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return f"s3://{self.settings.bucket}{prefix}{endpoint}"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (in the thread that needs it)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                region = (
                    self.settings.region
                    or os.environ.get("AWS_REGION")
                    or os.environ.get("AWS_DEFAULT_REGION")
                    or "us-east-1"
                )
                self._client = boto3.client(
                    "s3",
                    endpoint_url=self.settings.endpoint_url,
                    region_name=region,
                    config=Config(
                        s3={"addressing_style": self.settings.addressing_style},
                        retries={"max_attempts": 2, "mode": "standard"},
                        connect_timeout=3,
                        read_timeout=30,
                    ),
                )
            return self._client

    def put(self, key: str, data: bytes, sha256: str, content_type: str) -> None:
        """Store one object with its checksum, encryption and retention."""
        s = self.settings
        params: dict[str, Any] = {
            "Bucket": s.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "Metadata": {"sha256": sha256},
            # Object Lock needs an integrity checksum the server checks against the body, and
            # S3 wants it announced (x-amz-sdk-checksum-algorithm) or it refuses a retention
            # period with MissingUploadObjectWithObjectLockHeaders.
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(sha256)).decode(),
        }
        if s.sse:
            params["ServerSideEncryption"] = s.sse
            if s.kms_key_id:
                params["SSEKMSKeyId"] = s.kms_key_id
        if s.object_lock:
            params["ObjectLockMode"] = s.object_lock.mode
            params["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=s.object_lock.days
            )
        self._call("put", key, lambda: self.client.put_object(**params))

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 of the object at `key` (from its metadata), or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.settings.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise BackendError(f"head {key}: {e}") from e
        except Exception as e:
            raise BackendError(f"head {key}: {e}") from e
        stored = (head.get("Metadata") or {}).get("sha256")
        return str(stored) if stored else hashlib.sha256(self.get(key)).hexdigest()

    def get(self, key: str) -> bytes:
        """The bytes of one object."""

        def read() -> bytes:
            body = self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        result: bytes = self._call("get", key, read)
        return result

    def list(self) -> Iterator[StoredObject]:
        """Every object under the prefix."""
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket}
        if self.prefix:
            kwargs["Prefix"] = self.prefix + "/"
        pages = self._call("list", self.prefix or "/", lambda: list(self._pages(kwargs)))
        for page in pages:
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], int(item["Size"]))

    def versions(self) -> dict[str, tuple[int, bool]]:
        """Per key under the prefix: how many versions the bucket keeps, and whether a delete
        marker hides it (an unversioned bucket has one version per key and no markers)."""
        kwargs: dict[str, Any] = {"Bucket": self.settings.bucket}
        if self.prefix:
            kwargs["Prefix"] = self.prefix + "/"

        def pages() -> list[dict[str, Any]]:
            return list(self.client.get_paginator("list_object_versions").paginate(**kwargs))

        out: dict[str, tuple[int, bool]] = {}
        for page in self._call("list versions", self.prefix or "/", pages):
            for item in page.get("Versions", []):
                count, deleted = out.get(item["Key"], (0, False))
                out[item["Key"]] = (count + 1, deleted)
            for item in page.get("DeleteMarkers", []):
                count, _ = out.get(item["Key"], (0, False))
                out[item["Key"]] = (count, True)
        return out

    def _pages(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def _call(self, what: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # botocore raises many unrelated exception types
            raise BackendError(f"{what} {key}: {e}") from e


def make_backend(settings: ArchiveSettings) -> Backend:
    """S3 when configured, else the local archive directory."""
    if settings.s3 is not None:
        return S3Backend(settings.s3)
    return DirectoryBackend(settings.directory)
