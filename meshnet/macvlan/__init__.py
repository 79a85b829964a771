"""macvlan networks: containers directly on each host's LAN (``--driver macvlan``).

The network is cluster-wide like an overlay network (its definition, its addresses: the
same claim-and-verify, only inside ``--ip-range``); what differs is the data plane. Each
local endpoint is a macvlan link on this host's parent interface (``--parent``, this
agent's ``macvlan-parents`` override, or the interface holding the VTEP address), moved
into the container as ``ethN`` with its address, MAC ``02:42:`` + the address, the
parent's MTU, and a default route via the network's gateway (the LAN's router). No
VXLAN, no FDB: the LAN's switches learn the MACs. A parent ``NAME.VLAN`` is an 802.1Q
sub-interface meshnet creates (alias ``meshnet``) while a macvlan network uses it.

Modules: ``state`` (desired state and plan, pure), ``kernel`` (netlink), ``reconciler``.

The macvlan limit: a host cannot reach its own macvlan containers through the parent
(the parent's traffic never enters its macvlan children); other hosts and the router can.
"""
