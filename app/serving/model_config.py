"""Reads and validates TF Serving's ``serving_models.config`` (ModelServerConfig text) into dataclasses.

The same file drives TF Serving in a container and the in-process backend, so
base paths under the container prefix (``/models/``) are mapped onto a local
models root. Every problem with the file is a :class:`ModelConfigError` that
names the file, the line where one can be found, and what to change.

Parsing is done by ``google.protobuf.text_format``; the proto it builds carries
no positions, so a small locator walks the raw text once more to find the line
of a ``config { }`` block or of a field inside it for semantic errors.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import text_format

from app.serving.base import is_servable_name
from app.serving.protos.tensorflow_serving.config.model_server_config_pb2 import ModelConfig, ModelServerConfig

__all__ = [
    "ModelConfigError",
    "ServableConfig",
    "ServingConfig",
    "VersionPolicy",
    "load_model_config",
    "parse_model_config",
]

DEFAULT_CONTAINER_PREFIX = "/models/"
MODELS_DIRNAME = "serving_models"
SUPPORTED_PLATFORM = "tensorflow"

_LineOf = Callable[..., "int | None"]
_NO_CUSTOM_CONFIG = "custom_model_config is not supported; list the models in model_config_list { config { ... } }"
_CONFIG_EXAMPLE = (
    'model_config_list { config { name: "my_model" base_path: "/models/my_model" model_platform: "tensorflow" } }'
)


class ModelConfigError(ValueError):
    """A ``serving_models.config`` that cannot be used: where (file, line) and why."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        super().__init__(str(path), line, reason)
        self.path = str(path)
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a servable to load, as TF Serving's ``ServableVersionPolicy``."""

    kind: Literal["latest", "all", "specific"]
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("latest", "all", "specific"):
            raise ValueError(f"version policy kind must be latest, all or specific, got {self.kind!r}")
        if self.kind == "latest" and self.num_versions < 1:
            raise ValueError(f"a latest policy needs num_versions >= 1, got {self.num_versions}")
        if self.kind == "specific" and not self.versions:
            raise ValueError("a specific policy needs at least one version")
        object.__setattr__(self, "versions", tuple(sorted(set(self.versions))))

    def select(self, on_disk: Iterable[int]) -> tuple[int, ...]:
        """The versions among ``on_disk`` to serve, ascending."""
        found = sorted(set(on_disk))
        if self.kind == "latest":
            return tuple(found[-self.num_versions :])
        if self.kind == "all":
            return tuple(found)
        wanted = set(self.versions)
        return tuple(v for v in found if v in wanted)

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ", ".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class ServableConfig:
    """One ``config { }`` block: a model name, where its versions live, and how to pick and label them."""

    name: str
    base_path: Path
    configured_base_path: str
    policy: VersionPolicy
    labels: Mapping[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, types.MappingProxyType):
            object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))


@dataclass(frozen=True)
class ServingConfig:
    """A whole validated ``serving_models.config``."""

    path: Path
    servables: tuple[ServableConfig, ...]
    proto: ModelServerConfig = field(compare=False, hash=False, repr=False)

    def get(self, name: str) -> ServableConfig | None:
        for servable in self.servables:
            if servable.name == name:
                return servable
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.servables)


def load_model_config(
    path: str | Path,
    *,
    models_root: Path | None = None,
    container_prefix: str = DEFAULT_CONTAINER_PREFIX,
    check_paths: bool = True,
) -> ServingConfig:
    """Read, parse and validate the config file at ``path``. Raises :class:`ModelConfigError`."""
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ModelConfigError(
            path,
            line,
            f"the file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8 text",
        ) from None
    return parse_model_config(
        text, path=path, models_root=models_root, container_prefix=container_prefix, check_paths=check_paths
    )


