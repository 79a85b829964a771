"""The sans-IO part of commitack: NEWGEN events counted per committing pid; the COMMIT
count of a restore input; malformed event bytes rejected with NetlinkParseError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.ipvs.commitack import NFT_MSG_NEWGEN, commit_count, commits_by, usable
from meshnet.nlread import NetlinkParseError

NEWRULE = (10 << 8) | 6


def attr(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def msg(typ: int, body: bytes) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), typ, 0, 0, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def newgen(pid: int, gen: int = 7, name: bytes = b"iptables-restor\0") -> bytes:
    body = struct.pack("=BBH", 0, 0, 0) + attr(1, struct.pack(">I", gen)) \
        + attr(2, struct.pack(">I", pid)) + attr(3, name)
    return msg(NFT_MSG_NEWGEN, body)


def test_counts_only_newgen_of_the_pid():
    other = msg(NEWRULE, struct.pack("=BBH", 2, 0, 0) + attr(2, struct.pack(">I", 4242)))
    buf = newgen(4242) + other + newgen(99) + newgen(4242, gen=8)
    assert commits_by(buf, 4242) == 2
    assert commits_by(buf, 99) == 1
    assert commits_by(buf, 1) == 0
    assert commits_by(b"", 4242) == 0


def test_malformed_events_raise_parse_errors():
    with pytest.raises(NetlinkParseError):  # nfgenmsg cut short
        commits_by(msg(NFT_MSG_NEWGEN, b"\0\0"), 1)
    with pytest.raises(NetlinkParseError):  # pid attribute of 2 bytes
        commits_by(msg(NFT_MSG_NEWGEN, b"\0\0\0\0" + attr(2, b"\0\1")), 1)
    with pytest.raises(NetlinkParseError):  # message longer than the datagram
        commits_by(newgen(5)[:-4], 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 2**31))
def test_arbitrary_bytes_count_or_raise_parse_errors(data, pid):
    try:
        n = commits_by(data, pid)
        # a count of whole NEWGEN messages: never more than fit in the bytes given
        # (each: 16 B netlink header, 4 B nfgenmsg, an 8 B pid attribute)
        assert isinstance(n, int) and 0 <= n <= len(data) // 28
    except NetlinkParseError:
        pass
    except OSError:  # an NLMSG_ERROR carrying an error code
        pass


def test_commit_count():
    assert commit_count("*nat\n:A - [0:0]\nCOMMIT\n*filter\nCOMMIT\n") == 2
    assert commit_count("*nat\n-A X -j ACCEPT\n") == 0
    assert commit_count("# COMMIT\nCOMMIT  \n") == 1


def test_usable_only_in_the_top_pid_namespace(tmp_path):
    top = tmp_path / "top"
    top.write_text("Name:\tmeshnet\nNSpid:\t4242\n")
    nested = tmp_path / "nested"
    nested.write_text("Name:\tmeshnet\nNSpid:\t4242\t17\n")
    assert usable(str(top)) is None
    assert "nested pid namespace" in usable(str(nested))
    assert "cannot read" in usable(str(tmp_path / "missing"))
