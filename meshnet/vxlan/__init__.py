"""Overlay networks: the VXLAN data plane, programmed from the cluster tables.

Kernel objects (``P`` is the agent's namespace prefix, ``mn-`` by default, ``mn-L-hK-`` in
a lab; ``VNI`` is six hex digits):

* per network with at least one local endpoint: a sandbox namespace ``P ov-VNI`` holding
  a bridge ``br0`` (the subnet's first address) and a VXLAN device ``mn-vxVNI`` enslaved to
  it: learning off, ARP proxy on, UDP 4789, local = this host's VTEP, MTU = the network's.
  The device is created in the host namespace, so its UDP socket lives on the underlay,
  and then moved into the sandbox (as Docker does).
* per local endpoint: a veth pair, ``veXXXXXXXX`` on the sandbox bridge and ``ethN`` in the
  container with the endpoint's address, deterministic MAC and MTU.
* per remote endpoint on a local network: exactly one permanent FDB entry (MAC -> remote
  VTEP, ``self``) and one permanent neighbour entry (IP -> MAC) on the VXLAN device.
  Nothing floods and nothing is learned.

Ordering: sandboxes, then ports, then FDB, then neighbours; removal in reverse. The
reconciler (``reconciler.py``) recomputes the desired state from the full tables on every
kick (``state.desired``), observes the kernel, and applies only the difference
(``plan.plan``), so an agent restart adopts what is in the kernel without disturbing it.
"""