def parse_model_config(
    text: str,
    *,
    path: str | Path = "<string>",
    models_root: Path | None = None,
    container_prefix: str = DEFAULT_CONTAINER_PREFIX,
    check_paths: bool = True,
) -> ServingConfig:
    """Parse and validate config text; ``path`` names it in errors and anchors relative base paths.

    Base paths under ``container_prefix`` map to ``models_root`` (default: ``serving_models/`` next
    to the config file), relative ones are relative to the config file's directory, and other
    absolute ones are used as they are.
    """
    if text.startswith("\ufeff"):
        raise ModelConfigError(
            path,
            1,
            "the file starts with a UTF-8 byte-order mark, which TF Serving cannot parse; save it without one",
        )
    proto = ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        raise _explain_parse_error(path, text, exc) from None

    config_dir = Path(path).absolute().parent
    root = Path(models_root).absolute() if models_root is not None else config_dir / MODELS_DIRNAME
    checker = _Checker(path, text, proto)
    servables = tuple(
        checker.servable(index, config, config_dir, root, container_prefix, check_paths)
        for index, config in enumerate(checker.configs())
    )
    return ServingConfig(path=Path(path), servables=servables, proto=proto)


# -- reading and syntax errors -------------------------------------------------------------------------


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        reason = "the model config file does not exist; check the path"
    except IsADirectoryError:
        reason = "this is a directory; give the path of the serving_models.config file inside it"
    except PermissionError:
        reason = "the model config file cannot be read (permission denied); fix its permissions"
    except OSError as exc:
        reason = f"the model config file cannot be read ({exc.strerror or exc})"
    raise ModelConfigError(path, None, reason)


_POSITION_PREFIX = re.compile(r"^\d+:\d+ : ")
_QUOTED_LINE_PREFIX = re.compile(r"^'.*?': ")
_UNKNOWN_FIELD = re.compile(r'Message type "(?P<type>[\w.]+)" has no field named "(?P<field>[^"]+)"')
_REPEATED_FIELD = re.compile(r'Message type "(?P<type>[\w.]+)" should not have multiple "(?P<field>[^"]+)" fields')
_ONEOF = re.compile(
    r'Field "(?P<field>[^"]+)" is specified along with field "(?P<other>[^"]+)", '
    r'another member of oneof "(?P<oneof>[^"]+)"'
)
_UNKNOWN_ENUM = re.compile(r'Enum type "(?P<type>[\w.]+)" has no value named (?P<value>[^.\s]+)')
_OUT_OF_RANGE = re.compile(r"Value out of range: (?P<value>\S+)")
_UNCLOSED = re.compile(r'^Expected "[}>]"\.?$')


def _explain_parse_error(path: str | Path, text: str, exc: text_format.ParseError) -> ModelConfigError:
    line, column = exc.GetLine(), exc.GetColumn()
    message = _QUOTED_LINE_PREFIX.sub("", _POSITION_PREFIX.sub("", str(exc)), count=1)
    at = f" (column {column})" if column is not None else ""

    if m := _UNKNOWN_FIELD.search(message):
        return ModelConfigError(path, line, _unknown_field_reason(m["type"], m["field"], column))
    if m := _REPEATED_FIELD.search(message):
        block = m["type"].rsplit(".", 1)[-1]
        if m["field"] == "model_config_list":
            reason = (
                "model_config_list appears more than once; put every config { } block in a single model_config_list"
            )
        elif m["field"] == "name" and block == "ModelConfig":
            reason = (
                'a config block sets "name" twice; each model needs its own config { } block, '
                "so close this one before naming the next"
            )
        else:
            reason = f'"{m["field"]}" is set twice in one {block} block; keep only one'
        return ModelConfigError(path, line, reason + at)
    if m := _ONEOF.search(message):
        fields = {m["field"], m["other"]}
        if "custom_model_config" in fields:
            return ModelConfigError(path, line, _NO_CUSTOM_CONFIG)
        reason = (
            f'"{m["other"]}" and "{m["field"]}" cannot both be set: they are alternatives '
            f"(oneof {m['oneof']}); keep one"
        )
        return ModelConfigError(path, line, reason + at)
    if m := _UNKNOWN_ENUM.search(message):
        try:
            enum = ModelServerConfig.DESCRIPTOR.file.pool.FindEnumTypeByName(m["type"])
            allowed = "; allowed values: " + ", ".join(enum.values_by_name)
        except KeyError:
            allowed = ""
        hint = ' (model_type is deprecated: remove it and set model_platform: "tensorflow")'
        hint = hint if m["type"].endswith(".ModelType") else ""
        return ModelConfigError(path, line, f"unknown value {m['value']}{at}{allowed}{hint}")
    if m := _OUT_OF_RANGE.search(message):
        name = _field_before(text, line, column)
        where = f" for {name}" if name else ""
        hint = " (it must be 0 or more)" if m["value"].startswith("-") else ""
        return ModelConfigError(path, line, f"number {m['value']} is out of range{where}{hint}{at}")
    if _UNCLOSED.match(message) and line is not None and line >= _last_content_line(text):
        return ModelConfigError(
            path, line, 'the file ends inside an open block; add the missing "}" (every "{" needs one)'
        )
    if message == 'Expected ":".':
        return ModelConfigError(path, line, f'a ":" is missing{at}; write fields as name: value')
    return ModelConfigError(path, line, f"syntax error{at}: {message.rstrip('.')}")


