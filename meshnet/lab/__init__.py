"""``meshnet lab``: a multi-host cluster built from network namespaces on one box.

Kernel objects per lab ``L`` (all removed by ``meshnet lab down``)::

    netns mn-L-ul            the underlay "switch": bridge br0 (MTU = --underlay-mtu)
      veth hK  <-->  eth0 in netns mn-L-hK   192.0.2.K/24, one per host
    netns mn-L-hK            host K: runs `meshnet agent --node hK`, API /run/meshnet/L/hK.sock
    netns mn-L-hK-*          namespaces the host's agent creates (network sandboxes)
    netns L-NAME             a lab "container" started with `meshnet lab run`

The underlay bridge lives in a namespace of its own, so the root namespace's iptables
(a Docker host's FORWARD DROP, br_netfilter) never sees lab traffic. State lives in
``/run/meshnet/L/`` (lab.json, per-host pid/log/socket, per-container json/log).
"""
