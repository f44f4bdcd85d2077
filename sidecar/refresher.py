"""The refresh loop: every grant refreshed before it expires, once, by whichever replica claims it.

One `Refresher` per replica keeps an in-memory due-queue, fed by the index (index.py): a tick
writes the entries of what this replica stored since the last, then reads what the others wrote
(one Vault read when nothing changed). Each due grant goes to a worker thread, which refreshes it
under a claim (renewal.py).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from . import oauth
from .clock import SYSTEM, Clock
from .config import Settings
from .duequeue import DueQueue
from .egress import Egress
from .errors import Forbidden, NotFound, SidecarError
from .index import Keeper
from .metrics import REFRESH_SECONDS, REFRESHES
from .models import Grant
from .renewal import ERROR_RETRY, Outcome, RefreshResult, Renewal
from .resync import Resync
from .store import Store

log = logging.getLogger(__name__)
FLUSH_GRACE = 5.0  # seconds a stop gives a resync step in flight, then the last index notes


class Refresher:
    """The loop of one replica: the due-queue, the resync that feeds it, the worker pool that drains it."""

    def __init__(
        self, settings: Settings, store: Store, clock: Clock = SYSTEM, client: oauth.Client | None = None
    ) -> None:
        self.settings, self.store, self._clock = settings, store, clock
        client = client or oauth.Client(Egress(settings.egress_allow), clock)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.queue = DueQueue(clock)
        self.index = Keeper(store)
        self.renewal = Renewal(
            settings, store, client, self.owner, self.queue, self.index, clock, lambda: self._stopping
        )
        self.resync = Resync(store, self.queue, settings, clock, self.index, self._learn, self.renewal.forget)
        self._pool = ThreadPoolExecutor(settings.refresh_concurrency, thread_name_prefix="refresh")
        self._lock = threading.Lock()  # guards `_in_flight` only; never held while calling the queue
        self._in_flight: dict[str, Future[Outcome]] = {}
        self._stopping: float | None = None  # when a stop was asked (monotonic)

    def next_due(self) -> datetime | None:
        return self.queue.next_due()

    def _learn(self, name: str) -> None:
        """Read one grant, put it in the queue at its due time and note its index entry."""
        try:
            stored = self.store.read("grants", name)
        except NotFound:
            self.renewal.forget(name)
            self.index.note(name, None)
            return
        grant = Grant.from_record(name, stored.data)
        try:
            provider = self.renewal.providers.get(grant.provider)
        except NotFound:
            log.warning("grant %s names provider %r, which does not exist", name, grant.provider)
            self.renewal.schedule(grant, None)  # nothing to refresh it with: left out of the index, read again
            return  # by the next resync
        self.renewal.settle(grant, stored.version, provider)

    def resync_step(self, budget: int) -> None:
        """One step of the resync (resync.py): list the grants when due, read at most `budget`."""
        self.resync.step(budget)

    # -- ticks and passes --------------------------------------------------------------------

    def tick(self) -> list[Future[Outcome]]:
        """One scheduler tick: `learn`, then `dispatch`."""
        self.learn()
        return self.dispatch()

    def learn(self) -> None:
        """Write this replica's index notes, then a resync step (what the others wrote)."""
        try:
            self.index.flush()
            self.resync_step(max(1, int(self.settings.resync_rate * self.settings.refresh_interval)))
        except SidecarError as exc:
            log.warning("resync step failed: %s", exc.message)

    def dispatch(self) -> list[Future[Outcome]]:
        """Hand every due grant to the worker pool."""
        self.queue.tick()
        return [self.submit(name) for name in self.queue.pop_due(self._clock.monotonic(), self._in_flight.__contains__)]

    def submit(self, name: str, force: bool = False) -> Future[Outcome]:
        with self._lock:
            running = self._in_flight.get(name)
            if running is not None:
                return running
            future = self._pool.submit(self._guarded, name, force)
            self._in_flight[name] = future
        return future

    def _guarded(self, name: str, force: bool) -> Outcome:
        started = self._clock.monotonic()
        try:
            outcome = self.refresh_one(name, force)
        except SidecarError as exc:
            log.warning("refresh of %s stopped: %s", name, exc.message)
            outcome = Outcome(name, RefreshResult.ERROR, exc.message)
        except Exception:  # a bug must not kill the worker pool or the loop
            log.exception("refresh of %s failed unexpectedly", name)
            outcome = Outcome(name, RefreshResult.ERROR, "unexpected error; see the log")
        finally:
            with self._lock:
                self._in_flight.pop(name, None)
        REFRESHES.labels(outcome.result).inc()
        if outcome.result == RefreshResult.REFRESHED:
            REFRESH_SECONDS.observe(self._clock.monotonic() - started)
        if outcome.result in (RefreshResult.LOST_RACE, RefreshResult.CLAIM_TOO_SLOW):  # once the winner wrote
            self.queue.retry_soon(name, max(1.0, self.settings.refresh_interval))
        elif outcome.result == RefreshResult.ERROR:
            self.queue.retry_soon(name, max(ERROR_RETRY, self.settings.refresh_interval))
        return outcome

    def refresh_for(self, caller: Store, name: str) -> Outcome:
        """Refresh now on behalf of a caller whose own token may update the grant ("Refresh now").
        The refresh itself goes through the same claim, with this refresher's token."""
        if not caller.may("grants", name, "update"):
            raise Forbidden(f"permission denied on secret {name!r}")
        outcome = self.submit(name, force=True).result()
        self.index.flush()  # siblings learn the new due time now, not at this process's next tick
        return outcome

    def refresh_due(self, now: datetime | None = None) -> list[Outcome]:
        """One whole pass: read every grant, refresh those due, wait for them all."""
        self.resync.restart(full=True)
        self.resync.step(budget=10**9)
        ahead = (now - self._clock.now()).total_seconds() if now else 0.0
        due = self.queue.pop_due(self._clock.monotonic() + ahead, self._in_flight.__contains__)
        futures = [self.submit(name) for name in due]
        outcomes = [f.result() for f in futures]
        self.index.flush()
        return outcomes

    def refresh_one(self, name: str, force: bool = False) -> Outcome:
        """Refresh one grant in this thread if it is due (or `force`): see `Renewal.refresh_one`."""
        return self.renewal.refresh_one(name, force)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """`learn` and `dispatch` at once, then every SIDECAR_REFRESH_INTERVAL seconds until `stop` is
        set; then finish in-flight work. Each in a thread of its own: a resync slowed by Vault (a full
        read of the index, retried through an outage) must not hold back the refreshes already due."""
        log.info("refresher %s started", self.owner)
        # A daemon, waited for only FLUSH_GRACE: a step in flight when the stop comes may hang on Vault,
        # and a note it had taken and not written is lost at worst, which the index allows for.
        learner = threading.Thread(target=self._every_interval, args=(stop, self.learn), name="resync", daemon=True)
        learner.start()
        self._every_interval(stop, self.dispatch)
        learner.join(FLUSH_GRACE)
        self.shutdown()

    def _every_interval(self, stop: threading.Event, step: Callable[[], object]) -> None:
        """`step` now, then every SIDECAR_REFRESH_INTERVAL until `stop`. Timed by the monotonic clock (as
        is `Event.wait`): a stepped wall clock neither stalls the steps nor bunches them up."""
        next_step = self._clock.monotonic()
        while True:
            step()
            next_step = max(next_step + self.settings.refresh_interval, self._clock.monotonic())  # an overrun skips
            if stop.wait(next_step - self._clock.monotonic()):
                return

    def shutdown(self) -> None:
        """Stop taking work and wait for refreshes in flight, including their Vault writes."""
        self._stopping = self._clock.monotonic()
        self._pool.shutdown(wait=True, cancel_futures=True)  # queued work is dropped; running work finishes
        try:
            self.index.flush(self.store.until(self._clock.monotonic() + FLUSH_GRACE))
        except SidecarError as exc:  # the siblings repair what is lost here
            log.warning("could not write the index on the way out: %s", exc.message)
        log.info("refresher %s stopped", self.owner)
