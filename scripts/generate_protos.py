"""Regenerates app/serving/protos/: the TF Serving API as protobuf modules that need no TensorFlow.

Why: the official ``tensorflow-serving-api`` stubs import TensorFlow's protos from
the ``tensorflow`` package, and importing any of them loads the whole TensorFlow
runtime. The gateway only needs the messages.

Where the definitions come from: the pinned ``tensorflow-serving-api`` and
``tensorflow`` wheels (their versions are read from requirements.txt and checked
against the installed distributions). Neither wheel ships its ``.proto`` files,
but every ``*_pb2.py`` in them embeds the serialized ``FileDescriptorProto`` that
protoc compiled from the release's ``.proto`` file; those bytes are read with
``ast`` (nothing is imported, so TensorFlow is not loaded), gathered into a
``FileDescriptorSet``, and handed to the pinned protoc (grpcio-tools, from
requirements-dev.txt) with ``--descriptor_set_in``. The well-known types
(``google/protobuf/*.proto``) come the same way from the pinned ``protobuf`` runtime's modules.
``--proto-path DIR`` (repeatable) compiles from ``.proto`` sources instead, e.g.
checkouts of tensorflow/serving and tensorflow at the release tag; files not
found there still come from the wheels.

What is rewritten in protoc's output, and nothing else:
  * ``_descriptor_pool.Default()`` becomes ``app.serving.protos.POOL``: the modules
    live in their own descriptor pool, so the official stubs (loaded by the
    embedded backend, the tests and the model zoo) can be imported in the same
    process, in any order, without a "duplicate file name" conflict;
  * imports of generated modules, and the module names given to protobuf's
    builder, get the ``app.serving.protos.`` prefix.

Usage (from the repository root, in the full virtualenv):

    .venv/bin/python scripts/generate_protos.py           # rewrite app/serving/protos/
    .venv/bin/python scripts/generate_protos.py --check   # exit 1 if the committed modules differ
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "app.serving.protos"
OUTPUT = ROOT / PACKAGE.replace(".", "/")
MANIFEST = "MANIFEST.json"

# What the gateway calls and reads; everything they import comes along.
ROOTS = (
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
    "tensorflow_serving/config/model_server_config.proto",
)
# The distributions whose embedded descriptors are the source, by requirements file name.
SOURCE_DISTRIBUTIONS = ("tensorflow-serving-api", "tensorflow", "protobuf")

_SOURCE_LINE = re.compile(r"^# source: (\S+\.proto)$", re.MULTILINE)
_PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;#]+)")


class GenerationError(RuntimeError):
    """The modules cannot be generated as pinned: says what is missing and how to get it."""


def requirement_pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """``name -> version`` for every ``name==version`` line of a requirements file and the files it includes."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith(("-r ", "--requirement ")):
            pins.update(requirement_pins(path.parent / line.split(maxsplit=1)[1]))
            continue
        match = _PIN.match(line)
        if match:
            pins[_canonical(match[1])] = match[2]
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pinned_distributions() -> list[importlib.metadata.Distribution]:
    pins = requirement_pins()
    found = []
    for name in SOURCE_DISTRIBUTIONS:
        want = pins.get(_canonical(name))
        if want is None:
            raise GenerationError(f"requirements.txt pins no version of {name}; add {name}==<version>")
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise GenerationError(
                f"{name} is not installed; install the full profile: pip install -r requirements.txt"
            ) from None
        if dist.version != want:
            raise GenerationError(f"{name} {dist.version} is installed but requirements.txt pins {want}; reinstall it")
        found.append(dist)
    return found


