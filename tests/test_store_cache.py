"""The store decodes an unchanged row once: reconcilers read whole tables on every run."""

from __future__ import annotations

import ipaddress

from meshnet.model import Endpoint
from meshnet.store import LocalTables, Store
from meshnet.vxlan.state import mac_for


def _ep(i: int, host: str = "h1") -> Endpoint:
    ip = ipaddress.ip_address("10.0.0.0") + i + 2
    return Endpoint(network="app", ip=ip, mac=mac_for(ip), host=host, name=f"e{i}",
                    netns=f"n{i}")


def test_unchanged_rows_are_not_decoded_again():
    s = Store(LocalTables("h1"))
    for i in range(3):
        s.put("endpoints", _ep(i).key, _ep(i), 0)
    first = s.endpoints()
    again = s.endpoints()
    assert first == again
    assert all(first[k] is again[k] for k in first)  # the same objects: no decode
    assert s.get("endpoints", _ep(1).key) is first[_ep(1).key]
    # a changed row is decoded anew, the others are kept; a deleted one leaves the cache
    s.put("endpoints", _ep(1).key, _ep(1, host="h2"), 1)
    s.delete("endpoints", _ep(2).key, 1)
    third = s.endpoints()
    assert third[_ep(1).key].host == "h2" and third[_ep(0).key] is first[_ep(0).key]
    assert _ep(2).key not in third and _ep(2).key not in s._decoded["endpoints"]
    assert s.get("endpoints", _ep(2).key) is None


def test_undecodable_rows_counted_and_skipped_every_time():
    backend = LocalTables("h1")
    s = Store(backend)
    s.put("endpoints", _ep(0).key, _ep(0), 0)
    backend.put("endpoints", "bad", b"{not json", 0)
    assert list(s.endpoints()) == [_ep(0).key]
    assert list(s.endpoints()) == [_ep(0).key]
    assert s.undecodable == 2
