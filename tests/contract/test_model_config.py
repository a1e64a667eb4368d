"""Tests for app.serving.model_config: parsing, base path mapping, version policies and bad-file errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.serving.model_config import (
    ModelConfigError,
    ServableConfig,
    ServingConfig,
    VersionPolicy,
    load_model_config,
    parse_model_config,
)
from app.serving.protos.tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

VALID = """\
# Models served by the gateway.
model_config_list {
  config {
    name: "face_detection"
    base_path: "/models/face_detection"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 1 }
  }
  config {
    name: "latent_search"   # every version on disk
    base_path: "/models/latent_search"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "translation"
    base_path: "/models/translation"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 1 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 3 }
  }
  config {
    name: "defaults"
    base_path: "/models/defaults"
    model_platform: "tensorflow"
  }
}
"""

NAMES = ("face_detection", "latent_search", "translation", "defaults")


def write_config(directory: Path, text: str, *, models: tuple[str, ...] = NAMES) -> Path:
    for name in models:
        (directory / "serving_models" / name).mkdir(parents=True, exist_ok=True)
    path = directory / "serving_models.config"
    path.write_text(text, encoding="utf-8")
    return path


def block(body: str, name: str = "m") -> str:
    """One model_config_list with one config whose fields are ``body`` (one field a line)."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "/models/{name}"\n'
        '    model_platform: "tensorflow"\n' + textwrap.indent(body, "    ") + "  }\n}\n"
    )


# -- the valid example ---------------------------------------------------------------------------------


def test_valid_config_round_trips(tmp_path: Path) -> None:
    path = write_config(tmp_path, VALID)
    config = load_model_config(path)

    assert isinstance(config, ServingConfig)
    assert config.path == path
    assert config.names == NAMES
    assert isinstance(config.proto, ModelServerConfig)
    assert [c.name for c in config.proto.model_config_list.config] == list(NAMES)

    face = config.get("face_detection")
    assert face == ServableConfig(
        name="face_detection",
        base_path=tmp_path / "serving_models" / "face_detection",
        configured_base_path="/models/face_detection",
        policy=VersionPolicy("latest", num_versions=2),
        labels={"stable": 1},
    )
    assert config.get("latent_search").policy == VersionPolicy("all")
    translation = config.get("translation")
    assert translation.policy == VersionPolicy("specific", versions=(1, 3))
    assert translation.policy.versions == (1, 3)
    assert dict(translation.labels) == {"stable": 1, "canary": 3}
    assert config.get("defaults").policy == VersionPolicy("latest", num_versions=1)
    assert dict(config.get("defaults").labels) == {}
    assert config.get("missing") is None


def test_results_are_immutable(tmp_path: Path) -> None:
    config = load_model_config(write_config(tmp_path, VALID))
    face = config.get("face_detection")
    with pytest.raises(TypeError):
        face.labels["stable"] = 2  # type: ignore[index]
    with pytest.raises(AttributeError):
        face.name = "other"  # type: ignore[misc]
    assert hash(face) == hash(config.get("face_detection"))


def test_latest_with_zero_versions_means_one(tmp_path: Path) -> None:
    write_config(tmp_path, "", models=("m",))
    text = block("model_version_policy { latest {} }\n")
    config = parse_model_config(text, path=tmp_path / "serving_models.config")
    assert config.get("m").policy == VersionPolicy("latest", num_versions=1)


def test_parse_accepts_alternative_text_format_spellings(tmp_path: Path) -> None:
    write_config(tmp_path, "", models=("a", "b"))
    text = """
        model_config_list: <
          config: [
            { name: 'a' base_path: "/models/a", model_platform: "tensorflow";
              model_version_policy: { specific: { versions: [2, 5] } } },
            { name: "b" base_path: "/models/b" model_platform: "tensorflow"
              version_labels: [{ key: "x" value: 4 }] }
          ]
        >
    """
    config = parse_model_config(text, path=tmp_path / "serving_models.config")
    assert config.names == ("a", "b")
    assert config.get("a").policy.versions == (2, 5)
    assert dict(config.get("b").labels) == {"x": 4}