def _embedded_descriptor(path: Path) -> bytes:
    """The serialized FileDescriptorProto a protoc-generated ``*_pb2.py`` passes to ``AddSerializedFile``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "AddSerializedFile" and node.args:
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    raise GenerationError(f"{path}: no AddSerializedFile(b'...') call; is this a protoc-generated module?")


def official_descriptors(dists: Iterable[importlib.metadata.Distribution]) -> dict[str, bytes]:
    """Every ``.proto`` file the distributions' generated modules embed: ``proto file name -> serialized bytes``.

    The module that declares ``# source: X.proto`` is read only when X is asked for (see ``closure``);
    here only each module's header is looked at.
    """
    by_name: dict[str, Path] = {}
    for dist in dists:
        for file in dist.files or ():
            if not file.name.endswith("_pb2.py"):
                continue
            path = Path(dist.locate_file(file))
            match = _SOURCE_LINE.search(_comment_header(path))
            if match:
                by_name.setdefault(match[1], path)
    return _LazyDescriptors(by_name)


def _comment_header(path: Path) -> str:
    """The comment lines a module starts with (a licence may come before protoc's own header)."""
    lines = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                break
            lines.append(line)
    return "".join(lines)


class _LazyDescriptors(dict):
    """``proto file name -> serialized FileDescriptorProto``, reading a module the first time its file is asked for."""

    def __init__(self, paths: Mapping[str, Path]) -> None:
        super().__init__()
        self.paths = dict(paths)

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def __missing__(self, name: str) -> bytes:
        data = _embedded_descriptor(self.paths[name])
        self[name] = data
        return data


def closure(roots: Iterable[str], descriptors: Mapping[str, bytes]) -> list[descriptor_pb2.FileDescriptorProto]:
    """The roots and everything they import, dependencies first."""
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str, wanted_by: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name not in descriptors:
            raise GenerationError(f"{name} (imported by {wanted_by}) is in none of {', '.join(SOURCE_DISTRIBUTIONS)}")
        proto = descriptor_pb2.FileDescriptorProto.FromString(descriptors[name])
        for dependency in proto.dependency:
            visit(dependency, name)
        ordered.append(proto)

    for root in roots:
        visit(root, "the roots")
    return ordered


def _protoc(args: list[str]) -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise GenerationError("grpcio-tools is not installed; pip install -r requirements-dev.txt") from None
    code = protoc.main(["protoc", *args])
    if code != 0:
        raise GenerationError(f"protoc failed (exit {code}) on: {' '.join(args)}")


def _module(proto_name: str, suffix: str = "_pb2") -> str:
    return proto_name.removesuffix(".proto").replace("/", ".") + suffix


def rewrite(source: str, modules: set[str], module: str) -> str:
    """protoc's output for ``module``, registered in ``PACKAGE``'s pool and importing ``PACKAGE``'s modules."""

    def prefixed(match: re.Match[str]) -> str:
        package, name = match["package"], match["name"]
        if f"{package}.{name}" in modules:
            return f"{match['head']}{PACKAGE}.{package} import {name}{match['tail']}"
        return match[0]

    text = re.sub(
        r"^(?P<head>from )(?P<package>[\w.]+) import (?P<name>\w+_pb2)(?P<tail> as \w+)$",
        prefixed,
        source,
        flags=re.MULTILINE,
    )

    def public(match: re.Match[str]) -> str:  # `import public` in a .proto: protoc re-exports with a star import
        return f"from {PACKAGE}.{match[1]} import *" if match[1] in modules else match[0]

    text = re.sub(r"^from ([\w.]+_pb2) import \*$", public, text, flags=re.MULTILINE)
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        f"from {PACKAGE} import POOL as _POOL\n",
    )
    text = text.replace("_descriptor_pool.Default().AddSerializedFile(", "_POOL.AddSerializedFile(")
    text = text.replace(f"(DESCRIPTOR, '{module}', _globals)", f"(DESCRIPTOR, '{PACKAGE}.{module}', _globals)")
    leftovers = [
        line
        for line in text.splitlines()
        if "_descriptor_pool" in line
        or (
            re.match(r"^(from|import) ", line)
            and any(re.search(rf"\b{re.escape(m)}\b", line) and f"{PACKAGE}." not in line for m in modules)
        )
    ]
    if leftovers:
        raise GenerationError(f"{module}: protoc wrote lines this script does not know how to rewrite: {leftovers}")
    header = f"# Rewritten by scripts/generate_protos.py: registered in {PACKAGE}.POOL, not protobuf's default pool.\n"
    return header + text


