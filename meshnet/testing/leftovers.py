"""What meshnet owns on this machine right now, to prove tests and labs clean up.

``snapshot()`` lists network namespaces, meshnet-named links in the root namespace,
``MESHNET-*`` iptables chains (nft and legacy) and ``meshnet*`` nftables tables.
``python -m meshnet.testing.leftovers snapshot > F`` then ``... compare F`` fails (exit 1)
when anything new is left.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from meshnet import netns
from meshnet.cleanup import OWNED_LINK, iptables_owned

LINK_RE = re.compile(r"^(mn[-_]|vx-|mnv)")


def snapshot() -> dict[str, list[str]]:
    from pyroute2.iproute.linux import IPRoute

    with IPRoute() as ip:
        links = sorted(
            n for n in (link.get_attr("IFLA_IFNAME") for link in ip.get_links())
            if n and (OWNED_LINK.match(n) or LINK_RE.match(n))
        )
    chains = []
    for variant in ("iptables", "iptables-legacy", "ip6tables", "ip6tables-legacy"):
        save = shutil.which(f"{variant}-save")
        if save:
            dump = subprocess.run([save], capture_output=True, text=True).stdout
            for table, names in iptables_owned(dump).items():
                chains += [f"{variant}:{table}/{c}" for c in names]
    nft_tables = []
    nft = shutil.which("nft")
    if nft:
        out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
        nft_tables = [ln for ln in out.splitlines() if "meshnet" in ln]
    return {"netns": netns.list_netns(), "links": links, "chains": sorted(chains),
            "nftables": sorted(nft_tables)}


def new_objects(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: sorted(set(after[k]) - set(before.get(k, []))) for k in after
            if set(after[k]) - set(before.get(k, []))}


def main(argv: list[str]) -> int:
    if argv[:1] == ["snapshot"]:
        print(json.dumps(snapshot()))
        return 0
    if argv[:1] == ["compare"] and len(argv) == 2:
        with open(argv[1]) as f:
            before = json.load(f)
        left = new_objects(before, snapshot())
        if left:
            print(f"LEFT BEHIND by the test run: {json.dumps(left)}", file=sys.stderr)
            return 1
        print("no meshnet objects left behind")
        return 0
    print("usage: python -m meshnet.testing.leftovers snapshot | compare FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
