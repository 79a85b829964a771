"""meshnet: a per-host container network agent (VXLAN overlay, gossip, DNS, load balancing)."""

__version__ = "0.1.0"

from meshnet import _pyroute2

_pyroute2.install()