def generate(out: Path, proto_paths: list[Path]) -> dict:
    """Write the package's generated modules under ``out``; return the manifest that describes them."""
    dists = _pinned_distributions()
    descriptors = official_descriptors(dists)
    files = closure(ROOTS, descriptors)
    with tempfile.TemporaryDirectory(prefix="protos-") as tmp:
        work = Path(tmp)
        descriptor_set = descriptor_pb2.FileDescriptorSet(file=files)
        (work / "set.pb").write_bytes(descriptor_set.SerializeToString())
        raw = work / "out"
        raw.mkdir()
        names = [proto.name for proto in files]
        # protoc reads a file from the --proto_path trees when it is there, else from the descriptor set.
        source_args = [*(f"--proto_path={path}" for path in proto_paths), f"--descriptor_set_in={work / 'set.pb'}"]
        _protoc([*source_args, f"--python_out={raw}", *names])
        services = [proto.name for proto in files if proto.service]
        _protoc([*source_args, f"--grpc_python_out={raw}", *services])

        modules = {_module(name) for name in names}
        if out.exists():
            shutil.rmtree(out)
        for path in sorted(raw.rglob("*.py")):
            relative = path.relative_to(raw)
            module = ".".join(relative.with_suffix("").parts)
            target = out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(path.read_text(encoding="utf-8"), modules, module), encoding="utf-8")
        for folder in sorted({p.parent for p in out.rglob("*.py")}):
            for package_dir in [folder, *folder.parents]:
                if package_dir == out or out not in package_dir.parents:
                    break
                init = package_dir / "__init__.py"
                if not init.exists():
                    init.write_text("# Generated by scripts/generate_protos.py.\n", encoding="utf-8")

    manifest = {
        "generated_by": "scripts/generate_protos.py",
        "package": PACKAGE,
        "roots": list(ROOTS),
        "descriptors_from": {dist.metadata["Name"]: dist.version for dist in dists},
        "protoc": f"grpcio-tools {importlib.metadata.version('grpcio-tools')}",
        # sha256 of each file's FileDescriptorProto as its wheel embeds it: what the modules were made from.
        "files": {proto.name: hashlib.sha256(descriptors[proto.name]).hexdigest() for proto in files},
    }
    from_sources = sorted(name for name in names if any((path / name).is_file() for path in proto_paths))
    if from_sources:
        manifest["compiled_from_proto_sources"] = from_sources
    return manifest


GENERATED_TOP = ("google", "tensorflow", "tensorflow_serving", "xla")


def write_package(target: Path, proto_paths: list[Path]) -> None:
    """Regenerate the generated part of the package at ``target`` (its __init__.py is hand-written, and kept)."""
    with tempfile.TemporaryDirectory(prefix="protos-pkg-") as tmp:
        staging = Path(tmp) / "pkg"
        manifest = generate(staging, proto_paths)
        for top in GENERATED_TOP:
            if (target / top).exists():
                shutil.rmtree(target / top)
        for child in sorted(staging.iterdir()):
            shutil.copytree(child, target / child.name)
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _tree(path: Path) -> dict[str, bytes]:
    tops = [path / top for top in GENERATED_TOP] + [path / MANIFEST]
    found = {}
    for top in tops:
        if top.is_file():
            found[top.relative_to(path).as_posix()] = top.read_bytes()
        elif top.is_dir():
            for file in top.rglob("*.py"):
                found[file.relative_to(path).as_posix()] = file.read_bytes()
    return found


def check(target: Path, proto_paths: list[Path]) -> list[str]:
    """The generated files that differ between ``target`` and a fresh generation (empty: up to date)."""
    with tempfile.TemporaryDirectory(prefix="protos-check-") as tmp:
        fresh = Path(tmp) / "protos"
        fresh.mkdir()
        write_package(fresh, proto_paths)
        ours, theirs = _tree(target), _tree(fresh)
    return sorted(name for name in ours.keys() | theirs.keys() if ours.get(name) != theirs.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the committed modules differ")
    parser.add_argument(
        "--proto-path",
        type=Path,
        action="append",
        default=[],
        help="compile from .proto sources under DIR (repeatable) instead of the wheels' descriptors",
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"the package folder (default: {OUTPUT})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = check(args.output, args.proto_path)
            if stale:
                print(f"{args.output} is out of date; run scripts/generate_protos.py. Differs: {', '.join(stale)}")
                return 1
            print(f"{args.output} is up to date")
            return 0
        write_package(args.output, args.proto_path)
    except GenerationError as exc:
        print(f"generate_protos: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
