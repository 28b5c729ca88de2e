"""The container image built and run without a container engine (tests/deploy/test_image.py).

Containers cannot be started on the machines the tests run on (no cgroup or rlimit rights),
but images build with buildah's chroot isolation and their root filesystem runs under chroot:

- ``debootstrap_base``: a Debian base made with debootstrap from Debian's mirror, committed as
  an image with buildah (the registries' base images are not reachable).
- ``Wheelhouse``: the wheels of a virtual environment's versions (pip download, through this
  machine's pip configuration) served as a package index on 127.0.0.1, with a constraints
  file: the image installs what the environment it is compared with runs.
- ``build_image``: ``buildah bud --isolation chroot --format docker`` (the docker format keeps
  HEALTHCHECK) of the Dockerfile, unchanged, with build arguments only.
- ``ImageRoot``: the image's root filesystem mounted (``buildah mount``), its configuration.
- ``Chrooted``: a command in that root filesystem as a container runs it: its own mount and
  PID namespaces (the command is PID 1), the root read-only, tmpfs at /tmp and the other
  given folders, /proc, /sys read-only, a minimal /dev, the image's user with every
  capability dropped and no new privileges (setpriv), the image's environment and working
  folder. The host's network is shared: the service answers on 127.0.0.1.

Needs root, debootstrap, buildah, unshare and chroot (``.ci/run`` installs them).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.fixtures.service.harness import stop_process
from tests.utils import REPO

TOOLS = ("debootstrap", "buildah", "unshare", "chroot")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK)]


def debian_mirror(suite: str) -> str:
    """DEBIAN_MIRROR, else the Debian mirror apt uses on this machine for ``suite``, else deb.debian.org."""
    if os.environ.get("DEBIAN_MIRROR"):
        return os.environ["DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        # deb822 (.sources): URIs and Suites fields of one stanza; one-line: deb URI SUITE ...
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and suite in suites.group(1).split() and uris.group(1).rstrip("/").endswith("/debian"):
                return uris.group(1)
        for uri, line_suite in re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if line_suite == suite and uri.rstrip("/").endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


class Buildah:
    """buildah on a storage of its own (under ``work``), removed by ``remove_all``."""

    def __init__(self, work: Path):
        self.storage = ["--root", str(work / "storage"), "--runroot", str(work / "run"),
                        "--storage-driver", "overlay"]

    def __call__(self, *args: str, log: Path | None = None, timeout: float = 900) -> str:
        with open(log, "ab") if log else open(os.devnull, "wb") as sink:
            done = subprocess.run(["buildah", *self.storage, *args], stdout=subprocess.PIPE,
                                  stderr=sink if log else subprocess.PIPE, timeout=timeout)
        if done.returncode != 0:
            detail = log.read_text(errors="replace")[-4000:] if log else done.stderr.decode(errors="replace")
            raise RuntimeError(f"buildah {' '.join(args[:2])} failed ({done.returncode}):\n{detail}")
        return done.stdout.decode().strip()

    def has_image(self, tag: str) -> bool:
        return subprocess.run(["buildah", *self.storage, "inspect", "--type", "image", tag],
                              capture_output=True).returncode == 0

    def remove_all(self) -> None:
        for what in (("rm", "--all"), ("rmi", "--all", "--force")):
            subprocess.run(["buildah", *self.storage, *what], capture_output=True, timeout=300)


def debootstrap_base(buildah: Buildah, work: Path, tag: str, suite: str = "bookworm") -> str:
    """A minimal Debian ``suite`` made with debootstrap, committed as image ``tag``; the mirror used."""
    mirror = debian_mirror(suite)
    rootfs = work / f"{suite}-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log = work / "debootstrap.log"
    with open(log, "wb") as out:
        done = subprocess.run(["debootstrap", "--variant=minbase", suite, str(rootfs), mirror], stdout=out,
                              stderr=subprocess.STDOUT, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"debootstrap {suite} from {mirror} failed:\n{log.read_text(errors='replace')[-3000:]}")
    container = buildah("from", "scratch")
    try:
        mount = buildah("mount", container)
        subprocess.run(["cp", "-a", f"{rootfs}/.", mount], check=True)
        buildah("umount", container)
        buildah("commit", "--quiet", container, tag)
    finally:
        buildah("rm", container)
        shutil.rmtree(rootfs, ignore_errors=True)
    return mirror


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


class Wheelhouse:
    """What ``python`` (a virtual environment) runs, as wheels behind a package index on 127.0.0.1:
    ``index_url`` (PEP 503, for pip's --index-url) and ``constraints_url`` (its versions)."""

    def __init__(self, python: Path, folder: Path, requirements: list[str], no_deps: list[str], port: int = 0):
        self.folder = folder
        shutil.rmtree(folder, ignore_errors=True)
        wheels, simple = folder / "wheels", folder / "simple"
        frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                                text=True, check=True).stdout
        self.constraints = [line for line in frozen.splitlines() if "==" in line and " @ " not in line]
        folder.mkdir(parents=True)
        (folder / "constraints.txt").write_text("\n".join(self.constraints) + "\n")
        pip = [str(python), "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(wheels)]
        for args in ([*requirements, "--constraint", str(folder / "constraints.txt")], ["--no-deps", *no_deps]):
            done = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"pip download {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        for wheel in wheels.glob("*.whl"):
            project = simple / re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
            project.mkdir(parents=True, exist_ok=True)
            os.link(wheel, project / wheel.name)
        self.wheels = sorted(wheels.glob("*.whl"))
        # A port of its own (0: any free one); the same one each run keeps buildah's layers reusable.
        self._server = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(_QuietFiles, directory=str(folder)))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self._server.server_port}"
        self.index_url, self.constraints_url = f"{base}/simple", f"{base}/constraints.txt"

    def version_of(self, project: str) -> str:
        """The version the environment pins ``project`` to (without a local label such as +cpu)."""
        line = next(c for c in self.constraints if c.lower().startswith(f"{project.lower()}=="))
        return line.split("==")[1].split("+")[0]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def dockerfile_arg(name: str) -> str:
    """The default of ``ARG name=...`` in the Dockerfile."""
    found = re.search(rf"^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert found, f"the Dockerfile has no ARG {name}=..."
    return found.group(1)


def project_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def build_image(buildah: Buildah, tag: str, build_args: dict[str, str], log: Path, layers: bool = False) -> None:
    """The repository's Dockerfile, as it is, built on this machine (chroot isolation, no daemon);
    ``layers``: reuse the layers of an earlier build that still apply."""
    args = [arg for name, value in build_args.items() for arg in ("--build-arg", f"{name}={value}")]
    buildah("bud", "--isolation", "chroot", "--format", "docker", f"--layers={str(layers).lower()}",
            "--file", str(REPO / "Dockerfile"), "--tag", tag, *args, str(REPO), log=log, timeout=1800)


class ImageRoot:
    """An image's root filesystem, mounted (overlay, whose ``upper`` folder holds whatever was
    written to it), and the configuration a container engine would run it with."""

    def __init__(self, buildah: Buildah, tag: str):
        self.buildah = buildah
        self.config = json.loads(buildah("inspect", "--type", "image", tag))["Docker"]["config"]
        self.container = buildah("from", "--quiet", tag)
        self.path = Path(buildah("mount", self.container))
        self.upper = self.path.parent / "diff"
        self._there = self._upper_files()  # what buildah itself put there
        uid, gid = self.config["User"].split(":")
        self.uid, self.gid = int(uid), int(gid)
        self.env = dict(item.split("=", 1) for item in self.config["Env"])
        # As a container engine does: HOME from the image's passwd entry of its user.
        for line in (self.path / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[2] == str(self.uid):
                self.env.setdefault("HOME", fields[5])

    def size_bytes(self) -> int:
        """The root filesystem's bytes, uncompressed (what ``docker images`` shows)."""
        return int(subprocess.run(["du", "-sb", "--one-file-system", str(self.path)], capture_output=True,
                                  text=True, check=True).stdout.split()[0])

    def written(self) -> list[str]:
        """What was written to the image's own filesystem since it was mounted (its overlay's upper folder)."""
        return sorted(set(self._upper_files()) - set(self._there))

    def _upper_files(self) -> list[str]:
        return [str(p.relative_to(self.upper)) for p in self.upper.rglob("*")]

    def close(self) -> None:
        self.buildah("umount", self.container)
        self.buildah("rm", self.container)


# Run by ``sh -c`` in new mount and PID namespaces; its positional parameters are the command.
_ENTER = r'''
set -eu
R=$IMAGE_ROOT
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t proc proc "$R/proc"
mount --bind /sys "$R/sys"
mount -o remount,bind,ro "$R/sys"
mount -t tmpfs -o mode=0755,size=1m tmpfs "$R/dev"
for node in null zero full random urandom tty; do touch "$R/dev/$node"; mount --bind "/dev/$node" "$R/dev/$node"; done
mkdir "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777,size=256m tmpfs "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
for folder in $TMPFS; do mount -t tmpfs -o "mode=1777,size=1g" tmpfs "$R$folder"; done
if [ -n "${READ_ONLY_MOUNT:-}" ]; then
    mount --bind "${READ_ONLY_MOUNT%%:*}" "$R${READ_ONLY_MOUNT#*:}"
    mount -o remount,bind,ro "$R${READ_ONLY_MOUNT#*:}"
fi
exec chroot "$R" setpriv --reuid="$RUN_UID" --regid="$RUN_GID" --clear-groups --inh-caps=-all \
    --bounding-set=-all --no-new-privs /usr/bin/env -i -C "$WORKDIR" "$@"
'''


class Chrooted:
    """``command`` run in ``root`` as a container would run it (module docstring), with
    ``env`` over the image's environment; ``tmpfs``: the writable folders; ``read_only_mount``:
    (host folder, folder in the image) mounted read-only (weights)."""

    def __init__(self, root: ImageRoot, command: list[str], env: dict[str, str], log_dir: Path, name: str,
                 tmpfs: tuple[str, ...] = ("/tmp",), read_only_mount: tuple[Path, str] | None = None):
        self.root = root
        self.stdout_path, self.stderr_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        variables = [f"{k}={v}" for k, v in (root.env | env).items()]
        setup = {"IMAGE_ROOT": str(root.path), "TMPFS": " ".join(tmpfs), "RUN_UID": str(root.uid),
                 "RUN_GID": str(root.gid), "WORKDIR": root.config.get("WorkingDir") or "/",
                 "READ_ONLY_MOUNT": f"{read_only_mount[0]}:{read_only_mount[1]}" if read_only_mount else "",
                 "PATH": os.environ["PATH"]}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                                             "--kill-child", "sh", "-c", _ENTER, "enter", *variables, *command],
                                            env=setup, stdout=out, stderr=err)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def pid(self, timeout: float = 10) -> int:
        """The host's id of the command: unshare's one child, PID 1 of its namespace (``sh``,
        ``chroot``, ``setpriv`` and ``env`` each exec the next, so it keeps that id)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pids = children.read_text().split() if children.exists() else []
            if pids:
                return int(pids[0])
            time.sleep(0.05)
        raise TimeoutError(f"the chrooted command did not start:\n{self.stderr[-2000:]}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid(), sig)

    def wait(self, timeout: float) -> int:
        """The command's exit status (unshare passes it on)."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the command (PID 1 in its namespace), as a container engine's stop."""
        if self.process.poll() is None:
            try:
                self.signal(signal.SIGTERM)
            except (TimeoutError, ProcessLookupError):
                pass
        return stop_process(self.process, signal.SIGTERM, timeout)
