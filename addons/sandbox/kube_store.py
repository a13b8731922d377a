"""The simulator's etcd and registry: objects, one global resourceVersion, selectors, watches.

Thread-safe: tests may seed or mutate objects from their own thread while the server runs on
another loop; watchers are woken on their own loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from holdgate.sandbox.kube_resources import (
    CONFIGMAPS,
    NAMESPACES,
    RESOURCES,
    SECRETS,
    ResourceType,
    apply_defaults,
    decoding_errors,
    field_value,
    format_time,
    initial_status,
    now_utc,
    refresh_status,
    validate,
)
from holdgate.sandbox.kube_status import StatusError

Obj = dict[str, Any]

PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp")
_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


# ---------------------------------------------------------------- selectors

_KEY = r"[A-Za-z0-9_./-]+"
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_EQUALITY = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(([^)]*)\)\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed label selector (equality, inequality, set and existence requirements)."""

    requirements: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse `a=b,c!=d,e in (f,g),!h`; 400 on syntax errors."""
        reqs: list[tuple[str, str, tuple[str, ...]]] = []
        for part in _split_top(text):
            if m := _SET.match(part):
                values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
                reqs.append((m.group(1), m.group(2), values))
            elif m := _EQUALITY.match(part):
                reqs.append((m.group(1), "!=" if m.group(2) == "!=" else "=", (m.group(3),)))
            elif m := _EXISTS.match(part):
                reqs.append((m.group(2), "!" if m.group(1) else "exists", ()))
            else:
                raise StatusError.bad_request(f"unable to parse requirement: {part.strip()!r}")
        return cls(tuple(reqs))

    def matches(self, labels: Obj) -> bool:
        """Whether labels satisfy every requirement."""
        for key, op, values in self.requirements:
            present = key in labels
            value = labels.get(key)
            if op == "=" and value != values[0]:
                return False
            if op == "!=" and present and value == values[0]:
                return False
            if op == "in" and value not in values:
                return False
            if op == "notin" and present and value in values:
                return False
            if op == "exists" and not present:
                return False
            if op == "!" and present:
                return False
        return True


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A parsed field selector (`=`, `==`, `!=` on the kind's supported field labels)."""

    requirements: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, rt: ResourceType, text: str) -> FieldSelector:
        """Parse `metadata.name=x,status.phase!=Running`; 400 on unsupported labels."""
        reqs: list[tuple[str, bool, str]] = []
        probe: Obj = {"metadata": {}}
        for part in _split_top(text):
            m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise StatusError.bad_request(
                    f"invalid selector: '{text}'; can't understand '{part}'"
                )
            if field_value(rt, probe, m.group(1)) is None:
                raise StatusError.bad_request(f"field label not supported: {m.group(1)}")
            reqs.append((m.group(1), m.group(2) != "!=", m.group(3)))
        return cls(tuple(reqs))

    def matches(self, rt: ResourceType, obj: Obj) -> bool:
        """Whether obj satisfies every requirement."""
        return all(
            (field_value(rt, obj, label) == value) == equal
            for label, equal, value in self.requirements
        )

    def exact(self, label: str) -> str | None:
        """The value of an equality requirement on label (e.g. metadata.name), if any."""
        return next((v for lbl, eq, v in self.requirements if lbl == label and eq), None)


