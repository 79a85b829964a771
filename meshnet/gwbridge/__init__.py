"""Egress: the per-host gateway bridge (docker_gwbridge's job).

Kernel objects, in the host namespace, while at least one local endpoint needs egress:

* bridge ``mn_gwbridge`` holding the gateway address (default 198.18.0.1/16, from the
  RFC 2544 benchmarking range, which neither Docker's bridges (172.17-31/16,
  192.168/20), its overlay pool (10/8) nor CGNAT/Tailscale (100.64/10) use;
  configurable with ``gwbridge-subnet``);
* per container (not per endpoint) with an endpoint on a non-internal network and no
  default route of its own: a veth ``mn-gwXXXXXXXX`` on the bridge, marked as an
  *isolated* bridge port (two containers cannot talk over the gateway bridge, whatever
  br_netfilter does), ``ethN`` in the container with an address from the subnet and the
  default route through the gateway; overlay subnets keep their connected routes;
* iptables: nat ``MESHNET-GW-POSTROUTING`` (masquerade what leaves the bridge for another
  interface) and filter ``MESHNET-GW-FORWARD`` (accept out, accept replies in, drop
  bridge-to-bridge routing), jumped to from POSTROUTING and from the top of FORWARD so
  a Docker host's FORWARD policy DROP does not apply; ``net.ipv4.ip_forward=1``.

Containers whose networks are all ``--internal`` get no gateway interface and cannot
reach outside. Everything is removed with the last endpoint that needs it, by
``meshnet cleanup`` (``mn_*``/``mn-*`` links, ``MESHNET-*`` chains) and by ``lab down``.
"""