def _unknown_field_reason(type_name: str, name: str, column: int | None) -> str:
    try:
        descriptor = ModelServerConfig.DESCRIPTOR.file.pool.FindMessageTypeByName(type_name)
        allowed = list(descriptor.fields_by_name)
    except KeyError:
        allowed = []
    block = type_name.rsplit(".", 1)[-1]
    at = f" at column {column}" if column is not None else ""
    reason = f'unknown field "{name}"{at} in a {block} block'
    if name in ModelConfig.DESCRIPTOR.fields_by_name and block != "ModelConfig":
        return reason + f'; "{name}" belongs inside a config {{ }} block, e.g. {_CONFIG_EXAMPLE}'
    if close := difflib.get_close_matches(name, allowed, n=1):
        reason += f'; did you mean "{close[0]}"?'
    if allowed:
        reason += " Fields allowed there: " + ", ".join(allowed)
    return reason


def _field_before(text: str, line: int | None, column: int | None) -> str | None:
    lines = text.split("\n")
    if line is None or not 1 <= line <= len(lines):
        return None
    before = lines[line - 1][: column if column else None]
    names = re.findall(r"([A-Za-z_]\w*)\s*:", before)
    return names[-1] if names else None


def _last_content_line(text: str) -> int:
    last = 1
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.split("#", 1)[0].strip():
            last = number
    return last


# -- semantic checks ----------------------------------------------------------------------------------


