"""What the SWIM core hands back to its driver: events and stream requests.

Design notes
------------
* Events are frozen dataclasses drained with ``Memberlist.drain_events()``. Member
  events carry a :class:`~meshnet.gossip.member.Member` snapshot taken at the moment
  of the transition.
* ``UserMessage`` is an *application* message (first payload byte not a serf type
  0..9), from UDP ``[8]+payload`` or a TCP user stream. serf's own user messages
  are counted and never surfaced.
* ``JoinCompleted`` answers one ``Memberlist.join()`` call once every push/pull it
  started has finished (``ok`` = number that completed, as memberlist counts).
* ``StreamRequest`` asks the driver to open a TCP connection, write ``data``, and,
  when ``expect_reply``, feed what it reads to ``Memberlist.stream_reply(id, ...)``
  until that returns True; on a connect/read failure or at ``deadline`` it reports
  ``stream_reply(id, None, now)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.gossip.member import Member

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class MemberJoin:
    member: Member


@dataclass(frozen=True, slots=True)
class MemberLeave:
    """The member left voluntarily (dead with From == Node)."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberFailed:
    """The member was declared dead by failure detection."""

    member: Member


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """The member's meta (tags) changed."""

    member: Member


@dataclass(frozen=True, slots=True)
class UserMessage:
    from_addr: Address
    from_node: str | None
    payload: bytes
    reliable: bool = False


@dataclass(frozen=True, slots=True)
class JoinCompleted:
    join_id: int
    ok: int
    errors: tuple[str, ...]


Event = MemberJoin | MemberLeave | MemberFailed | MemberUpdate | UserMessage | JoinCompleted


@dataclass(frozen=True, slots=True)
class StreamRequest:
    id: int
    addr: Address
    data: bytes
    expect_reply: bool
    deadline: float
    purpose: str  # "push_pull", "ping" or "user": for logs and metrics
