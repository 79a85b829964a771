"""Runtimes: where this host's endpoints come from.

* ``netns`` (the default): plain network namespaces, attached and detached through the
  API (``meshnet attach``); the overlay reconciler detaches an endpoint whose namespace
  disappears.
* ``docker`` (``meshnet agent --runtime docker``): :class:`watcher.DockerWatcher`
  follows the Docker Engine API on ``/var/run/docker.sock`` and attaches every running
  container labelled ``meshnet.network=NET[,NET2]`` (optional ``meshnet.service``,
  ``meshnet.aliases=a,b``, ``meshnet.ip``) by its namespace path ``/proc/PID/ns/net``,
  under the container's name; it detaches it when the container stops, dies or is
  removed, and rewrites Docker's resolv.conf for the container to 127.0.0.11.

Docker runtime rules
--------------------
* Start containers with ``--network none``: meshnet then gives them their only
  interfaces (eth0.., plus the gateway-bridge interface for egress on non-internal
  networks). A container on Docker's default bridge keeps Docker's eth0 and default
  route; meshnet adds its interfaces and no egress gateway (the agent does not add one
  to a namespace that has a default route). User-defined Docker networks are not
  supported: Docker runs its own resolver at 127.0.0.11 there. ``--network host`` and
  ``--network container:X`` are refused (logged, not attached).
* Kernel objects: none of its own; everything is done through ``Agent.attach`` /
  ``Agent.detach``, so per container and network exactly what an API attach creates.
* Ownership: the watcher detaches only endpoints on ``/proc/PID/ns/net`` paths that it
  attached itself, or whose name is a labelled container's name (after an agent restart).
  Endpoints attached through the API are left alone.
* Restarts: the agent restores its endpoints whose namespace still exists; the watcher
  then re-lists the running labelled containers (on start, after every reconnect to
  dockerd and every 30 s) and attaches only what is missing, so none is attached twice
  and none is missed. A stop of the agent leaves every container attached.

Modules: ``docker`` (async Engine API client), ``containers`` (labels -> desired
attachments -> plan; pure), ``watcher`` (the adapter: event follower + sync runner).
"""
