"""One dockerd per lab host (``meshnet lab up --docker``), wired to that host's agent.

Each dockerd runs in its host's network namespace (entered with ``nsenter --net``, not
``ip netns exec``, which remounts /sys and leaves dockerd without cgroups) and in a
mount namespace of its own (``unshare -m``, propagation slave) in which a tmpfs covers
``/run/docker/plugins`` and ``meshnet.sock`` there points at *this* host's agent's plugin
socket: dockerd finds plugins by that fixed path, and the lab's dockerds share one
machine. Everything else is per host under the lab's state directory:

* ``hK-docker.sock`` (the Engine API; ``meshnet lab exec`` sets ``DOCKER_HOST``),
  ``hK-plugin.sock`` (the agent's plugin socket), ``hK-docker/`` (data root, exec root,
  pid file, log), containerd namespace ``meshnet-LAB-hK``;
* ``--dns 169.254.53.53``: Docker's resolver forwards to meshnet's (docs/docker.md);
  ``--init``: containers stop at once on SIGTERM;
* the image ``meshnet/busybox`` (busybox-static, ``docker import``ed), so no registry
  is needed.

``lab down`` stops every dockerd first (with SIGTERM: dockerd stops its containers and
tells the still-running agent, Leave/DeleteEndpoint), then the agents.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from meshnet import netns
from meshnet.api.client import UnixConnection
from meshnet.dns.programmer import DOCKER_UPSTREAM
from meshnet.errors import UserError
from meshnet.lab.topology import LabSpec

IMAGE = "meshnet/busybox"
PLUGINS_DIR = "/run/docker/plugins"


def docker_socket(spec: LabSpec, host: str) -> str:
    return str(spec.state_dir / f"{host}-docker.sock")


def plugin_socket(spec: LabSpec, host: str) -> str:
    return str(spec.state_dir / f"{host}-plugin.sock")


def root(spec: LabSpec, host: str) -> Path:
    return spec.state_dir / f"{host}-docker"


def agent_args(spec: LabSpec, host: str) -> list[str]:
    return ["--runtime", "docker", "--docker-socket", docker_socket(spec, host),
            "--docker-plugin-socket", plugin_socket(spec, host)]


def holder_command(spec: LabSpec, host: str) -> list[str]:
    """A process that keeps the host's mount namespace (with its /run/docker/plugins)
    alive, so a restarted dockerd enters the same one as its containers' mounts."""
    script = (f"mkdir -p {PLUGINS_DIR} && mount -t tmpfs -o mode=0755 meshnet-lab {PLUGINS_DIR}"
              f" && ln -s {plugin_socket(spec, host)} {PLUGINS_DIR}/meshnet.sock"
              " && exec sleep infinity")
    return ["nsenter", f"--net={netns.path_of(spec.host_ns(host))}", "--",
            "unshare", "-m", "--propagation", "slave", "--", "sh", "-c", script]


def containerd_command(spec: LabSpec, host: str, holder: int) -> list[str]:
    """containerd of its own, not dockerd's child: as on a Debian host (containerd.service),
    a dockerd that crashes leaves containerd and the containers running."""
    r = root(spec, host)
    return ["nsenter", f"--mount=/proc/{holder}/ns/mnt",
            f"--net={netns.path_of(spec.host_ns(host))}", "--",
            "containerd", "--config", str(r / "containerd.toml"),
            "--address", str(r / "containerd.sock"),
            "--root", str(r / "containerd-root"), "--state", str(r / "containerd-state"),
            "--log-level", "warn"]


def dockerd_command(spec: LabSpec, host: str, holder: int) -> list[str]:
    r = root(spec, host)
    return ["nsenter", f"--mount=/proc/{holder}/ns/mnt",
            f"--net={netns.path_of(spec.host_ns(host))}", "--",
            "dockerd", "--containerd", str(r / "containerd.sock"),
            "--data-root", str(r / "data"), "--exec-root", str(r / "exec"),
            "--pidfile", str(r / "dockerd.pid"), "-H", f"unix://{docker_socket(spec, host)}",
            "--containerd-namespace", f"meshnet-{spec.name}-{host}",
            "--containerd-plugins-namespace", f"meshnet-{spec.name}-{host}-plugins",
            "--dns", DOCKER_UPSTREAM, "--init", "--log-level", "warn"]