# -- version policies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "on_disk", "expected"),
    [
        (VersionPolicy("latest"), [1, 2, 3], (3,)),
        (VersionPolicy("latest", num_versions=2), [3, 1, 2], (2, 3)),
        (VersionPolicy("latest", num_versions=5), [7, 2], (2, 7)),
        (VersionPolicy("latest", num_versions=2), [], ()),
        (VersionPolicy("latest", num_versions=2), [4, 4, 1], (1, 4)),
        (VersionPolicy("all"), [10, 2, 1], (1, 2, 10)),
        (VersionPolicy("all"), [], ()),
        (VersionPolicy("specific", versions=(3, 1)), [1, 2, 3, 4], (1, 3)),
        (VersionPolicy("specific", versions=(1, 9)), [1, 2], (1,)),
        (VersionPolicy("specific", versions=(5,)), [1, 2], ()),
        (VersionPolicy("latest"), iter([0]), (0,)),
    ],
    ids=lambda value: str(value) if isinstance(value, VersionPolicy) else None,
)
def test_select(policy: VersionPolicy, on_disk: list[int], expected: tuple[int, ...]) -> None:
    assert policy.select(on_disk) == expected


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "newest"}, {"kind": "latest", "num_versions": 0}, {"kind": "specific", "versions": ()}],
)
def test_version_policy_rejects_nonsense(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        VersionPolicy(**kwargs)


# -- base path mapping ---------------------------------------------------------------------------------


def test_container_prefix_maps_to_default_models_root(tmp_path: Path) -> None:
    path = write_config(tmp_path, block("", name="m"), models=("m",))
    servable = load_model_config(path).get("m")
    assert servable.base_path == tmp_path / "serving_models" / "m"
    assert servable.configured_base_path == "/models/m"


def test_container_prefix_maps_to_given_models_root(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "nested" / "m").mkdir(parents=True)
    path = tmp_path / "serving_models.config"
    path.write_text(block("").replace("/models/m", "/models/nested/m"))
    servable = load_model_config(path, models_root=tmp_path / "elsewhere").get("m")
    assert servable.base_path == tmp_path / "elsewhere" / "nested" / "m"


def test_custom_container_prefix(tmp_path: Path) -> None:
    (tmp_path / "root" / "m").mkdir(parents=True)
    text = block("").replace("/models/m", "/srv/tf/m")
    config = parse_model_config(
        text, path=tmp_path / "c.config", models_root=tmp_path / "root", container_prefix="/srv/tf"
    )
    assert config.get("m").base_path == tmp_path / "root" / "m"


def test_relative_base_path_is_relative_to_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf" / "local" / "m").mkdir(parents=True)
    path = tmp_path / "conf" / "serving.config"
    path.write_text(block("").replace("/models/m", "local/m"))
    assert load_model_config(path).get("m").base_path == tmp_path / "conf" / "local" / "m"


def test_other_absolute_base_path_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "abs" / "m").mkdir(parents=True)
    text = block("").replace("/models/m", str(tmp_path / "abs" / "m"))
    config = parse_model_config(text, path=tmp_path / "x" / "serving.config")
    assert config.get("m").base_path == tmp_path / "abs" / "m"


def test_prefix_must_match_a_whole_path_segment(tmp_path: Path) -> None:
    text = block("").replace("/models/m", "/modelsx/m")
    config = parse_model_config(text, path=tmp_path / "serving.config", check_paths=False)
    assert config.get("m").base_path == Path("/modelsx/m")


def test_check_paths_false_skips_the_disk(tmp_path: Path) -> None:
    config = parse_model_config(block(""), path=tmp_path / "serving.config", check_paths=False)
    assert config.get("m").base_path == tmp_path / "serving_models" / "m"


# -- errors ----------------------------------------------------------------------------------------------

