"""The index: what a replica must know of every grant (when to look at it, its status, provider and
environments) without reading every grant.

It lives in KV beside the grants, in SHARDS records `index/shard-NNN`, each written with
check-and-set, and one record `index/changes` that every writer overwrites blindly with the shards
it just wrote: its KV version is a change counter without contention, and its short history says
which shards moved. A replica reads that record once a tick and reads shards only when it moved.

The grant record stays the truth. An entry is a hint of when to read it, and the writers keep one
rule: an entry is never later than the grant it stands for. Every write that can move a grant's
due time earlier (a new connection) publishes an entry due now before it writes the grant; every
other write only moves it later. So a lost, late or stale entry makes a replica read a grant early,
never too late, and that reading repairs the entry. docs/reliability.md has the whole argument.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import secrets
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from .errors import Conflict, NotFound, SidecarError
from .models import Grant, Status
from .store import Store, Versioned

log = logging.getLogger(__name__)

SHARDS = 256  # a shard holds about 400 entries (30 kB) at 100,000 grants
CHANGES = "changes"
SHARD = "shard-"
CHANGE_HISTORY = 32  # versions of the changes record Vault keeps, for a replica that missed a few
LOOKBACK = CHANGE_HISTORY - 1  # versions read one by one (far fewer reads than every shard)
SHARD_ATTEMPTS = 8  # check-and-set attempts on one shard that siblings write at the same time
WRITERS = 8  # shards a flush writes at once


def shard_of(name: str) -> int:
    return zlib.crc32(name.encode()) % SHARDS


def shard_name(shard: int) -> str:
    return f"{SHARD}{shard:03d}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One grant as the index knows it. `connected` and `version` order entries of the same name:
    a note of an older connection, or an older version, never replaces a newer one."""

    due: float | None  # when to look at the grant (epoch seconds); None: not on a timer
    status: Status
    provider: str
    environments: tuple[str, ...]
    connected: float  # the connection's connected_at (epoch seconds)
    version: int  # the grant's KV version the entry was made from (0: published ahead of the write)

    @classmethod
    def of(cls, grant: Grant, due: datetime | None, version: int) -> Entry:
        connected = grant.connected_at.timestamp() if grant.connected_at else 0.0
        return cls(
            due.timestamp() if due else None, grant.status, grant.provider, grant.environments, connected, version
        )

    @classmethod
    def ahead(cls, grant: Grant) -> Entry:
        """The entry published before a new connection is written: due now, so that whatever becomes
        of the write, every replica reads the grant within two ticks."""
        return cls.of(grant, datetime.now(UTC), 0)

    @property
    def due_time(self) -> datetime | None:
        return None if self.due is None else datetime.fromtimestamp(self.due, UTC)

    def newer_than(self, other: Entry) -> bool:
        return (self.connected, self.version) >= (other.connected, other.version)

    def same_hint(self, other: Entry | None) -> bool:
        """Whether `other` tells a replica the same (the ordering fields aside)."""
        return other is not None and (self.due, self.status, self.provider, self.environments) == (
            other.due, other.status, other.provider, other.environments
        )  # fmt: skip

    def to_line(self, name: str) -> str:
        """One line of a shard: names pass the name rule, so no tab or newline is in one."""
        due = "" if self.due is None else repr(self.due)
        fields = (name, due, self.status, self.provider, ",".join(self.environments), repr(self.connected))
        return "\t".join((*fields, str(self.version)))

    @classmethod
    def from_line(cls, line: str) -> tuple[str, Entry]:
        name, due, status, provider, environments, connected, version = line.split("\t")
        envs = tuple(environments.split(",")) if environments else ()
        # Shared, not copied: 100,000 entries name a handful of providers and sets of environments.
        entry = cls(float(due) if due else None, Status(status), sys.intern(provider), _SHARED.setdefault(envs, envs),
                    float(connected), int(version))  # fmt: skip
        return name, entry


_SHARED: dict[tuple[str, ...], tuple[str, ...]] = {}


Changes = dict[str, Entry | None]  # name -> its entry now (None: no longer indexed)


def parse_shard(data: dict[str, Any]) -> dict[str, Entry]:
    """A shard's entries. They are one text, not a JSON object: Vault limits the strings a request
    may hold (OpenBao: 1,000 by default), which a JSON object of 400 entries would pass."""
    entries = {}
    for line in str(data.get("entries") or "").splitlines():
        try:
            name, entry = Entry.from_line(line)
        except ValueError:  # written by a later version, or damaged: the resync reads the grant
            continue
        entries[name] = entry
    return entries


def shard_text(entries: dict[str, Entry]) -> str:
    return "\n".join(entry.to_line(name) for name, entry in sorted(entries.items()))


