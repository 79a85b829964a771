"""Packet-walk debugging: ``meshnet trace SRC DST[:PORT][/tcp|/udp] [--from HOST]``.

One real probe walks the hops of ``docs/packet-walk.md`` while every hop is captured in
its own namespace, and the result is compared with what the tables say should happen.

Modules
    ``model`` (request, "traces" table entry, capture order and summary), ``frames``
    (Ethernet/IP/TCP/UDP/VXLAN parsing, BPF filter text), ``path`` (expected path from
    the tables), ``diagnose`` (hops and verdict), ``render`` (text report) are pure.
    ``capture`` (AF_PACKET sockets opened inside namespaces), ``probe`` (DNS query,
    probe socket, conntrack, FDB/neighbour reads) do the I/O; ``service`` is the agent
    adapter (API route, origin flow, capture service for peers).

Coordination (no RPC between agents): the node-scoped "traces" table. The origin puts
``ID/capture/HOST`` (a :class:`~meshnet.trace.model.CaptureOrder`, < 1 KiB) for each
remote host with a candidate backend; that host arms its captures, puts
``ID/result/HOST`` = {"state": "armed"}, then {"state": "done", "seen": [...]} when
told to stop (the order re-put with ``stop``) or at the deadline. The origin deletes
its orders when it has the results; each host deletes its result when the order goes
(or ``RESULT_TTL`` after the deadline if the origin died; gossip removes a dead
origin's orders anyway). Per trace: one order and one result per remote host.

Kernel objects: none are created. Per trace, per capture point one AF_PACKET socket
with a kernel BPF filter on the probe's marker port (attached before bind), closed at
the end; one probe socket inside SRC (or the host namespace for ``--from``) bound to
a random free port in 40000-59999; one conntrack entry per namespace the probe
crossed, deleted afterwards (``conntrack -D --sport MARKER``). TCP probes are a single
SYN, closed with a reset once answered; UDP probes one datagram ``meshnet-trace ID``.
Captures stop by themselves (deadline) and keep at most 200 frames per point.

Capture points: origin ``src`` (SRC's interface) or ``ingress`` (``mn-ingVNI``),
``sandbox`` (the network's VXLAN device: inner frames after LB), ``underlay`` (the
interface holding the VTEP: outer VXLAN); destination ``underlay``, ``sandbox`` and
``task`` (the task's interface in its namespace). A local backend has no VXLAN hop.
"""
