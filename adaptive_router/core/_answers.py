"""Answered requests that may still be scored, held in this process's memory.

    memory = AnsweredMemory(max_ids=200_000, ttl_s=86_400)
    memory.keep(Answered("req-9f…", "chatcmpl-…", "openai/gpt-4o-mini", 3, owner))
    memory.find("chatcmpl-…", owner)                 # by either id; only the owner's own
    memory.find("req-9f…", admin, any_owner=True)    # an admin's own first, else the latest

Ids are scoped by owner (a hash of the API key that made the request, "" without keys): a
client may choose its request id (``x-request-id``), so two keys can send the same one, and each
keeps its own record. ``Router`` keeps one for library use; the service's is the one inside its
:class:`~adaptive_router.state.FeedbackStore`, which adds Redis.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Answered", "AnsweredMemory", "new_request_id"]


def new_request_id() -> str:
    """96 random bits: unguessable, so one tenant cannot name another's request (~1 us)."""
    return "req-" + os.urandom(12).hex()


@dataclass(slots=True)
class Answered:
    """One answered request: its ids, the model that answered, the learner cell, the owner;
    ``at`` (wall clock) orders the records of one id that several owners used."""

    request_id: str
    response_id: str | None
    model: str
    cell: int
    owner: str
    at: float = field(default=0.0, compare=False)
    scored: bool = field(default=False, compare=False)

    def ids(self) -> list[str]:
        """The ids that name this request: its own, and its answer's when that differs."""
        if self.response_id and self.response_id != self.request_id:
            return [self.request_id, self.response_id]
        return [self.request_id]

    def to_json(self) -> bytes:
        data = {
            "r": self.request_id,
            "a": self.response_id,
            "m": self.model,
            "c": self.cell,
            "o": self.owner,
            "t": self.at,
        }
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Answered | None:
        """The entry, or None for anything malformed (a corrupt entry is unknown, never an error)."""
        try:
            data = json.loads(raw)
            request_id, model, cell, owner = str(data["r"]), str(data["m"]), int(data["c"]), str(data["o"])
            answered = cls(request_id, data.get("a"), model, cell, owner, float(data.get("t", 0.0)))
        except (ValueError, KeyError, TypeError):
            return None
        return answered


class AnsweredMemory:
    """Answered requests by id and owner, each for ``ttl_s``, at most ``max_ids`` ids (the
    least recently used go first). Most ids have one owner: a list of one record each."""

    def __init__(
        self, max_ids: int, ttl_s: float = math.inf, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_ids, self.ttl_s, self.clock = max_ids, ttl_s, clock
        self._ids: OrderedDict[str, list[tuple[float, Answered]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def keep(self, answered: Answered) -> None:
        if self.max_ids <= 0:
            return
        held = (self.clock() + self.ttl_s, answered)
        for some_id in answered.ids():
            records = self._ids.get(some_id)
            if records is None:
                self._ids[some_id] = [held]
                continue
            self._ids.move_to_end(some_id)
            records[:] = [r for r in records if r[1].owner != answered.owner]
            records.append(held)  # the latest last
        while len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)

    def find(self, some_id: str, owner: str, *, any_owner: bool = False) -> Answered | None:
        """``owner``'s record under ``some_id``; with ``any_owner``, else the latest of anyone's."""
        records = self._ids.get(some_id)
        if records is None:
            return None
        now = self.clock()
        live = [r for r in records if r[0] > now]
        if len(live) != len(records):
            if live:
                records[:] = live
            else:
                del self._ids[some_id]
        for _, answered in reversed(live):
            if answered.owner == owner:
                return answered
        return live[-1][1] if any_owner and live else None