# (id, file content, expected substring of the reason, expected line or None)
MALFORMED = [
    (
        "syntax-missing-colon",
        'model_config_list {\n  config {\n    name "m"\n  }\n}\n',
        'a ":" is missing (column 10)',
        3,
    ),
    (
        "syntax-bad-value",
        "model_config_list {\n  config {\n    name: m\n  }\n}\n",
        "syntax error (column 11): Expected string",
        3,
    ),
    (
        "unclosed-block",
        'model_config_list {\n  config {\n    name: "m"\n    base_path: "/models/m"\n  }\n',
        'add the missing "}"',
        5,
    ),
    (
        "unknown-field",
        'model_config_list {\n  config {\n    nam: "m"\n  }\n}\n',
        'unknown field "nam" at column 5 in a ModelConfig block; did you mean "name"?',
        3,
    ),
    (
        "field-outside-config",
        'model_config_list {\n  name: "m"\n}\n',
        '"name" belongs inside a config { } block',
        2,
    ),
    ("empty-file", "# nothing here\n", "there is no model_config_list", None),
    ("empty-list", "\n# models:\nmodel_config_list {\n}\n", "model_config_list is empty", 3),
    (
        "custom-model-config",
        '\ncustom_model_config {\n  type_url: "type.googleapis.com/x.Y"\n}\n',
        "custom_model_config is not supported",
        2,
    ),
    (
        "custom-and-list",
        'model_config_list { }\ncustom_model_config { type_url: "x" }\n',
        "custom_model_config is not supported",
        2,
    ),
    (
        "two-lists",
        "model_config_list { }\nmodel_config_list { }\n",
        "model_config_list appears more than once",
        2,
    ),
    (
        "no-name",
        block("").replace('    name: "m"\n', "") + "",
        'config block #1 has no name; add name: "<model name>"',
        2,
    ),
    ("bad-name", block("", name="my model"), "model name 'my model' is not allowed", 3),
    (
        "duplicate-name",
        block("")[: -len("}\n")] + '  config {\n    # again\n    name: "m"\n    base_path: "/models/m"\n  }\n}\n',
        'model name "m" is used twice (first on line 3)',
        9,
    ),
    (
        "name-twice-in-block",
        block('name: "n"\n'),
        'a config block sets "name" twice',
        6,
    ),
    (
        "missing-base-path",
        block("").replace('    base_path: "/models/m"\n', ""),
        'model "m" has no base_path; add base_path: "/models/m"',
        2,
    ),
    (
        "base-path-missing-on-disk",
        block("", name="ghost"),
        'base_path "/models/ghost" (mapped to ',
        4,
    ),
    ("base-path-is-a-file", block("", name="afile"), "is not a directory", 4),
    (
        "no-platform",
        block("").replace('    model_platform: "tensorflow"\n', ""),
        'model "m" has no model_platform; add model_platform: "tensorflow"',
        2,
    ),
    (
        "wrong-platform",
        block("").replace('"tensorflow"', '"pytorch"'),
        'model_platform "pytorch", which is not supported',
        5,
    ),
    ("model-type", block("model_type: TENSORFLOW\n"), "sets model_type, which is deprecated", 6),
    (
        "unknown-enum",
        block("model_type: TORCH\n"),
        "unknown value TORCH (column 17); allowed values: MODEL_TYPE_UNSPECIFIED, TENSORFLOW, OTHER",
        6,
    ),
    (
        "specific-without-versions",
        block("model_version_policy {\n  specific {}\n}\n"),
        "specific version policy with no versions",
        7,
    ),
    (
        "specific-negative-version",
        block("model_version_policy {\n  specific {\n    versions: 1\n    versions: -2\n  }\n}\n"),
        "lists version -2; version numbers are 0 or more",
        9,
    ),
    (
        "specific-duplicate-version",
        block("model_version_policy { specific {\n  versions: 4\n  versions: 4 } }\n"),
        "lists version 4 twice",
        8,
    ),
    (
        "latest-negative",
        block("model_version_policy { latest { num_versions: -1 } }\n"),
        "number -1 is out of range for num_versions (it must be 0 or more) (column 51)",
        6,
    ),
    (
        "two-policies",
        block("model_version_policy {\n  latest {}\n  all {}\n}\n"),
        '"latest" and "all" cannot both be set',
        8,
    ),
    (
        "label-negative",
        block('version_labels { key: "stable" value: -1 }\n'),
        'maps version label "stable" to -1; version numbers are 0 or more',
        6,
    ),
    (
        "label-not-in-specific",
        block(
            "model_version_policy { specific { versions: [1, 2] } }\n"
            'version_labels { key: "stable" value: 1 }\n'
            "version_labels {\n"
            '  key: "canary"\n'
            "  value: 5\n"
            "}\n"
        ),
        'maps version label "canary" to version 5, but its specific policy only loads 1, 2; add 5',
        9,
    ),
    (
        "label-bad-name",
        block('version_labels { key: "not ok" value: 1 }\n'),
        "has version label 'not ok'; label names may use only",
        6,
    ),
    (
        "label-empty-name",
        block('version_labels { key: "" value: 1 }\n'),
        "has a version label with an empty key",
        6,
    ),
    (
        "label-twice",
        block('version_labels { key: "stable" value: 1 }\n# again\nversion_labels { key: "stable" value: 2 }\n'),
        'defines version label "stable" twice (first on line 6)',
        8,
    ),
]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    for name in ("m", "my model"):
        (tmp_path / "serving_models" / name).mkdir(parents=True)
    (tmp_path / "serving_models" / "afile").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize(("text", "expected", "line"), [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_config(config_dir: Path, text: str, expected: str, line: int | None) -> None:
    path = config_dir / "serving_models.config"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelConfigError) as info:
        load_model_config(path)
    err = info.value
    assert expected in err.reason
    assert err.line == line
    assert err.path == str(path)
    where = f"{path}:{line}" if line is not None else f"{path}"
    assert str(err) == f"{where}: {err.reason}"


def test_each_malformed_config_has_its_own_message(config_dir: Path) -> None:
    messages = set()
    for _, text, _, _ in MALFORMED:
        with pytest.raises(ModelConfigError) as info:
            parse_model_config(text, path=config_dir / "serving_models.config")
        messages.add(info.value.reason)
    # Cases that are the same mistake in different spellings share their message; all others differ.
    assert len(messages) == len(MALFORMED) - 1


def test_missing_path_error_names_both_paths(config_dir: Path) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_model_config(block("", name="ghost"), path=config_dir / "serving_models.config")
    assert '"/models/ghost"' in info.value.reason
    assert str(config_dir / "serving_models" / "ghost") in info.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError) as info:
        load_model_config(tmp_path / "nope.config")
    assert info.value.line is None
    assert str(info.value) == f"{tmp_path / 'nope.config'}: the model config file does not exist; check the path"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="this is a directory"):
        load_model_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "serving_models.config"
    path.write_bytes(b'model_config_list {\n  config {\n    name: "caf\xe9"\n  }\n}\n')
    with pytest.raises(ModelConfigError) as info:
        load_model_config(path)
    assert info.value.line == 3
    assert "not valid UTF-8 (byte 0xe9" in info.value.reason


