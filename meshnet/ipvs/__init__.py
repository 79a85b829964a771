"""Load balancing: service VIPs, the routing mesh (published ports) and task health
checks, with three interchangeable backends. (The package keeps the name ``ipvs`` from
the project's layout; IPVS is only one of its backends.)

Where each part is:

==================  ==============================================================
backend             modules
==================  ==============================================================
iptables (default)  ``rules`` (LbState -> iptables chains, pure), ``iptables`` (plan,
                    observe, apply via one ``iptables-restore --noflush`` per
                    namespace; conntrack helper), ``commitack`` (restore, then wait
                    for the kernel's commit)
nftables            ``nftrules`` (LbState -> nftables maps, pure), ``nftnl`` (map
                    elements as netlink batches, pure), ``nftables`` (apply:
                    ``nft -f`` and the element batches): a backend change is a few
                    map elements, whatever the size of the table
IPVS                ``ipvs`` (fwmark IPVS services over generic netlink;
                    ``ipvs_available()``: this kernel may have none)
the interface       ``backend`` (``LbBackend``, ``choose_backend`` for ``--lb``)
==================  ==============================================================

Shared by all backends: ``state`` (the desired state as frozen data), ``planner`` (tables
-> LbState, pure), ``incremental`` (the same kept current one changed row at a time: what
the agent runs), ``reconciler`` (the sync loop body), ``netobjects`` (the kernel objects
around the rules: VIP addresses, ingress veths, routes), ``reserve`` (published-port
reservations), ``health`` / ``health_driver`` (sans-IO checker core and asyncio driver),
and ``agentlb`` (the service inside the agent, given a ``HostPort``).

Packet path, east-west (container -> VIP:port, iptables backend)
---------------------------------------------------------------
1. The VIP is a /32 on the sandbox bridge ``br0`` (sandbox ``P ov-VNI``). A container ARPs
   for it on its subnet; the sandbox answers (the address is local there), so the frame is
   addressed to br0's MAC and enters the sandbox's IP stack.
2. With ``net.bridge.bridge-nf-call-iptables=1`` in the sandbox, nat ``PREROUTING`` runs
   for it: ``MESHNET-SERVICES`` -> ``MESHNET-SVC-H`` DNATs to a healthy task IP:port.
   The route to the task is br0 again, so br_netfilter bridges it ("bridged DNAT"): to the
   task's veth if local, or to the VXLAN device (static FDB/neighbour of the overlay) if
   remote. No SNAT: the task sees the client's own address (Docker SNATs here).
3. The reply goes straight to the client's MAC. It crosses this host's sandbox bridge (the
   client is here), br_netfilter runs it through conntrack, which restores VIP:port as its
   source. Replies from remote tasks arrive over VXLAN and cross the same bridge.
4. Hairpin: a task that picks itself would get its own address as source and drop the
   packet; ``MESHNET-HAIRPIN`` masquerades exactly that case (source == destination after
   DNAT) to the bridge address, and its bridge port needs ``hairpin on``.
5. A VIP with no healthy task has no DNAT rule: the packet is delivered to the sandbox,
   which owns the VIP and refuses it (TCP RST / ICMP port unreachable) at once.

Packet path, published port (``--mode ingress``, every host)
-----------------------------------------------------------
1. Host namespace: nat ``PREROUTING``/``OUTPUT`` (dst-type LOCAL) -> ``MESHNET-INGRESS``
   DNATs ``:PUBLISHED`` to ``VIP:TARGET``; a host route ``VIP/32 via 169.254.77.2 dev
   mn-ingVNI onlink`` sends it into the network's sandbox over the ingress veth.
   Localhost clients are masqueraded to 169.254.77.1 (needs ``route_localnet=1`` on the
   veth). filter ``FORWARD`` accepts it (``MESHNET-FORWARD``); filter ``INPUT`` refuses a
   published port nothing DNATed, so the reservation socket never serves.
2. Sandbox: the same ``MESHNET-SVC-H`` chain marks traffic from ``ing0`` and DNATs it to a
   task anywhere; ``MESHNET-POSTROUTING`` SNATs it to this host's **LB address** on the
   network, so a remote task replies over the overlay back to this sandbox, which undoes
   both NATs and routes the reply out ``ing0`` (default route via 169.254.77.1).
   Without an LB address it masquerades to br0's address: only local tasks can answer.
``--local-only`` and ``--mode host``: the host DNATs straight to a *local* task
(``MESHNET-PUB-H``, route ``TASK/32 via 169.254.77.2 dev mn-ingVNI onlink``), no SNAT, so
the task sees the client. This needs the task's reply to come back through the host
namespace: its default route via mn_gwbridge (as Docker's host-mode ports) or via the
sandbox (``default via`` the gateway, with the sandbox's default route out ``ing0``).
A host with no usable local task refuses the port (filter REJECT), and host mode does not
bind where the service has no task at all.

Kernel objects this package needs from others (not created here yet)
-------------------------------------------------------------------
Per sandbox with load balancing (``LbState.sandboxes``): sysctls ``net.ipv4.ip_forward=1``,
``net.bridge.bridge-nf-call-iptables=1``, ``net.ipv4.conf.{all,br0}.send_redirects=0``;
every ``SandboxLb.vips`` as /32 on br0; ``hairpin on`` for ``SandboxLb.hairpin_ports``
(simplest: for every container port the overlay creates). When ``lb_ip`` is set: it as a
/32 on br0, ``bridge fdb add <mac_for(lb_ip)> dev br0 self local``, and the LB address
must be an endpoint in the endpoints table (host = this node, no netns) so every other host
installs its FDB/neighbour entries. Mesh-published networks need their sandbox on *every*
host (``SandboxLb.ingress``), even without a local task.
Per ``HostLb.ingress_links`` VNI: a veth ``mn-ingVNI`` (host) / ``ing0`` (sandbox),
169.254.77.1/32 and 169.254.77.2/32, ``route_localnet=1`` on the host end, sandbox route
``default via 169.254.77.1 dev ing0 onlink``; host routes ``HostLb.routes``;
``ip_forward=1`` in the host namespace. A reservation socket per ``HostLb.reserved``.

Ownership: chains ``MESHNET-*`` in every namespace meshnet programs, IPVS services with
marks in ``LbConfig.fwmark_base + [0, fwmark_count)``, the mark bit ``LbConfig.masq_mark``.
Scale: per sandbox one chain and n+2 rules per virtual service with n healthy backends,
plus one dispatch rule; per host one rule per published port and one chain per local-only
port. A one-backend change rewrites one chain in one namespace, and the Python work
for it (changed row -> planner -> render -> plan) touches only that service (~1 ms at
1,000 services; unchanged services are passed along as the same objects).
"""
