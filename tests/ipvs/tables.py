"""Small cluster tables shared by the ipvs tests."""

from __future__ import annotations

from ipaddress import ip_address

from meshnet.model import (
    Endpoint,
    HealthSpec,
    Network,
    PortSpec,
    PublishedPort,
    Service,
    TaskHealth,
)
from meshnet.vxlan.state import mac_for

NETS = {
    "a": Network(name="a", vni=0x100, subnet="10.0.0.0/24"),
    "b": Network(name="b", vni=0x200, subnet="10.1.0.0/24"),
}
LB_IPS = {"a": ip_address("10.0.0.250"), "b": ip_address("10.1.0.250")}


def svc(name, net="a", vip="10.0.0.100", ports=("80/tcp",), mode="vip", health="none",
        affinity="none"):
    ps = tuple(PortSpec(int(p.split("/")[0]), p.split("/")[1]) for p in ports)
    return Service(name=name, network=net, vip=vip if mode == "vip" else None, mode=mode,
                   ports=ps, health=HealthSpec(kind=health), affinity=affinity)


def task(ip, host, service, net="a", name=None):
    return Endpoint(network=net, ip=ip, mac=mac_for(ip_address(ip)), host=host,
                    name=name or f"t{ip.replace('.', '-')}", service=service,
                    netns=f"c-{ip}" if host else "")


def health(ep, healthy=True, service=None):
    return {ep.key: TaskHealth(network=ep.network, ip=ep.ip, service=service or ep.service,
                               healthy=healthy)}


def pub(published, target, service, proto="tcp", mode="ingress", local_only=False):
    return PublishedPort(published=published, target=target, service=service,
                         protocol=proto, mode=mode, local_only=local_only)
