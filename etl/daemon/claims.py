"""Claims of (source, slot) in `ingestion_runs`, so that replicas poll each slot once and
share a slot's sources at the rate each can poll them.

The scheduler fires the jobs of one aligned instant together; their claims make one round
per slot. A round claims its sources a chunk at a time (one statement, one transaction
per chunk), and the next chunk only while fewer than `ahead` chunks of this replica's
claimed slots are in flight: a replica takes work as fast as it finishes it, so two
replicas split a slot by their speed, and a replica that died takes nothing from the next
slot. PostgreSQL is the only thing they share: the unique (source, snapshot_ts) lets one
claim of each slot win. The chunks are the sorted sources cut in pieces, and each replica
walks them from its own place (rotated by a hash of its worker id and the slot), so
replicas mostly claim different rows; a chunk another replica took costs one statement
that wins none. Each chunk is inserted in sorted order: two claims never deadlock.

The pace holds for the first half of the poll's budget: what a round has not claimed by
then is claimed back to back (as if there were no bound), to be polled in the time left.
A bound of `ahead` chunks (400 slots) is far above what one replica needs in flight to
keep its CPU busy (a slot is a few requests of tens of milliseconds), so a replica alone
is not slowed; the price is that a slot of fewer sources than the bound goes whole to the
replica that claims first: replicas add capacity from a few hundred sources up.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Protocol

from etl.daemon.health import Database
from etl.daemon.supervisor import Supervisor
from etl.store.load import claim_slots

ABANDONED = (10, 2)  # a claim 2 to 10 intervals old that never finished: its worker died
CHUNK = 200  # sources per claim statement
AHEAD = 2  # chunks: the next is claimed while fewer than AHEAD * CHUNK claimed slots are in flight
Key = tuple[datetime, timedelta]  # (slot, interval)


class Answer(Protocol):
    """Where a claim's answer goes: a future a slot awaits, or a `Start`."""

    def done(self) -> bool: ...
    def set_result(self, result: bool | None, /) -> None: ...


class Start:
    """An answer that starts (or drops) the slot's work itself: no task waits for it."""

    __slots__ = ("_done", "name", "start")

    def __init__(self, name: str, start: Callable[[str, bool | None], None]):
        self.name, self.start, self._done = name, start, False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: bool | None, /) -> None:
        self._done = True
        self.start(self.name, result)


@dataclass
class Round:
    """The claims of one slot by this process: asked, and not yet sent to the database."""

    deadline: float  # time.monotonic() by which the slot's polls end
    task: asyncio.Task[None] | None = None  # the round's claiming, while it runs
    pending: list[str] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)


