#!/usr/bin/env bash
# `make demo`: a 3-host lab showing what meshnet does today. Leaves the lab up.
set -euo pipefail
cd "$(dirname "$0")/.."
M=.venv/bin/meshnet
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "fresh start: remove a previous demo lab, if any"
run $M lab down --name demo

step "build a 3-host lab: namespaces h1..h3 on an underlay bridge, one agent each"
run $M lab up --name demo --hosts 3

step "every host runs an agent with its own API socket"
for h in h1 h2 h3; do run $M lab exec --name demo $h -- meshnet status; done

step "cluster membership as h1 sees it"
run $M lab exec --name demo h1 -- meshnet members

step "create an overlay network (VNI chosen for you) and list networks on every host"
run $M lab exec --name demo h1 -- meshnet network create appnet --subnet 10.10.0.0/24
for h in h1 h2 h3; do run $M lab exec --name demo $h -- meshnet network ls; done

step "invalid input is one clear line, exit status 2, and changes nothing"
run $M lab exec --name demo h1 -- meshnet network create bad --subnet 10.0.0.0/33 || echo "(exit $?)"

cat <<'MSG'

The lab "demo" is still up. Explore it:
  .venv/bin/meshnet lab ls
  .venv/bin/meshnet lab exec --name demo h2 -- meshnet status --json
  .venv/bin/meshnet lab exec --name demo h1 -- ip addr        # any command inside a host
  ip netns list                                              # mn-demo-* are the lab's
  tail /run/meshnet/demo/h1.log                              # an agent's structured log
Take it down (removes every namespace, link and process it made):
  .venv/bin/meshnet lab down --name demo
MSG
