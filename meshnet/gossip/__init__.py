"""Cluster membership (SWIM, memberlist v0.2.2 wire format) and replicated tables.

Design notes
------------
Modules, innermost first (all sans-IO except ``adapter``):

* ``messages`` / ``codec`` / ``stream``: memberlist message bodies, UDP packet layers
  (compound, LZW compress, CRC, label) and the incremental TCP stream parser. Peer
  garbage raises ``messages.DecodeError`` (a ``PeerError``) and nothing else.
* ``lzw``: Go ``compress/lzw`` (LSB, 8). ``security``: keyring + AES-GCM framing.
* ``config``: ``GossipConfig`` with ``lan()``, ``local()`` (memberlist defaults)
  and ``fast()`` (meshnet's small-cluster preset).
* ``member``: ``Member`` snapshots and serf's tag meta. ``state`` (member table and
  every transition), ``suspicion``, ``awareness``,
  ``broadcast``: SWIM + Lifeguard building blocks.
* ``core``: ``Memberlist``, the node, with its ``probe.Prober`` (UDP failure
  detection) and ``sync.Syncer`` (everything over TCP). Takes bytes and
  ``now``, returns datagrams, stream requests and events. ``events``: what it returns.
* ``adapter``: asyncio UDP endpoint + TCP server + one timer around a core.
* ``tables*`` / ``tablecodec``: the replicated tables layer (separate owner).

Scale: per known member one ``NodeRecord`` (reaped ``GossipToTheDeadTime`` after it
died or left), at most one suspicion timer and one queued broadcast per member.

Interop: a meshnet node is a valid member of a Debian ``serf`` 0.9.4 cluster (Vsn
``[1,5,2,2,5,5]``, serf tag meta, serf leave intent on leave). Application messages
are memberlist user messages whose first byte is not a serf type (meshnet's start
with ``b"m"``); they go point to point, and only to members carrying the ``mn`` tag
(``member.MESHNET_TAG``), so serf agents never receive anything they cannot decode.
"""