class Claims:
    def __init__(
        self,
        database: Database,
        supervisor: Supervisor,
        worker: str,
        *,
        chunk: int = CHUNK,
        ahead: int = AHEAD,
    ):
        self.database = database
        self.supervisor = supervisor
        self.worker = worker
        self.chunk = chunk
        self.bound = chunk * ahead
        self.rounds: dict[Key, Round] = {}  # per slot whose claims are still being made
        self.inflight: set[tuple[str, datetime]] = set()  # claimed by us, not yet released
        self._room: list[asyncio.Future[None]] = []  # rounds waiting for the in-flight count to drop

    async def claim(self, source: str, slot: datetime, interval: timedelta, deadline: float) -> bool | None:
        """True: ours to poll (then `release` it); False: another replica's (or asked twice);
        None: the database is down, poll unclaimed."""
        if not self.database.up:
            return None
        round_ = self._round((slot, interval), deadline)
        if source in round_.answers:  # already being claimed for this slot, by this process
            return False
        answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        round_.answers[source] = answer
        round_.pending.append(source)
        return await answer

    async def claim_all(
        self,
        sources: list[str],
        slot: datetime,
        interval: timedelta,
        deadline: float,
        start: Callable[[str, bool | None], None],
    ) -> None:
        """Claim the slot of every source of `sources`, calling `start(source, answer)` as
        each answer comes, with `claim`'s answers; returns once every source has had its
        answer. No task or future per source: a slot another replica won costs its share
        of one statement and nothing more. `start` must not raise."""
        if not self.database.up:
            for source in sources:
                start(source, None)
            return
        round_ = self._round((slot, interval), deadline)
        for source in sources:
            if source in round_.answers:
                start(source, False)
            else:
                round_.answers[source] = Start(source, start)
                round_.pending.append(source)
        assert round_.task is not None
        await asyncio.wait([round_.task])  # not cancelled with the caller: other slots wait on it

    def _round(self, key: Key, deadline: float) -> Round:
        round_ = self.rounds.get(key)
        if round_ is None:
            round_ = self.rounds[key] = Round(deadline)
            round_.task = self.supervisor.spawn("claims", self._run(key, round_))
            round_.task.add_done_callback(partial(self._ended, key, round_))
        return round_

    def release(self, source: str, slot: datetime) -> None:
        """The slot's work is over (whatever its outcome): room for the next chunk. A slot
        that was not claimed by us is ignored."""
        self.inflight.discard((source, slot))
        if len(self.inflight) < self.bound:
            for waiter in self._room:
                if not waiter.done():
                    waiter.set_result(None)
            self._room.clear()

    def chunks(self, sources: list[str], slot: datetime) -> list[list[str]]:
        """The sorted sources in chunks, starting at this replica's place in this slot (two
        replicas that start at the same chunk in one slot do not in the next)."""
        names = sorted(sources)
        pieces = [names[i : i + self.chunk] for i in range(0, len(names), self.chunk)]
        first = zlib.crc32(f"{self.worker}|{slot.isoformat()}".encode()) % len(pieces) if pieces else 0
        return pieces[first:] + pieces[:first]

    async def _run(self, key: Key, round_: Round) -> None:
        await asyncio.sleep(0)  # after the other jobs of this turn have asked
        started = time.monotonic()
        paced_until = started + (round_.deadline - started) / 2
        while round_.pending:  # sources that ask while the round runs join it
            asked, round_.pending = round_.pending, []
            for names in self.chunks(asked, key[0]):
                names = [n for n in names if not round_.answers[n].done()]  # cancelled meanwhile
                if not names:
                    continue
                await self._wait_for_room(paced_until)
                claimed = await self._claim_chunk(names, key, round_.deadline)
                for name in names:
                    answer = round_.answers[name]
                    if answer.done():
                        continue
                    if claimed is None:
                        answer.set_result(None)
                    elif name in claimed:
                        self.inflight.add((name, key[0]))
                        answer.set_result(True)
                    else:
                        answer.set_result(False)
                if claimed is None:  # the database failed: this round's other slots poll unclaimed
                    self._answer_all(round_, None)
                    round_.pending.clear()
                    break
        del self.rounds[key]  # no await since the loop's test: nobody joined in between

    async def _wait_for_room(self, until: float) -> None:
        while len(self.inflight) >= self.bound:
            left = until - time.monotonic()
            if left <= 0:
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._room.append(waiter)
            await asyncio.wait([waiter], timeout=left)

    async def _claim_chunk(self, names: list[str], key: Key, deadline: float) -> set[str] | None:
        """The sources of `names` this replica won; None: the claim failed."""
        try:  # a claim may use up to half of what is left of the poll's budget
            return await self.database.call(
                partial(self._claim, names, *key),
                timeout=max(0.5, (deadline - time.monotonic()) / 2),
                lane="claims",
            )
        except Exception as err:
            self.database.failed(err, "a claim")  # unclaimed, each slot polls and stores on its own
            return None

    def _ended(self, key: Key, round_: Round, _: object) -> None:
        """A round cancelled at shutdown (even before it started) leaves no slot waiting."""
        if self.rounds.get(key) is round_:
            del self.rounds[key]
        self._answer_all(round_, None)

    @staticmethod
    def _answer_all(round_: Round, answer: bool | None) -> None:
        for future in round_.answers.values():
            if not future.done():
                future.set_result(answer)

    def _claim(self, sources: list[str], slot: datetime, interval: timedelta) -> set[str]:
        abandoned = (slot - ABANDONED[0] * interval, slot - ABANDONED[1] * interval)
        with self.database.engine.begin() as conn:
            return claim_slots(conn, sources=sources, slot=slot, worker=self.worker, abandoned=abandoned)