# ---------------------------------------------------------------- events and watches


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ADDED, MODIFIED, DELETED (or BOOKMARK), with the object after it."""

    type: str
    rt: ResourceType
    obj: Obj
    old: Obj | None = None


class Watch:
    """One watcher's filter and queue; events cross threads via its loop."""

    def __init__(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def matches(self, obj: Obj | None) -> bool:
        """Whether the object is in this watch's view."""
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels") or {}) and self.fields.matches(self.rt, obj)

    def translate(self, event: Event) -> Event | None:
        """The event as this watcher sees it (objects entering or leaving the selection)."""
        if event.rt is not self.rt:
            return None
        new_in, old_in = self.matches(event.obj), self.matches(event.old)
        if event.type == "MODIFIED":
            if new_in and old_in:
                return event
            if new_in:
                return Event("ADDED", event.rt, event.obj)
            if old_in:
                return Event("DELETED", event.rt, event.obj)
            return None
        return event if new_in else None

    def offer(self, event: Event | None) -> None:
        """Queue an event (None ends the watch) from any thread."""
        # A closed loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


# ---------------------------------------------------------------- the store


def _managed_fields(value: Any, root: bool = True) -> Obj:
    """FieldsV1 of a JSON value (maps become `f:` sets; lists and scalars are leaves)."""
    if not isinstance(value, dict):
        return {}
    fields: Obj = {} if root else {".": {}}
    for key, item in value.items():
        fields[f"f:{key}"] = _managed_fields(item, root=False)
    return fields


def _owned(obj: Obj, subresource: str) -> Obj:
    if subresource == "status":
        return {"f:status": _managed_fields(obj.get("status", {}), root=False)}
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    meta = {
        k: v
        for k, v in (body.get("metadata") or {}).items()
        if k in ("labels", "annotations", "finalizers", "ownerReferences")
    }
    if meta:
        body["metadata"] = meta
    else:
        body.pop("metadata", None)
    return _managed_fields(body)


def canonical(obj: Obj) -> Obj:
    """Key order of the apiserver's JSON: kind, apiVersion, metadata, fields, status last."""
    meta = obj.get("metadata", {})
    ordered_meta = {k: meta[k] for k in _META_ORDER if k in meta}
    ordered_meta.update({k: v for k, v in meta.items() if k not in ordered_meta})
    out: Obj = {
        "kind": obj.get("kind"),
        "apiVersion": obj.get("apiVersion"),
        "metadata": ordered_meta,
    }
    out.update(
        {k: v for k, v in obj.items() if k not in ("kind", "apiVersion", "metadata", "status")}
    )
    if "status" in obj:
        out["status"] = obj["status"]
    return out


def _same(a: Obj, b: Obj) -> bool:
    """Equal but for resourceVersion and managedFields (a no-op write)."""

    def strip(obj: Obj) -> Obj:
        clone = copy.deepcopy(obj)
        clone.get("metadata", {}).pop("resourceVersion", None)
        clone.get("metadata", {}).pop("managedFields", None)
        return clone

    return strip(a) == strip(b)


def _suffix() -> str:
    return "".join(random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


class KubeStore:
    """Objects by resource, namespace and name, with watch history and fan-out."""

    def __init__(self, clock: Callable[[], datetime] = now_utc, history: int = 4096) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._rv = 100
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {
            rt.qualified: {} for rt in RESOURCES
        }
        self._history: deque[tuple[int, Event]] = deque(maxlen=history)
        self._watches: set[Watch] = set()
        self._ordinal = 0
        self.root_ca_pem = ""

    # -- reads

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._lock:
            return str(self._rv)

    def find(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        """A copy of the object, or None."""
        with self._lock:
            obj = self._objects[rt.qualified].get((namespace if rt.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """A copy of the object; 404 when absent."""
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise StatusError.not_found(rt, name)
        return obj

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        *,
        limit: int = 0,
        continue_token: str = "",
    ) -> tuple[list[Obj], str, str, int | None]:
        """(items, resourceVersion, continue, remainingItemCount) in etcd key order."""
        labels, fields = labels or LabelSelector(), fields or FieldSelector()
        start = ""
        list_rv = None
        if continue_token:
            try:
                token = json.loads(base64.b64decode(continue_token))
                start, list_rv = str(token["start"]), int(token["rv"])
            except (ValueError, KeyError, TypeError) as e:
                raise StatusError.bad_request(
                    "continue key is not valid: invalid continue token"
                ) from e
        with self._lock:
            rv = str(list_rv or self._rv)
            items = [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects[rt.qualified].items())
                if (not namespace or key[0] == namespace)
                and "/".join(key) >= start
                and labels.matches(obj.get("metadata", {}).get("labels") or {})
                and fields.matches(rt, obj)
            ]
        if limit and len(items) > limit:
            last = items[limit]["metadata"]
            nxt = "/".join((last.get("namespace", "") if rt.namespaced else "", last["name"]))
            token_text = json.dumps({"v": "meta.k8s.io/v1", "rv": int(rv), "start": nxt})
            remaining = len(items) - limit
            return items[:limit], rv, base64.b64encode(token_text.encode()).decode(), remaining
        return items, rv, "", None

    # -- writes

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _emit(self, event: Event, rv: int) -> None:
        self._history.append((rv, event))
        for watch in list(self._watches):
            seen = watch.translate(event)
            if seen is not None:
                watch.offer(seen)

    def _record_manager(
        self, obj: Obj, manager: str, operation: str, subresource: str = ""
    ) -> None:
        owned = _owned(obj, subresource)
        if not owned or not manager:
            return
        entry: Obj = {
            "manager": manager,
            "operation": operation,
            "apiVersion": obj.get("apiVersion", ""),
            "time": format_time(self._clock()),
            "fieldsType": "FieldsV1",
            "fieldsV1": owned,
        }
        if subresource:
            entry["subresource"] = subresource
        entries = [
            e
            for e in obj["metadata"].get("managedFields") or []
            if (e.get("manager"), e.get("operation"), e.get("subresource", ""))
            != (manager, operation, subresource)
        ]
        obj["metadata"]["managedFields"] = [*entries, entry]

    def _check_kind(self, rt: ResourceType, obj: Obj) -> None:
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if api_version and api_version != rt.api_version:
            raise StatusError.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
            )
        if kind and kind != rt.kind:
            raise StatusError.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        errors = decoding_errors(rt, obj)
        if errors:
            raise StatusError.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {errors[0]}'
            )

    def create(
        self,
        rt: ResourceType,
        namespace: str,
        body: Obj,
        *,
        manager: str = "",
        operation: str = "Update",
        dry_run: bool = False,
    ) -> Obj:
        """POST: admit, default, validate and store a new object (201)."""
        obj = copy.deepcopy(body)
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        meta = obj["metadata"]
        self._check_kind(rt, obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise StatusError.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + _suffix()
        name = str(meta.get("name", ""))
        with self._lock:
            if rt.namespaced:
                ns = self._objects[NAMESPACES.qualified].get(("", namespace))
                if ns is None:
                    raise StatusError.not_found(NAMESPACES, namespace)
                if ns.get("status", {}).get("phase") == "Terminating":
                    raise StatusError.forbidden(
                        rt,
                        name,
                        f"unable to create new content in namespace {namespace} because it is being terminated",
                    )
            for server_field in (
                *_SERVER_META,
                "selfLink",
                "managedFields",
                "deletionGracePeriodSeconds",
            ):
                meta.pop(server_field, None)
            obj.pop("status", None)
            now = self._clock()
            apply_defaults(rt, obj)
            causes = validate(rt, obj)
            if causes:
                raise StatusError.invalid(rt, name, causes)
            key = (namespace if rt.namespaced else "", name)
            if key in self._objects[rt.qualified]:
                raise StatusError.already_exists(rt, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = format_time(now)
            if rt.has_generation:
                meta["generation"] = 1
            self._ordinal += 1
            initial_status(rt, obj, now, self._ordinal)
            self._record_manager(obj, manager, operation)
            if dry_run:
                return canonical(obj)
            rv = self._bump()
            meta["resourceVersion"] = str(rv)
            obj = canonical(obj)
            self._objects[rt.qualified][key] = obj
            self._emit(Event("ADDED", rt, copy.deepcopy(obj)), rv)
            if rt is NAMESPACES and self.root_ca_pem:
                self._publish_root_ca(name)
            return copy.deepcopy(obj)

    def publish_root_ca(self, pem: str) -> None:
        """Set the cluster CA and publish kube-root-ca.crt into every namespace lacking it."""
        with self._lock:
            self.root_ca_pem = pem
            for _, name in list(self._objects[NAMESPACES.qualified]):
                if (name, ROOT_CA_CONFIGMAP) not in self._objects[CONFIGMAPS.qualified]:
                    self._publish_root_ca(name)

    def _publish_root_ca(self, namespace: str) -> None:
        """The root-ca-cert-publisher controller: kube-root-ca.crt in every namespace."""
        self.create(
            CONFIGMAPS,
            namespace,
            {
                "metadata": {
                    "name": ROOT_CA_CONFIGMAP,
                    "annotations": {
                        "kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."
                    },
                },
                "data": {"ca.crt": self.root_ca_pem},
            },
            manager="kube-controller-manager",
        )

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Obj,
        *,
        manager: str = "",
        operation: str = "Update",
        subresource: str = "",
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """PUT (and the write of PATCH): (object, changed?); no-op writes keep the resourceVersion."""
        obj = copy.deepcopy(body)
        if not isinstance(obj.get("metadata"), dict):
            obj["metadata"] = {}
        meta = obj["metadata"]
        self._check_kind(rt, obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if meta.get("name") and meta["name"] != name:
            raise StatusError.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise StatusError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self._lock:
            key = (namespace if rt.namespaced else "", name)
            existing = self._objects[rt.qualified].get(key)
            if existing is None:
                raise StatusError.not_found(rt, name)
            old_meta = existing["metadata"]
            if (
                meta.get("resourceVersion")
                and meta["resourceVersion"] != old_meta["resourceVersion"]
            ):
                raise StatusError.conflict(
                    rt,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                raise StatusError.conflict(
                    rt,
                    name,
                    f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
                )
            if subresource == "status":
                new = copy.deepcopy(existing)
                new["status"] = obj.get("status", {})
                for key_name in ("labels", "annotations"):
                    if key_name in meta:
                        new["metadata"][key_name] = meta[key_name]
            else:
                new = obj
                new["metadata"] = {**meta, "name": name}
                if rt.namespaced:
                    new["metadata"]["namespace"] = namespace
                for key_name in (
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                    "managedFields",
                ):
                    if key_name in old_meta:
                        new["metadata"][key_name] = copy.deepcopy(old_meta[key_name])
                    else:
                        new["metadata"].pop(key_name, None)
                if "status" in existing:
                    new["status"] = copy.deepcopy(existing["status"])
                else:
                    new.pop("status", None)
                apply_defaults(rt, new)
                causes = validate(rt, new)
                if causes:
                    raise StatusError.invalid(rt, name, causes)
                self._check_immutable(rt, existing, new)
                if rt.has_generation and new.get("spec") != existing.get("spec"):
                    new["metadata"]["generation"] = int(old_meta.get("generation", 1)) + 1
                    refresh_status(rt, new, self._clock())
            new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
            if _same(existing, new):
                return copy.deepcopy(existing), False
            self._record_manager(new, manager, operation, subresource)
            if dry_run:
                return canonical(new), True
            rv = self._bump()
            new["metadata"]["resourceVersion"] = str(rv)
            new = canonical(new)
            self._objects[rt.qualified][key] = new
            self._emit(Event("MODIFIED", rt, copy.deepcopy(new), copy.deepcopy(existing)), rv)
            return copy.deepcopy(new), True

    @staticmethod
    def _check_immutable(rt: ResourceType, existing: Obj, new: Obj) -> None:
        if rt not in (SECRETS, CONFIGMAPS) or not existing.get("immutable"):
            return
        causes = []
        if new.get("immutable") is not True:
            causes.append(
                (
                    "FieldValueForbidden",
                    "immutable",
                    "Forbidden: field is immutable when `immutable` is set",
                )
            )
        for field in ("data", "binaryData"):
            if (new.get(field) or {}) != (existing.get(field) or {}):
                causes.append(
                    (
                        "FieldValueForbidden",
                        field,
                        "Forbidden: field is immutable when `immutable` is set",
                    )
                )
        if causes:
            raise StatusError.invalid(rt, existing["metadata"]["name"], causes)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        preconditions: Obj | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """DELETE: remove the object at once; returns it as the deletion left it."""
        with self._lock:
            key = (namespace if rt.namespaced else "", name)
            existing = self._objects[rt.qualified].get(key)
            if existing is None:
                raise StatusError.not_found(rt, name)
            meta = existing["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise StatusError.conflict(
                    rt,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}",
                )
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise StatusError.conflict(
                    rt,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, ResourceVersion in object meta: {meta['resourceVersion']}",
                )
            if rt is NAMESPACES and name in PROTECTED_NAMESPACES:
                raise StatusError.forbidden(rt, name, "this namespace may not be deleted")
            gone = copy.deepcopy(existing)
            if dry_run:
                return gone
            if rt is NAMESPACES:
                for other in RESOURCES:
                    if other.namespaced:
                        for obj_key in [k for k in self._objects[other.qualified] if k[0] == name]:
                            self._remove(other, obj_key)
                gone["metadata"]["deletionTimestamp"] = format_time(self._clock())
                gone["status"] = {"phase": "Terminating"}
            elif rt.plural == "pods":
                grace = gone.get("spec", {}).get("terminationGracePeriodSeconds", 30)
                gone["metadata"]["deletionTimestamp"] = format_time(self._clock())
                gone["metadata"]["deletionGracePeriodSeconds"] = grace
            removed = self._remove(rt, key)
            gone["metadata"]["resourceVersion"] = removed["metadata"]["resourceVersion"]
            return canonical(gone)

    def _remove(self, rt: ResourceType, key: tuple[str, str]) -> Obj:
        obj = self._objects[rt.qualified].pop(key)
        rv = self._bump()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._emit(Event("DELETED", rt, copy.deepcopy(obj)), rv)
        return obj

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
        *,
        dry_run: bool = False,
    ) -> list[Obj]:
        """DELETE on a collection: every matching object."""
        with self._lock:
            items, _, _, _ = self.list_objects(rt, namespace, labels, fields)
            return [
                self.delete(
                    rt,
                    item["metadata"].get("namespace", ""),
                    item["metadata"]["name"],
                    dry_run=dry_run,
                )
                for item in items
            ]

    # -- watches

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        since: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Watch, list[Event]]:
        """Register a watch; returns it and the events it must send first.

        since=None: ADDED for every current object (resourceVersion "" or "0").
        since=N: the recorded events after N; 410 Gone if the history no longer reaches back.
        """
        watch = Watch(rt, namespace, labels, fields, loop)
        with self._lock:
            if since is None:
                initial = [
                    Event("ADDED", rt, copy.deepcopy(obj))
                    for _, obj in sorted(self._objects[rt.qualified].items())
                    if watch.matches(obj)
                ]
            else:
                oldest = self._history[0][0] if self._history else self._rv + 1
                if (
                    since < self._rv
                    and since < oldest - 1
                    and len(self._history) == self._history.maxlen
                ):
                    raise StatusError.gone(since, oldest)
                initial = []
                for rv, event in self._history:
                    if rv > since and (seen := watch.translate(event)) is not None:
                        initial.append(seen)
            self._watches.add(watch)
        return watch, initial

    def unwatch(self, watch: Watch) -> None:
        """Forget a watch."""
        with self._lock:
            self._watches.discard(watch)

    def close_watches(self) -> None:
        """End every watch (server shutdown)."""
        with self._lock:
            for watch in self._watches:
                watch.offer(None)
            self._watches.clear()