def ping(sock: str, timeout: float = 2.0) -> bool:
    try:
        conn = UnixConnection(sock, timeout)
        conn.request("GET", "/_ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def start(spec: LabSpec, host: str) -> int:
    """Start the host's dockerd (and, the first time, its mount namespace holder)."""
    if not shutil.which("dockerd") or not shutil.which("docker"):
        raise UserError("--docker needs dockerd and the docker CLI (apt-get install docker.io)")
    r = root(spec, host)
    r.mkdir(parents=True, exist_ok=True)
    holder = _pid(r / "holder.pid")
    if holder is None:
        proc = subprocess.Popen(holder_command(spec, host), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        holder = proc.pid
        (r / "holder.pid").write_text(str(holder))
        deadline = time.monotonic() + 10
        while not _has_plugin_link(holder, spec, host):
            if time.monotonic() > deadline or not netns._alive(holder):
                raise UserError(f"cannot make a mount namespace for dockerd on {host}")
            time.sleep(0.02)
    if _pid(r / "containerd.pid") is None:
        (r / "containerd.toml").write_text("version = 2\n")  # not the machine's config
        logc = open(r / "containerd.log", "ab")
        proc = subprocess.Popen(containerd_command(spec, host, holder), stdin=subprocess.DEVNULL,
                                stdout=logc, stderr=logc, start_new_session=True)
        logc.close()
        (r / "containerd.pid").write_text(str(proc.pid))
    if pid(spec, host) is not None:
        raise UserError(f"dockerd on {host} is running")
    Path(docker_socket(spec, host)).unlink(missing_ok=True)
    (r / "dockerd.pid").unlink(missing_ok=True)  # left by a killed dockerd
    logf = open(r / "dockerd.log", "ab")
    proc = subprocess.Popen(dockerd_command(spec, host, holder), stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=logf, start_new_session=True)
    logf.close()
    (r / "launcher.pid").write_text(str(proc.pid))
    return proc.pid


def _has_plugin_link(holder: int, spec: LabSpec, host: str) -> bool:
    try:
        return os.readlink(f"/proc/{holder}/root{PLUGINS_DIR}/meshnet.sock") == \
            plugin_socket(spec, host)
    except OSError:
        return False


def _pid(path: Path) -> int | None:
    try:
        p = int(path.read_text())
    except (OSError, ValueError):
        return None
    return p if netns._alive(p) else None


def wait(spec: LabSpec, host: str, timeout: float = 60.0) -> None:
    sock = docker_socket(spec, host)
    deadline = time.monotonic() + timeout
    while not ping(sock):
        if time.monotonic() > deadline or pid(spec, host) is None:
            raise UserError(f"dockerd on {host} did not come up: {log_tail(spec, host)}")
        time.sleep(0.1)


def pid(spec: LabSpec, host: str) -> int | None:
    """dockerd's pid (nsenter execs into it), if it is alive."""
    return _pid(root(spec, host) / "launcher.pid")


def log_tail(spec: LabSpec, host: str) -> str:
    try:
        lines = (root(spec, host) / "dockerd.log").read_text().strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def docker(spec: LabSpec, host: str, *args: str, input: bytes | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["docker", "-H", f"unix://{docker_socket(spec, host)}", *args],
                          input=input, capture_output=True, timeout=timeout)


def image_tar(dest: Path) -> Path:
    """A root filesystem of busybox-static, as a tar for ``docker import`` (built once)."""
    tar = dest / "busybox-rootfs.tar"
    if tar.exists():
        return tar
    bb = shutil.which("busybox")
    if bb is None:
        raise UserError("--docker needs busybox (apt-get install busybox-static)")
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True).stdout.split()
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp)
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root"):
            (rootfs / d).mkdir()
        shutil.copy(bb, rootfs / "bin" / "busybox")
        for a in applets:
            if a != "busybox":
                (rootfs / "bin" / a).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (rootfs / "etc" / "group").write_text("root:x:0:\n")
        part = tar.with_suffix(".part")
        with tarfile.open(part, "w") as t:
            t.add(rootfs, arcname=".")
        part.replace(tar)
    return tar


def import_image(spec: LabSpec, host: str) -> None:
    tar = image_tar(spec.state_dir)
    r = docker(spec, host, "import", "--change", 'CMD ["sh"]', "--change", "ENV PATH=/bin",
               "-", IMAGE, input=tar.read_bytes())
    if r.returncode != 0:
        raise UserError(f"docker import on {host}: {r.stderr.decode().strip()}")


def kill(spec: LabSpec, host: str) -> bool:
    """SIGKILL dockerd alone (a crash: containerd and the containers keep running)."""
    p = pid(spec, host)
    if p is None:
        return False
    os.kill(p, signal.SIGKILL)
    while netns._alive(p):
        time.sleep(0.02)
    return True


def stop(spec: LabSpec, host: str, grace: float = 30.0, everything: bool = True) -> None:
    """SIGTERM (dockerd stops its containers, telling the agent); with ``everything``
    also what is left of its mount namespace (containerd, shims, the holder)."""
    p = pid(spec, host)
    if p is not None:
        os.kill(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while netns._alive(p) and time.monotonic() < deadline:
            time.sleep(0.1)
    if not everything:
        netns.kill_pids([p] if p else [], grace=3.0)
        return
    holder = _pid(root(spec, host) / "holder.pid")
    leftovers = _in_mount_ns_of(spec, host) + ([holder] if holder else [])
    containerd = _pid(root(spec, host) / "containerd.pid")
    leftovers += [containerd] if containerd else []
    netns.kill_pids(([p] if p else []) + leftovers, grace=3.0)


def _in_mount_ns_of(spec: LabSpec, host: str) -> list[int]:
    """Processes whose command line names this host's docker root (containerd, shims)."""
    mark = str(root(spec, host)).encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if mark in f.read():
                    out.append(int(d))
        except OSError:
            continue
    return out
