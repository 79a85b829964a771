"""Per-container plumbing that needs no namespace: NAT text, resolv.conf files."""

from __future__ import annotations

from meshnet.dns import sandbox


def test_nat_rules_are_dockers_trick_in_our_chains():
    text = sandbox.nat_rules_text(40001, 40002)
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert ":MESHNET-DNS-OUTPUT - [0:0]" in lines and ":MESHNET-DNS-POSTROUTING - [0:0]" in lines
    assert "-A OUTPUT -d 127.0.0.11/32 -j MESHNET-DNS-OUTPUT" in lines
    assert "-A POSTROUTING -d 127.0.0.11/32 -j MESHNET-DNS-POSTROUTING" in lines
    assert ("-A MESHNET-DNS-OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT "
            "--to-destination 127.0.0.11:40001") in lines
    assert ("-A MESHNET-DNS-OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT "
            "--to-destination 127.0.0.11:40002") in lines
    assert ("-A MESHNET-DNS-POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport 40001 "
            "-j SNAT --to-source :53") in lines
    assert not any(x.startswith("-A OUTPUT") for x in
                   sandbox.nat_rules_text(1, 2, with_jumps=False).splitlines())
    assert "-X MESHNET-DNS-OUTPUT" in sandbox.nat_cleanup_text()


def test_resolv_conf_written_and_removed(tmp_path):
    path = sandbox.write_resolv_conf("mn-x", root=str(tmp_path))
    assert open(path).read() == "nameserver 127.0.0.11\noptions ndots:0\n"
    sandbox.write_resolv_conf("mn-x", root=str(tmp_path))  # idempotent
    sandbox.remove_resolv_conf("mn-x", root=str(tmp_path))
    assert not (tmp_path / "mn-x").exists()


def test_host_upstreams_falls_back_to_systemd_list(tmp_path):
    stub = tmp_path / "stub"
    stub.write_text("nameserver 127.0.0.53\n")
    real = tmp_path / "real"
    real.write_text("nameserver 192.0.2.53\n")
    ups = sandbox.read_host_upstreams(paths=(str(stub), str(real)))
    assert [u.host for u in ups] == ["192.0.2.53"]


def _saved(udp: int, tcp: int, jumps: bool = True, extra: str = "") -> str:
    from meshnet.dns.sandbox import JUMP_OUT, JUMP_POST, nat_rules_text

    body = [ln for ln in nat_rules_text(udp, tcp, with_jumps=False).splitlines()
            if ln.startswith((":", "-A"))]
    head = ["*nat", ":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    return "\n".join([*head, *([JUMP_OUT, JUMP_POST] if jumps else []), *body,
                      *([extra] if extra else []), "COMMIT", ""])


def test_nat_repair_text_only_when_needed():
    from meshnet.dns.sandbox import JUMP_OUT, JUMP_POST, nat_repair_text

    assert nat_repair_text(_saved(5000, 5001), 5000, 5001) is None
    moved = nat_repair_text(_saved(5000, 5001), 5002, 5001)
    assert moved is not None and "127.0.0.11:5002" in moved and JUMP_OUT not in moved
    lost = nat_repair_text(_saved(5000, 5001, jumps=False), 5000, 5001)
    assert lost is not None and JUMP_OUT in lost and JUMP_POST in lost
    flushed = nat_repair_text("*nat\nCOMMIT\n", 5000, 5001)
    assert flushed is not None and "--to-destination 127.0.0.11:5000" in flushed
    extra = "-A MESHNET-DNS-OUTPUT -d 127.0.0.11/32 -p udp -j ACCEPT"
    assert nat_repair_text(_saved(5000, 5001, extra=extra), 5000, 5001) is not None