class _Checker:
    """Validates the parsed proto one config at a time, finding lines through the locator."""

    def __init__(self, path: str | Path, text: str, proto: ModelServerConfig) -> None:
        self.path = path
        self.proto = proto
        self.root = _locate(text)
        self.seen: dict[str, int | None] = {}
        self.config_nodes: list[_Node] = []
        if self.root is not None:
            for block in self.root.all("model_config_list"):
                self.config_nodes.extend(block.all("config"))
            if len(self.config_nodes) != len(proto.model_config_list.config):
                self.config_nodes = []

    def fail(self, line: int | None, reason: str) -> ModelConfigError:
        return ModelConfigError(self.path, line, reason)

    def configs(self) -> list[ModelConfig]:
        which = self.proto.WhichOneof("config")
        if which == "custom_model_config":
            raise self.fail(
                self._root_line("custom_model_config"),
                _NO_CUSTOM_CONFIG,
            )
        if which is None:
            raise self.fail(None, f"there is no model_config_list; the file should look like: {_CONFIG_EXAMPLE}")
        configs = list(self.proto.model_config_list.config)
        if not configs:
            raise self.fail(
                self._root_line("model_config_list"),
                "model_config_list is empty; add a config { name: ... base_path: ... } block for each model",
            )
        return configs

    def _root_line(self, name: str) -> int | None:
        node = self.root.first(name) if self.root is not None else None
        return node.line if node is not None else None

    def _node(self, index: int) -> _Node | None:
        return self.config_nodes[index] if index < len(self.config_nodes) else None

    def servable(
        self,
        index: int,
        config: ModelConfig,
        config_dir: Path,
        models_root: Path,
        container_prefix: str,
        check_paths: bool,
    ) -> ServableConfig:
        node = self._node(index)
        block_line = node.line if node is not None else None

        def line_of(*names: str) -> int | None:
            found = node.find(*names) if node is not None else None
            return found.line if found is not None else block_line

        name = config.name
        ordinal = f"config block #{index + 1}"
        if not name:
            raise self.fail(block_line, f'{ordinal} has no name; add name: "<model name>"')
        if not is_servable_name(name):
            raise self.fail(
                line_of("name"),
                f"model name {name!r} is not allowed; use only letters, digits, '_', '.' and '-'",
            )
        if name in self.seen:
            first = self.seen[name]
            earlier = f" (first on line {first})" if first is not None else ""
            raise self.fail(
                line_of("name"), f'model name "{name}" is used twice{earlier}; give each model a unique name'
            )
        self.seen[name] = line_of("name")

        model = f'model "{name}"'
        if config.model_type != 0 or (node is not None and node.first("model_type") is not None):
            raise self.fail(
                line_of("model_type"),
                f'{model} sets model_type, which is deprecated; remove it and set model_platform: "tensorflow"',
            )
        if not config.model_platform:
            raise self.fail(block_line, f'{model} has no model_platform; add model_platform: "tensorflow"')
        if config.model_platform != SUPPORTED_PLATFORM:
            raise self.fail(
                line_of("model_platform"),
                f'{model} has model_platform "{config.model_platform}", which is not supported; '
                f'use model_platform: "{SUPPORTED_PLATFORM}"',
            )
        if not config.base_path:
            raise self.fail(
                block_line,
                f'{model} has no base_path; add base_path: "{container_prefix}{name}" (or a local path)',
            )

        policy = self._policy(config, node, model, line_of)
        labels = self._labels(config, node, model, policy, line_of)

        base_path = _map_base_path(config.base_path, config_dir, models_root, container_prefix)
        if check_paths:
            self._check_base_path(config.base_path, base_path, model, line_of("base_path"))
        return ServableConfig(
            name=name,
            base_path=base_path,
            configured_base_path=config.base_path,
            policy=policy,
            labels=labels,
        )

    def _policy(self, config: ModelConfig, node: _Node | None, model: str, line_of: _LineOf) -> VersionPolicy:
        choice = config.model_version_policy.WhichOneof("policy_choice")
        if choice is None:
            return VersionPolicy("latest", 1)
        if choice == "latest":
            return VersionPolicy("latest", max(config.model_version_policy.latest.num_versions, 1))
        if choice == "all":
            return VersionPolicy("all")

        versions = list(config.model_version_policy.specific.versions)
        specific_line = line_of("model_version_policy", "specific")
        if not versions:
            raise self.fail(
                specific_line,
                f"{model} has a specific version policy with no versions; "
                "list them as versions: 1 versions: 2, or use latest {} or all {}",
            )
        version_lines = self._version_lines(node)
        seen: set[int] = set()
        for position, version in enumerate(versions):
            line = version_lines[position] if position < len(version_lines) else specific_line
            if version < 0:
                raise self.fail(line, f"{model} lists version {version}; version numbers are 0 or more")
            if version in seen:
                raise self.fail(line, f"{model} lists version {version} twice in its specific policy; keep one")
            seen.add(version)
        return VersionPolicy("specific", versions=tuple(versions))

    @staticmethod
    def _version_lines(node: _Node | None) -> list[int]:
        specific = node.find("model_version_policy", "specific") if node is not None else None
        if specific is None:
            return []
        return [line for entry in specific.all("versions") for _, line in entry.values]

    def _labels(
        self, config: ModelConfig, node: _Node | None, model: str, policy: VersionPolicy, line_of: _LineOf
    ) -> dict[str, int]:
        label_lines: dict[str, int] = {}
        for entry in node.all("version_labels") if node is not None else []:
            key_node = entry.first("key")
            key = _decode_string(key_node.values) if key_node is not None else ""
            if key is None:
                continue
            line = key_node.line if key_node is not None else entry.line
            if key in label_lines:
                raise self.fail(
                    line,
                    f'{model} defines version label "{key}" twice (first on line {label_lines[key]}); keep one',
                )
            label_lines[key] = line

        labels = dict(config.version_labels)
        for label in sorted(labels):
            version = labels[label]
            line = label_lines.get(label, line_of("version_labels"))
            if not label:
                raise self.fail(
                    line, f'{model} has a version label with an empty key; give it a name, e.g. key: "stable"'
                )
            if not is_servable_name(label):  # any length here; a request names one of at most 64
                raise self.fail(
                    line,
                    f"{model} has version label {label!r}; label names may use only letters, digits, '_', '.' and '-'",
                )
            if version < 0:
                raise self.fail(
                    line, f'{model} maps version label "{label}" to {version}; version numbers are 0 or more'
                )
            if policy.kind == "specific" and version not in policy.versions:
                loaded = ", ".join(map(str, policy.versions))
                raise self.fail(
                    line,
                    f'{model} maps version label "{label}" to version {version}, '
                    f"but its specific policy only loads {loaded}; "
                    f"add {version} to versions or point the label at a loaded version",
                )
        return labels

    def _check_base_path(self, configured: str, mapped: Path, model: str, line: int | None) -> None:
        where = (
            f'base_path "{configured}"'
            if str(mapped) == configured
            else f'base_path "{configured}" (mapped to {mapped})'
        )
        if not mapped.exists():
            raise self.fail(
                line,
                f"{model}: {where} does not exist; create it with the model's version folders in it or fix base_path",
            )
        if not mapped.is_dir():
            raise self.fail(
                line,
                f"{model}: {where} is not a directory; base_path must be the folder holding version dirs",
            )


