#!/usr/bin/env bash
# `make demo`: a 3-host lab showing meshnet end to end. Leaves the lab up.
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/meshnet   # relative: the checkout path may contain spaces
PY=$PWD/.venv/bin/python
L=demo
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
on() { local h=$1; shift; run $M lab exec --name $L "$h" -- "$@"; }
inside() { local c=$1; shift; run ip netns exec "$L-$c" "$@"; }

step "fresh start: remove a previous demo lab, if any"
run $M lab down --name $L

step "a 3-host lab: namespaces h1..h3 on an underlay bridge, one agent and one dockerd each"
run $M lab up --name $L --hosts 3 --docker
on h1 meshnet members

step "an overlay network, created on h1, known everywhere through gossip"
on h1 meshnet network create appnet --subnet 10.10.0.0/24
sleep 0.5
on h3 meshnet network ls

step "a load-balanced service with a health check, and three tasks on three hosts"
on h1 meshnet service create web --network appnet --port 80 --health tcp --health-interval 0.5
for i in 1 2 3; do
  run $M lab run --name $L h$i web$i --network appnet --service web -- \
      "$PY" -m meshnet.testing.traffic http 80 "hello from web$i (you are {peer})"
done
run $M lab run --name $L h2 client --network appnet --alias shell -- sleep 36000
on h1 meshnet endpoint ls

step "inside a container: names from the embedded DNS at 127.0.0.11"
inside client cat /etc/resolv.conf
inside client dig +short web1
inside client dig +short web          # the service VIP
inside client dig +short tasks.web    # the healthy tasks
inside client dig +short example.com  # forwarded to the lab's outside resolver

step "across hosts over VXLAN, and through the service VIP (load-balanced)"
inside client ping -c 2 -W 2 web3
for i in 1 2 3 4 5 6; do inside client "$PY" -m meshnet.testing.traffic get http://web/ 2; done

step "the routing mesh: publish once, every host answers (h2 via the overlay)"
on h1 meshnet publish 8080:80
sleep 2  # every host programs the mesh (its sandbox, LB address, rules)
OUT=$("$PY" -c "from meshnet.lab.lab import Lab; print(Lab.load('$L').add_bare_host('h9'))")
for h in 1 2 3; do run ip netns exec "$OUT" "$PY" -m meshnet.testing.traffic get http://192.0.2.$h:8080/ 2; done

step "egress: containers reach the outside through their host's gateway bridge (NAT)"
inside client ping -c 1 -W 2 192.0.2.253

step "meshnet trace: a real probe, captured hop by hop"
on h2 meshnet trace client web:80 || true

step "Docker: meshnet is each dockerd's network and IPAM plugin"
on h1 docker network create -d meshnet --ipam-driver meshnet --subnet 10.20.0.0/24 dockernet
on h1 docker run -d --name db --network dockernet meshnet/busybox sleep 3600
on h3 docker run --rm --network dockernet meshnet/busybox ping -c 2 db   # h3 -> h1, by name
on h2 docker network ls --filter driver=meshnet   # appnet too: made on every host for meshnet's networks
on h3 docker run --rm --network appnet meshnet/busybox sh -c \
   'ping -c 1 web1 && printf "GET / HTTP/1.0\r\n\r\n" | nc -w 2 web 80 | tail -1'

step "status of an agent"
on h2 meshnet status

cat <<MSG

The lab "$L" is still up. Explore it:
  .venv/bin/meshnet lab ls
  .venv/bin/meshnet lab exec --name $L h2 -- meshnet status --json
  .venv/bin/meshnet lab exec --name $L h1 -- meshnet trace web1 web3:80
  ip netns exec $L-client dig tasks.web                     # inside a container
  .venv/bin/meshnet lab exec --name $L h2 -- docker ps       # DOCKER_HOST is h2's dockerd
  ip netns list                                              # mn-$L-* are the lab's
  tail /run/meshnet/$L/h1.log                                # an agent's structured log
Take it down (removes every namespace, link and process it made):
  .venv/bin/meshnet lab down --name $L
MSG
