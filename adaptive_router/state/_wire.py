"""The wire format of a replica's published learning state: a fixed prefix (magic, version,
header length), a JSON header (ids, cells, sums' rates and reference times, surprise events),
then each sum's cells with evidence as little-endian sparse arrays. Readers match models by id
and refuse (ValueError) anything malformed, of another version, or out of range."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core._sums import LATENCY_SUMS, SUM_NAMES, DecayedSums, LearnerState, sum_shapes

__all__ = ["WIRE_VERSION", "Published", "WireEvent", "decode_state", "encode_state"]

WIRE_VERSION = 2
_MAGIC = b"ARLS"
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length


@dataclass(frozen=True)
class WireEvent:
    """A latency surprise as published: ``name`` evidence of model ``model_id`` kept ``factor``."""

    eid: str
    name: str
    model_id: str
    t: float
    factor: float


@dataclass
class Published:
    """One replica's published state: its sums, its own surprises, and the events its sums reflect."""

    replica: str
    boot: str
    pushed_at: float
    state: LearnerState
    events: list[WireEvent] = field(default_factory=list)
    applied: dict[str, float] = field(default_factory=dict)  # event id -> event time


def encode_state(published: Published) -> bytes:
    """Compact bytes: only models with evidence, and only their cells with evidence, are sent
    (most of a large catalogue has none; readers match models by id)."""
    state = _models_with_evidence(published.state)
    sums_meta: dict[str, Any] = {}
    chunks: list[bytes] = []
    for name in SUM_NAMES:
        sums = state.sums[name]
        flat = [sums.w.ravel(), sums.s1.ravel(), sums.s2.ravel()]
        idx = np.flatnonzero((flat[0] != 0) | (flat[1] != 0) | (flat[2] != 0))
        sums_meta[name] = {"rate": sums.rate, "t0": sums.t0, "shape": list(sums.w.shape), "n": int(idx.size)}
        chunks.append(idx.astype("<i4").tobytes())
        chunks.extend(array[idx].astype("<f8").tobytes() for array in flat)
    header = {
        "replica": published.replica,
        "boot": published.boot,
        "pushed_at": published.pushed_at,
        "ids": list(state.ids),
        "tasks": list(state.tasks),
        "sums": sums_meta,
        "events": [[e.eid, e.name, e.model_id, e.t, e.factor] for e in published.events],
        "applied": [[eid, t] for eid, t in published.applied.items()],
    }
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _PREFIX.pack(_MAGIC, WIRE_VERSION, len(raw)) + raw + b"".join(chunks)


def _models_with_evidence(state: LearnerState) -> LearnerState:
    seen = np.zeros(len(state.ids), dtype=np.bool_)
    for each in state.sums.values():
        for array in (each.w, each.s1, each.s2):
            seen |= (array != 0).reshape(-1, len(state.ids)).any(axis=0)
    if seen.all():
        return state
    keep = np.flatnonzero(seen)
    sums = {}
    for name, full in state.sums.items():
        part = DecayedSums(full.w[..., keep].shape, 1.0, full.t0)
        part.rate = full.rate
        part.w[...], part.s1[...], part.s2[...] = full.w[..., keep], full.s1[..., keep], full.s2[..., keep]
        sums[name] = part
    return LearnerState(tuple(state.ids[i] for i in keep), state.tasks, sums)


def decode_state(blob: bytes) -> Published:
    """The inverse of :func:`encode_state`. Raises ValueError on anything else (other version,
    truncated or corrupt bytes, inconsistent shapes, non-finite numbers)."""
    if len(blob) < _PREFIX.size:
        raise ValueError("shared state: too short")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("shared state: not a learner state")
    if version != WIRE_VERSION:
        raise ValueError(f"shared state: wire version {version} is not {WIRE_VERSION}")
    end = _PREFIX.size + header_len
    try:
        header = json.loads(blob[_PREFIX.size : end])
        ids = _strings(header["ids"])
        tasks = _strings(header["tasks"])
        shapes = sum_shapes(len(ids), len(tasks))
        sums, offset = {}, end
        for name in SUM_NAMES:
            sums[name], offset = _read_sums(blob, offset, header["sums"][name], shapes[name])
        if offset != len(blob):
            raise ValueError("trailing bytes")
        return Published(
            replica=str(header["replica"]),
            boot=str(header["boot"]),
            pushed_at=_finite(header["pushed_at"]),
            state=LearnerState(ids, tasks, sums),
            events=[_event(item) for item in header["events"]],
            applied={str(eid): _finite(t) for eid, t in header["applied"]},
        )
    except (KeyError, TypeError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise ValueError(f"shared state: malformed ({exc!r})") from exc
    except ValueError as exc:  # json.JSONDecodeError included
        raise ValueError(f"shared state: malformed ({exc})") from exc


def _read_sums(blob: bytes, offset: int, meta: Any, shape: tuple[int, ...]) -> tuple[DecayedSums, int]:
    rate, t0, n = _finite(meta["rate"]), _finite(meta["t0"]), int(meta["n"])
    if tuple(meta["shape"]) != shape or rate <= 0 or not 0 <= n <= math.prod(shape):
        raise ValueError("shape, rate or count out of range")
    if offset + n * 28 > len(blob):
        raise ValueError("truncated")
    idx = np.frombuffer(blob, "<i4", n, offset).astype(np.intp)
    offset += 4 * n
    if n and (idx[0] < 0 or idx[-1] >= math.prod(shape) or np.any(np.diff(idx) <= 0)):
        raise ValueError("cell index out of range")
    sums = DecayedSums(shape, math.log(2.0) / rate, t0)
    sums.rate = rate  # exactly the sender's, not a round trip through the half-life
    for target in (sums.w, sums.s1, sums.s2):
        values = np.frombuffer(blob, "<f8", n, offset)
        offset += 8 * n
        if not np.all(np.isfinite(values)):
            raise ValueError("non-finite sums")
        target.ravel()[idx] = values
    return sums, offset


def _strings(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ValueError("expected a list of strings")
    return tuple(items)


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    return float(value)


def _event(item: Any) -> WireEvent:
    eid, name, model_id, t, factor = item
    event = WireEvent(str(eid), str(name), str(model_id), _finite(t), _finite(factor))
    if event.name not in LATENCY_SUMS or not 0.0 <= event.factor <= 1.0:
        raise ValueError(f"bad event {item!r}")
    return event
