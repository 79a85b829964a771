"""meshnet as Docker's network and IPAM plugin (legacy v1 plugin, one unix socket).

``docker network create -d meshnet --ipam-driver meshnet NAME`` and ``docker run
--network NAME``: dockerd calls the agent over HTTP on
``/run/docker/plugins/meshnet.sock`` (``docker-plugin-socket``), served whenever the
agent runs with ``--runtime docker``.

Modules:

* ``protocol`` (pure): every call's request body parsed and checked into a dataclass,
  the fixed answers of the handshake, the error rule (HTTP 500 + ``{"Err": ...}``; 400 for
  an empty body; 404 for an unknown method).
* ``state`` (pure + one atomic file): what Docker never replays after a restart of
  dockerd or of the agent: NetworkID -> meshnet network, PoolID -> subnet, EndpointID ->
  endpoint key, endpoint -> sandbox key. ``STATE_DIR/docker.json``.
* ``driver``: the calls, over a narrow port of the agent (:class:`driver.DockerHost`;
  tests use a fake).
* ``server``: the front: the plugin HTTP server (keep-alive connections never idle-
  closed: dockerd reuses them without limit and a retry after a dropped connection
  arrives with an empty body).
* ``names``: after the calls, from the Docker Engine API: the Docker name of a network
  created without ``-o meshnet.network`` (never asked inside a call: dockerd may be
  holding a lock), container names and ``--network-alias`` for DNS, and the Docker
  network of every meshnet network on every host (as Weave did).

Design (see docs/docker.md): scope ``local`` (each dockerd has its own NetworkIDs;
meshnet coordinates across hosts), connectivity ``global``; meshnet's IPAM (cluster-wide
unique addresses); the veth is made in CreateEndpoint, its container side left in the
host namespace for Docker to move (the plugin never enters a container's namespace);
no gateway in Join, so Docker's docker_gwbridge gives egress and ``-p``; DNS in upstream
mode: Docker's resolver stays in the container and forwards what it does not know to
169.254.53.53, which meshnet answers in the network's sandbox.
"""