def _map_base_path(configured: str, config_dir: Path, models_root: Path, container_prefix: str) -> Path:
    prefix = container_prefix.rstrip("/") + "/" if container_prefix else ""
    if prefix and (configured == prefix.rstrip("/") or configured.startswith(prefix)):
        rest = configured[len(prefix) :].lstrip("/")
        return models_root / rest if rest else models_root
    candidate = Path(configured)
    if candidate.is_absolute():
        return candidate
    return config_dir / candidate


# -- locator: finds the lines of fields in text that text_format has already accepted ---------------

_TOKEN = re.compile(
    r"""
    (?P<newline>\n)
    | (?P<space>[ \t\r\f\v]+)
    | (?P<comment>\#[^\n]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<word>[A-Za-z0-9_.+-]+)
    | (?P<punct>.)
    """,
    re.VERBOSE,
)


@dataclass
class _Node:
    name: str
    line: int
    values: list[tuple[str, int]] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    def all(self, name: str) -> Iterator[_Node]:
        return (child for child in self.children if child.name == name)

    def first(self, name: str) -> _Node | None:
        return next(self.all(name), None)

    def find(self, *names: str) -> _Node | None:
        node: _Node | None = self
        for name in names:
            node = node.first(name) if node is not None else None
        return node


def _locate(text: str) -> _Node | None:
    """A tree of field names and lines for ``text``, or None if it cannot be walked."""
    tokens: list[tuple[str, str, int]] = []
    line = 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind in ("string", "word", "punct"):
            tokens.append((kind, match.group(), line))
    root = _Node("", 1)
    try:
        end = _walk(tokens, 0, root)
    except (IndexError, ValueError):
        return None
    return root if end == len(tokens) else None


def _walk(tokens: list[tuple[str, str, int]], i: int, parent: _Node) -> int:
    """Adds the fields from ``tokens[i:]`` to ``parent`` up to a closing bracket; returns its index."""
    while i < len(tokens) and tokens[i][1] not in ("}", ">"):
        kind, name, line = tokens[i]
        if name in (",", ";"):
            i += 1
            continue
        if kind != "word":
            raise ValueError(name)
        i += 1
        if tokens[i][1] == ":":
            i += 1
        if tokens[i][1] == "[":
            i += 1
            while tokens[i][1] != "]":
                if tokens[i][1] == ",":
                    i += 1
                else:
                    i = _value(tokens, i, parent, name, line)
            i += 1
        else:
            i = _value(tokens, i, parent, name, line)
    return i


def _value(tokens: list[tuple[str, str, int]], i: int, parent: _Node, name: str, line: int) -> int:
    node = _Node(name, line)
    parent.children.append(node)
    kind, text, value_line = tokens[i]
    if text in ("{", "<"):
        i = _walk(tokens, i + 1, node)
        if tokens[i][1] != ("}" if text == "{" else ">"):
            raise ValueError(tokens[i][1])
        return i + 1
    if kind == "string":
        while i < len(tokens) and tokens[i][0] == "string":
            node.values.append((tokens[i][1], tokens[i][2]))
            i += 1
        return i
    if text == "-" and tokens[i + 1][0] == "word":
        node.values.append(("-" + tokens[i + 1][1], value_line))
        return i + 2
    if kind != "word":
        raise ValueError(text)
    node.values.append((text, value_line))
    return i + 1


def _decode_string(values: list[tuple[str, int]]) -> str | None:
    if not values:
        return ""
    try:
        return text_format.Tokenizer([" ".join(raw for raw, _ in values)]).ConsumeString()
    except text_format.ParseError:
        return None