class Mirror:
    """This process's copy of the index, brought up to date by `sync` and `reload`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self._names: dict[int, set[str]] = {}  # the names each shard held when last read
        # The version of the changes record the mirror is up to, and that version's stamp: a record
        # deleted and written again may reach the same version with other changes.
        self._seen: tuple[int, str] | None = None
        self._own: set[tuple[int, str]] = set()  # versions of the changes record this process wrote
        self._sorted: list[str] | None = None
        self._counts: Counter[Status] = Counter()

    def sync(self, store: Store) -> Changes:
        """Read what changed since the last sync: one read when nothing did."""
        latest = _read_or_empty(store, CHANGES)
        now = (latest.version, str(latest.data.get("stamp", "")))
        with self._lock:
            seen = self._seen
        if now == seen:
            return {}
        shards = self._moved(store, seen[0], latest) if seen is not None and now[0] > seen[0] else None
        changes = self._read(store, self._every(store) if shards is None else sorted(shards))
        with self._lock:
            self._seen = now
        return changes

    def reload(self, store: Store) -> Changes:
        """Read every shard (the resync's repair of anything a sync missed)."""
        latest = _read_or_empty(store, CHANGES)
        changes = self._read(store, self._every(store))
        with self._lock:
            self._seen = (latest.version, str(latest.data.get("stamp", "")))
        return changes

    def _every(self, store: Store) -> list[int]:
        """Every shard written so far (a listing: few exist while there are few grants)."""
        listed = {int(name[len(SHARD) :]) for name in store.names("index") if name.startswith(SHARD)}
        with self._lock:
            return sorted(listed | self._names.keys())

    def signalled(self, version: tuple[int, str]) -> None:
        """A version of the changes record this process wrote: its shards hold nothing new to it
        (its notes are in the mirror already; a sibling's merged in are signalled by the sibling)."""
        with self._lock:
            self._own = {own for own in self._own if own[0] > version[0] - CHANGE_HISTORY} | {version}

    def _moved(self, store: Store, seen: int, latest: Versioned) -> set[int] | None:
        """The shards written between version `seen` and `latest` of the changes record, other than
        this process's own writes (None: every shard, when too many versions passed or Vault no
        longer keeps them)."""
        if latest.version - seen > LOOKBACK:
            return None
        with self._lock:
            mine = set(self._own)
        own = {version for version, _ in mine}
        stamp = str(latest.data.get("stamp", ""))
        shards = set() if (latest.version, stamp) in mine else set(latest.data.get("shards") or ())
        for version in range(seen + 1, latest.version):
            if version in own:
                continue
            try:
                shards.update(store.read_version("index", CHANGES, version).data.get("shards") or ())
            except NotFound:
                return None
        return shards

    def _read(self, store: Store, shards: Iterable[int]) -> Changes:
        changes: Changes = {}
        for shard in shards:
            entries = parse_shard(_read_or_empty(store, shard_name(shard)).data)
            with self._lock:
                for name in self._names.get(shard, set()) - entries.keys():
                    if self._set(name, None):
                        changes[name] = None
                for name, entry in entries.items():
                    if self._set(name, entry):
                        changes[name] = entry
                self._names[shard] = set(entries)
        return changes

    def _set(self, name: str, entry: Entry | None) -> bool:
        """Under the lock: `name`'s entry is now `entry` (None: none); whether that changed it."""
        old = self.entries.get(name)
        if old == entry:
            return False
        if old is not None:
            self._counts[old.status] -= 1
        if entry is None:
            del self.entries[name]
        else:
            self.entries[name] = entry
            self._counts[entry.status] += 1
        if old is None or entry is None:
            self._sorted = None
        return True

    def counts(self) -> dict[str, int]:
        """How many entries each status has."""
        with self._lock:
            return {str(status): n for status, n in self._counts.items() if n}

    def known(self, name: str) -> Entry | None:
        with self._lock:
            return self.entries.get(name)

    def names(self) -> set[str]:
        with self._lock:
            return set(self.entries)

    def wrote(self, notes: Changes) -> None:
        """Our own notes, once written: `note` compares with them, and a sync does not report them back."""
        with self._lock:
            for name, entry in notes.items():
                self._set(name, entry)
                names = self._names.setdefault(shard_of(name), set())
                if entry is None:
                    names.discard(name)
                else:
                    names.add(name)

    def sorted_names(self) -> list[str]:
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self.entries)
            return self._sorted

    def items(self, after: str | None = None) -> Iterator[tuple[str, Entry]]:
        """Entries in name order, after `after` (a page's cursor), without holding the lock while the
        caller iterates: the name list is never changed once built, and one dict read is atomic."""
        names = self.sorted_names()
        for name in itertools.islice(names, bisect.bisect_right(names, after) if after is not None else 0, None):
            entry = self.entries.get(name)
            if entry is not None:
                yield name, entry


def _read_or_empty(store: Store, name: str) -> Versioned:
    try:
        return store.read("index", name)
    except NotFound:
        return Versioned({}, 0)


