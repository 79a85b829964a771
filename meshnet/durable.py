"""The durable copy of the replicated tables: an append-only journal with checksums.

One file per agent, ``STATE_DIR/tables.journal``. Every record is framed as
``u32 length | u32 crc32(payload) | payload`` (big-endian), the payload msgpack:

==========================================  =========================================
``{"journal": "meshnet-tables", "v": 1}``   header, first record only
``[0, table, key, owner, ltime, deleted,    a row as stored (a tombstone carries its
value, reap_wall]``                         reap deadline as wall-clock time, 0 if live)
``[1, table, key]``                         the row was reaped
``[2, clock, wall]``                        the Lamport clock, closing every batch
==========================================  =========================================

Write path: the agent's tables report the rows they changed; one ``append`` encodes them
and the clock into one buffer and writes it with a single ``write(2)``, so a process
killed at any moment leaves whole batches (the page cache has them). ``sync`` runs
``fdatasync`` (power loss); the API awaits it before answering a change, other changes
are synced at most a second later. When the file grows past 1.5x the encoded size of
the live rows (+32 KiB), ``compact`` writes every row to a new file, syncs it and renames
it over the old one, so the copy stays proportional to the tables.

Read path: records are replayed in order. A tail that ends inside a record, or whose
last record fails its checksum, is a torn write (power loss in the middle of an
append): it is cut off with one log line. Anything else wrong (no header, a bad record
followed by more data) means the file is not ours or is damaged: it is renamed to
``tables.journal.corrupt-<time>`` for inspection, with one log line, and the agent
starts from its peers. It never raises for what it reads.

Why a journal and not SQLite (WAL): ``bench/bench_durable.py`` measures both behind the
same interface; see docs/benchmarks.md (## durable) and docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from meshnet.gossip.tabletypes import Entry

log = logging.getLogger("meshnet.durable")

HEADER = {"journal": "meshnet-tables", "v": 1}
_FRAME = struct.Struct(">II")
ROW, REAPED, CLOCK = 0, 1, 2
COMPACT_FACTOR = 1.5
COMPACT_SLACK = 32 * 1024
MAX_RECORD = 16 * 1024 * 1024


def frame(obj: object) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def row_record(e: Entry, wall_now: float, mono_now: float) -> bytes:
    reap_wall = 0.0 if not e.deleted else wall_now + (e.reap_at - mono_now)
    return frame([ROW, e.table, e.key, e.owner, e.ltime, e.deleted, e.value, reap_wall])


_HEADER_FRAME = frame(HEADER)


@dataclass
class Parsed:
    """What a journal holds: rows by (table, key) with reap deadlines in wall time."""

    rows: dict[tuple[str, str], tuple[str, int, bool, bytes, float]] = field(
        default_factory=dict)
    clock: int = 0
    saved_at: float = 0.0  #: wall time of the last batch (0: none)
    good: int = 0  #: bytes that parsed (the file is cut here when the tail is torn)
    torn: int = 0  #: bytes of a torn tail
    error: str = ""  #: why the file is not usable at all ("" if it is)


def parse(buf: bytes) -> Parsed:
    """Replay a journal's bytes (pure; never raises for what it reads)."""
    out = Parsed()
    pos, n, first = 0, len(buf), True
    while pos < n:
        if n - pos < _FRAME.size:
            out.torn = n - pos
            break
        length, crc = _FRAME.unpack_from(buf, pos)
        end = pos + _FRAME.size + length
        if length > MAX_RECORD:
            out.error = f"record of {length} bytes at offset {pos}"
            return out
        if end > n:
            out.torn = n - pos
            break
        payload = buf[pos + _FRAME.size:end]
        if zlib.crc32(payload) != crc:
            if end == n and not first:
                out.torn = n - pos
                break
            out.error = f"checksum mismatch at offset {pos}"
            return out
        try:
            rec = msgpack.unpackb(payload, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            out.error = f"undecodable record at offset {pos}: {exc}"
            return out
        if first:
            if rec != HEADER:
                out.error = "not a meshnet tables journal (bad header)"
                return out
            first = False
        elif not _replay(out, rec):
            out.error = f"unknown record at offset {pos}"
            return out
        pos = end
        out.good = pos
    if first and n and (not out.torn or n >= len(_HEADER_FRAME)):
        # (a file shorter than its header is a torn first write; longer, it is not ours)
        out.error = "not a meshnet tables journal (no header)"
    return out


def _replay(out: Parsed, rec: object) -> bool:
    if not isinstance(rec, list) or not rec:
        return False
    try:
        kind = rec[0]
        if kind == ROW and len(rec) == 8:
            _, table, key, owner, ltime, deleted, value, reap_wall = rec
            if not (isinstance(table, str) and isinstance(key, str) and isinstance(owner, str)
                    and isinstance(ltime, int) and isinstance(deleted, bool)
                    and isinstance(value, bytes) and isinstance(reap_wall, (int, float))):
                return False
            out.rows[(table, key)] = (owner, ltime, deleted, value, float(reap_wall))
        elif kind == REAPED and len(rec) == 3:
            out.rows.pop((rec[1], rec[2]), None)
        elif kind == CLOCK and len(rec) == 3 and isinstance(rec[1], int):
            out.clock = max(out.clock, rec[1])
            out.saved_at = float(rec[2])
        else:
            return False
    except TypeError:  # an unhashable key from a damaged file
        return False
    return True


def to_entries(p: Parsed, wall_now: float, mono_now: float, reap_max: float) -> list[Entry]:
    """Rows as table entries on the monotonic clock (tombstones past their reap time,
    and reap deadlines further than ``reap_max`` away, are dropped or clamped)."""
    out = []
    for (table, key), (owner, ltime, deleted, value, reap_wall) in p.rows.items():
        reap_at = math.inf
        if deleted:
            left = min(reap_wall - wall_now, reap_max)
            if left <= 0:
                continue
            reap_at = mono_now + left
        out.append(Entry(table, key, value if not deleted else b"", owner, ltime, deleted,
                         reap_at))
    return out


class TableJournal:
    """The journal file of one agent (owned by the event loop's thread)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = -1
        self.file_bytes = 0
        self._sizes: dict[tuple[str, str], int] = {}
        self.live_bytes = 0
        self.unsynced = False
        self.counters = {"appends": 0, "bytes_written": 0, "syncs": 0, "compactions": 0}

    # --- read ------------------------------------------------------------------------

    def load(self) -> Parsed | None:
        """The copy on disk; None if there is none or it was unusable (moved aside)."""
        try:
            buf = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s); starting from peers", self.path, exc)
            self._move_aside()
            return None
        p = parse(buf)
        if p.error:
            aside = self._move_aside()
            log.warning("durable copy %s is unusable (%s): moved to %s; starting from peers",
                        self.path, p.error, aside)
            return None
        if p.torn:
            log.warning("durable copy %s: discarded a torn tail of %d bytes (an interrupted "
                        "write)", self.path, p.torn)
            with open(self.path, "r+b") as f:
                f.truncate(p.good)
        return p

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            self.path.replace(aside)
        except OSError:
            pass
        return aside

    # --- write -----------------------------------------------------------------------

    def open(self, rows: Iterable[Entry], clock: int, wall_now: float,
             mono_now: float) -> None:
        """Start writing: a fresh compacted file holding ``rows`` (what was loaded and
        merged so far), so the journal never depends on a file it did not write."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.compact(rows, clock, wall_now, mono_now)

    def reopen(self, rows: Iterable[Entry], wall_now: float, mono_now: float) -> None:
        """Go on appending to the file ``load`` just read (and cut, if its tail was
        torn); ``rows`` are what it holds, for the size accounting."""
        # (an estimate of each record's size: encoding them all again costs more than
        # the accounting is worth; appends replace it with exact sizes)
        sizes = {(e.table, e.key): len(e.table) + len(e.key) + len(e.owner) + len(e.value) + 32
                 for e in rows}
        self._sizes = sizes
        self.live_bytes = sum(sizes.values())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.file_bytes = os.fstat(self._fd).st_size

    def append(self, dirty: dict[tuple[str, str], Entry | None], clock: int,
               wall_now: float, mono_now: float) -> None:
        if self._fd < 0:
            return
        parts = []
        for ident, e in dirty.items():
            if e is None:
                rec = frame([REAPED, ident[0], ident[1]])
                self.live_bytes -= self._sizes.pop(ident, 0)
            else:
                rec = row_record(e, wall_now, mono_now)
                self.live_bytes += len(rec) - self._sizes.get(ident, 0)
                self._sizes[ident] = len(rec)
            parts.append(rec)
        parts.append(frame([CLOCK, clock, wall_now]))
        self._write(b"".join(parts))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.file_bytes += len(data)
        self.unsynced = True
        self.counters["appends"] += 1
        self.counters["bytes_written"] += len(data)

    def needs_compaction(self) -> bool:
        return self.file_bytes > COMPACT_FACTOR * self.live_bytes + COMPACT_SLACK

    def compact(self, rows: Iterable[Entry], clock: int, wall_now: float,
                mono_now: float) -> None:
        """Rewrite the file as exactly ``rows`` (atomic: a new file renamed over)."""
        sizes: dict[tuple[str, str], int] = {}
        parts = [frame(HEADER)]
        for e in rows:
            rec = row_record(e, wall_now, mono_now)
            sizes[(e.table, e.key)] = len(rec)
            parts.append(rec)
        parts.append(frame([CLOCK, clock, wall_now]))
        data = b"".join(parts)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _sync_dir(self.path.parent)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.file_bytes = len(data)
        self._sizes = sizes
        self.live_bytes = sum(sizes.values())
        self.unsynced = False
        self.counters["compactions"] += 1
        self.counters["bytes_written"] += len(data)

    def sync(self) -> None:
        """fdatasync what was appended (blocking; run it off the event loop)."""
        if self._fd >= 0 and self.unsynced:
            self.unsynced = False
            os.fdatasync(self._fd)
            self.counters["syncs"] += 1

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
