"""meshnet: a per-host container network agent (VXLAN overlay, gossip, DNS, load balancing)."""

__version__ = "0.1.0"