class Keeper:
    """One process's index: the mirror it reads, and the notes it writes in batches (`flush`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.mirror = Mirror()
        self._lock = threading.Lock()
        self._pending: Changes = {}

    def note(self, name: str, entry: Entry | None) -> None:
        """Write `entry` (None: drop the name) at the next flush, unless the index says as much already."""
        known = self.mirror.known(name)
        if (entry is None and known is None) or (entry is not None and entry.same_hint(known)):
            with self._lock:
                self._pending.pop(name, None)
            return
        with self._lock:
            self._pending[name] = entry

    def pending(self) -> Changes:
        """The notes not yet written (a flush that Vault refused keeps them)."""
        with self._lock:
            return dict(self._pending)

    def flush(self, store: Store | None = None) -> None:
        """Write the notes: one check-and-set write a shard they touch, then one changes record
        (`store`: this keeper's, or the same bounded in time, `Store.until`)."""
        store = store or self.store
        with self._lock:
            notes, self._pending = self._pending, {}
        if not notes:
            return
        batches = _by_shard(notes)
        with ThreadPoolExecutor(min(WRITERS, len(batches))) as pool:  # shards are independent records
            outcomes = list(pool.map(partial(_merged, store), batches.items()))
        written = []
        for (shard, batch), outcome in zip(batches.items(), outcomes, strict=True):
            if outcome is None:
                with self._lock:
                    self._pending = {**batch, **self._pending}
                continue
            # Only what we wrote: a newer entry kept over our note is a sibling's, which a sync must
            # report (to the queue), not the mirror take in silently.
            self.mirror.wrote({name: held for name, held in outcome[0].items() if held == batch[name]})
            if outcome[1]:
                written.append(shard)
        if written:
            self.mirror.signalled(signal(store, written))


def _merged(store: Store, shard_batch: tuple[int, Changes]) -> tuple[Changes, bool] | None:
    """`merge`, or None (logged) when Vault will not take it: the notes are tried again next tick."""
    shard, batch = shard_batch
    try:
        return merge(store, shard, batch)
    except SidecarError as exc:
        log.warning("could not write index shard %d: %s; trying again next tick", shard, exc.message)
        return None


def _by_shard(notes: Changes) -> dict[int, Changes]:
    shards: dict[int, Changes] = {}
    for name, entry in notes.items():
        shards.setdefault(shard_of(name), {})[name] = entry
    return shards


def merge(store: Store, shard: int, notes: Changes) -> tuple[Changes, bool]:
    """Apply notes to one shard with check-and-set, again on a sibling's write meanwhile. An entry
    replaces another only if it is `newer_than` it; a drop always applies. Returns the noted names'
    entries as the shard now holds them, and whether it was written (not if it said as much)."""
    for attempt in range(SHARD_ATTEMPTS):
        current = _read_or_empty(store, shard_name(shard))
        entries = parse_shard(current.data)
        before = dict(entries)
        held: Changes = {}
        for name, entry in notes.items():
            known = entries.get(name)
            if entry is None:
                entries.pop(name, None)
            elif known is None or entry.newer_than(known):
                entries[name] = entry
            else:
                entry = known
            held[name] = entry
        if entries == before:
            return held, False
        try:
            store.write_index(shard_name(shard), {"entries": shard_text(entries)}, cas=current.version)
            return held, True
        except Conflict:
            time.sleep(random.uniform(0, 0.05 * (attempt + 1)))  # noqa: S311 - spreads retries; nothing secret
    raise Conflict(f"index shard {shard} kept changing")


def signal(store: Store, shards: list[int]) -> tuple[int, str]:
    """Tell every replica that these shards moved (a blind write: its version is the counter).
    Returns the version written and its stamp."""
    stamp = secrets.token_hex(8)  # tells this version from one of the same number after a deletion
    return store.write_index(CHANGES, {"shards": sorted(shards), "stamp": stamp}, history=CHANGE_HISTORY), stamp


def publish(store: Store, name: str, entry: Entry | None) -> None:
    """Write one entry now (the API's, the UI's and the CLI's writes of a grant)."""
    if merge(store, shard_of(name), {name: entry})[1]:
        signal(store, [shard_of(name)])


def users_of(store: Store, provider: str) -> list[str]:
    """The names of the grants that use `provider`: the index's candidates and any grant it does not
    know yet, each read to be sure (a provider in use must never be deleted on a stale hint)."""
    mirror = Mirror()
    mirror.reload(store)
    candidates = [name for name, entry in mirror.items() if entry.provider == provider]
    unindexed = [name for name in store.names("grants") if mirror.known(name) is None]
    users = []
    for name in sorted({*candidates, *unindexed}):
        try:
            if store.read("grants", name).data.get("provider") == provider:
                users.append(name)
        except NotFound:
            continue
    return users
