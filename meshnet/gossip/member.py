"""A member as the membership layer shows it, and serf's tag encoding of its meta.

Below ``events`` (which carries ``Member`` snapshots) and ``state`` (which makes them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

MESHNET_TAG = "mn"
"""Tag key present (value = app protocol version) on every meshnet member."""
MESHNET_TAG_VALUE = "1"
META_MAX_SIZE = 512



def encode_tags(tags: dict[str, str]) -> bytes:
    """serf tag meta: ``0xFF + msgpack(map[string]string)`` (old spec, sorted keys)."""
    meta = b"\xff" + msgpack.packb(dict(sorted(tags.items())), use_bin_type=False)
    if len(meta) > META_MAX_SIZE:
        raise ValueError(f"encoded tags are {len(meta)} bytes, max {META_MAX_SIZE}")
    return meta


def meshnet_meta(tags: dict[str, str] | None = None) -> bytes:
    """Meta for a meshnet agent: the given tags plus ``mn=1``."""
    return encode_tags({**(tags or {}), MESHNET_TAG: MESHNET_TAG_VALUE})


def decode_tags(meta: bytes) -> dict[str, str]:
    """Decode serf tag meta as serf does; never raises.

    Empty meta or meta not starting with 0xFF is ``{"role": meta}``; undecodable
    tag maps give ``{}``.
    """
    if not meta or meta[0] != 0xFF:
        return {"role": meta.decode("utf-8", "replace")}
    try:
        obj = msgpack.unpackb(meta[1:], raw=True, strict_map_key=False)
    except Exception:  # peer garbage in tags
        return {}
    if not isinstance(obj, dict):
        return {}
    out = {}
    for k, v in obj.items():
        if isinstance(k, bytes) and isinstance(v, bytes):
            out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return out


@dataclass(frozen=True, slots=True)
class Member:
    """Public snapshot of a member."""

    name: str
    addr: str
    port: int
    state: str  # "alive", "suspect", "dead", "left"
    incarnation: int
    meta: bytes
    vsn: bytes
    tags: dict[str, str] = field(hash=False, compare=False)

    @property
    def is_meshnet(self) -> bool:
        return MESHNET_TAG in self.tags