def test_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "serving_models.config"
    path.write_bytes(b"\xef\xbb\xbf" + block("").encode())
    with pytest.raises(ModelConfigError, match="byte-order mark") as info:
        load_model_config(path)
    assert info.value.line == 1


def test_error_is_a_value_error_and_pickles() -> None:
    err = ModelConfigError("a.config", 3, "broken")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.path, copy.line, copy.reason, str(copy)) == ("a.config", 3, "broken", "a.config:3: broken")
    assert str(ModelConfigError(Path("a.config"), None, "broken")) == "a.config: broken"


def test_lines_survive_comments_and_braces_in_strings(config_dir: Path) -> None:
    text = (
        "# model_config_list { config { name: 'decoy' } }\n"
        "model_config_list {\n"
        '  config { name: "m" base_path: "/models/m" model_platform: "tensorflow" } # config {\n'
        "  config {\n"
        '    base_path: "/models/m" # name: "m"\n'
        '    model_platform: "tensorflow"\n'
        '    name: "m"\n'
        "  }\n"
        "}\n"
    )
    with pytest.raises(ModelConfigError) as info:
        parse_model_config(text, path=config_dir / "serving_models.config")
    assert info.value.line == 7
    assert "first on line 3" in info.value.reason


def test_does_not_import_tensorflow() -> None:
    code = "import sys, app.serving.model_config; sys.exit('tensorflow' in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
