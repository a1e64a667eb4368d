"""The compose smoke test's override swaps only what cannot run without a registry or a GPU.

tests/support/docker-compose.smoke.yaml goes on top of docker-compose.yaml and docker-compose.cpu.yaml
(scripts/compose_smoke.py); everything else the smoke test runs is the stack users run.
"""

from __future__ import annotations

from typing import Any

import yaml

from app.config import PROJECT_ROOT

OVERRIDE = PROJECT_ROOT / "tests" / "support" / "docker-compose.smoke.yaml"


class Reset:
    """The compose spec's ``!reset``: the base file's value is removed."""


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus ``!reset``."""


ComposeLoader.add_constructor("!reset", lambda _loader, _node: Reset())


def load(path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)  # ComposeLoader is a SafeLoader


def test_only_the_serving_image_the_gateway_port_and_the_network_change():
    override = load(OVERRIDE)
    assert set(override) == {"services", "networks"}
    assert set(override["services"]) == {"serving", "gateway"}
    assert set(override["services"]["serving"]) == {"image", "entrypoint"}
    assert set(override["services"]["gateway"]) == {"ports"}
    assert isinstance(override["services"]["gateway"]["ports"], Reset)
    assert override["networks"] == {"default": {"internal": True}}


def test_the_model_server_is_the_tools_image_run_with_the_base_files_tf_serving_command():
    base = load(PROJECT_ROOT / "docker-compose.yaml")["services"]
    serving = load(OVERRIDE)["services"]["serving"]
    # The image the Dockerfile builds for the models job (TensorFlow inside), not one made for the test.
    assert serving["image"] == base["models"]["image"]
    assert base["models"]["build"]["target"] == "tools"
    # TF Serving's flags, mounts and healthcheck stay the base file's; only the program is another.
    assert serving["entrypoint"] == ["python", "-m", "app.model_server"]
    assert all(flag.startswith("--") for flag in base["serving"]["command"])
    assert "volumes" not in serving  # the base file's mounts: nothing of the tests goes into the stack
