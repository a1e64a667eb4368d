"""docs/versions-and-labels.md's label procedure, replayed block by block on the runtime and on the double.

The blocks marked ``<!-- procedure: ... -->`` in the doc are applied in order to the test servable
half_plus (versions 1 and 2 on disk, as the doc's gallery servable after build-index), with and
without --allow_version_labels_for_unavailable_models, while a client calls the ``stable`` label
throughout: the procedure must lose no call and land every step; the block the doc warns about
must be stuck without the flag and go through with it. The compose file must set the flag the doc
says it sets.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import numpy as np
import pytest
import yaml

from app.config import PROJECT_ROOT
from app.serving.base import ModelRef
from tests.support import servables
from tests.support.fidelity import KINDS, Server, servers, states  # noqa: F401  (servers: a fixture)
from tests.support.waiting import wait_for

DOC = PROJECT_ROOT / "docs" / "versions-and-labels.md"
BLOCK = re.compile(r"<!-- procedure: (?P<step>[\w ]+) -->\n```\n(?P<config>.*?)```", re.DOTALL)
STABLE = ModelRef("half_plus", label="stable")
OFFSETS = {1: 2.0, 2: 3.0}  # half_plus answers y = 0.5 x + offset; the offset tells its versions apart


def procedure() -> dict[str, str]:
    blocks = {match["step"]: match["config"] for match in BLOCK.finditer(DOC.read_text(encoding="utf-8"))}
    assert list(blocks) == ["now", "step 1", "step 2", "step 3", "stuck"], list(blocks)
    return blocks


def config_with(block: str) -> str:
    """The test servables' config, half_plus's block replaced by the doc's (its servable renamed)."""
    ours = block.replace("latent_search_model", "half_plus")
    start = servables.CONFIG.index('  config {\n    name: "half_plus"\n')
    end = servables.CONFIG.index("  }\n", start) + len("  }\n")
    return servables.CONFIG[:start] + "".join(f"  {line}\n" for line in ours.splitlines()) + servables.CONFIG[end:]


def without_labels(config: str) -> str:
    return "".join(line for line in config.splitlines(keepends=True) if "version_labels" not in line)


def start_at_now(kind: str, start: Callable[..., Server], config_path, allow: bool) -> Server:
    """The doc's "now": with the flag, straight from the file; without it, labelled once version 1 serves."""
    now = config_with(procedure()["now"])
    if allow:
        config_path.write_text(now, encoding="utf-8")
        return start(kind, config_path, allow_labels_for_unavailable=True)
    config_path.write_text(without_labels(now), encoding="utf-8")
    server = start(kind, config_path)
    config_path.write_text(now, encoding="utf-8")
    server.runtime.reload_config()
    return server


def _version_of_stable(server: Server) -> int:
    served = server.backend.predict_versioned(STABLE, {"x": np.zeros([1], np.float32)})
    assert served.outputs["y"][0] == OFFSETS[served.version]
    return served.version


@pytest.mark.parametrize("allow", [False, True], ids=["without the flag", "with the flag"])
@pytest.mark.parametrize("kind", KINDS)
def test_moving_a_label_as_the_doc_says_loses_no_call(kind, allow, servers, config_path):  # noqa: F811
    server = start_at_now(kind, servers, config_path, allow)
    steps = procedure()
    seen: list[tuple[str, int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    step = ["now"]

    def client() -> None:
        while not stop.is_set():
            try:
                before = step[0]
                version = _version_of_stable(server)
                if step[0] == before:  # the call ran wholly within one step
                    seen.append((before, version))
            except BaseException as exc:  # every failure counts
                failures.append(exc)

    def calls_within(name: str, count: int = 3) -> None:
        """Stay in step ``name`` until the client made ``count`` calls within it (on a loaded machine the
        client thread may wait a while for its turn)."""
        wait_for(lambda: sum(at == name for at, _ in seen) >= count or failures, 10, f"calls within {name}")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        step[0] = "step 1"
        config_path.write_text(config_with(steps["step 1"]), encoding="utf-8")
        wait_for(lambda: (2, "AVAILABLE", "OK") in states(server.backend, "half_plus"), 10, "version 2 available")
        assert server.runtime.config_refusal is None
        assert _version_of_stable(server) == 1
        calls_within("step 1")
        step[0] = "step 2"
        config_path.write_text(config_with(steps["step 2"]), encoding="utf-8")
        wait_for(lambda: _version_of_stable(server) == 2, 10, "stable on version 2")
        step[0] = "step 3"
        config_path.write_text(config_with(steps["step 3"]), encoding="utf-8")
        wait_for(lambda: states(server.backend, "half_plus")[-1] == (1, "END", "OK"), 10, "version 1 retired")
        assert server.runtime.config_refusal is None
        calls_within("step 3")
        step[0] = "done"
        calls_within("done", 10)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert failures == []
    by_step = {name: {version for at, version in seen if at == name} for name in ("step 1", "step 3", "done")}
    assert by_step["step 1"] == {1} and by_step["step 3"] == {2} and by_step["done"] == {2}, by_step
    assert server.runtime.labels("half_plus") == {"stable": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_loading_and_labelling_in_one_edit_is_stuck_without_the_flag(kind, servers, config_path):  # noqa: F811
    server = start_at_now(kind, servers, config_path, allow=False)
    config_path.write_text(config_with(procedure()["stuck"]), encoding="utf-8")
    wait_for(lambda: server.runtime.config_refusal is not None, 5, "the edit refused")
    assert "Request to assign label to version 2 of model half_plus" in server.runtime.config_refusal
    for _ in range(3):  # refused again at every poll (explicit passes: a sleep could go by without one)
        server.runtime.poll_once()
        assert [version for version, *_ in states(server.backend, "half_plus")] == [1]  # 2 never even starts
        assert server.runtime.config_refusal is not None
    assert _version_of_stable(server) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_with_the_flag_the_same_edit_goes_through(kind, servers, config_path):  # noqa: F811
    server = start_at_now(kind, servers, config_path, allow=True)
    config_path.write_text(config_with(procedure()["stuck"]), encoding="utf-8")
    canary = ModelRef("half_plus", label="canary")
    wait_for(lambda: (2, "AVAILABLE", "OK") in states(server.backend, "half_plus"), 10, "version 2 available")
    assert server.backend.predict_versioned(canary, {"x": np.zeros([1], np.float32)}).version == 2
    assert _version_of_stable(server) == 1
    assert server.runtime.config_refusal is None


def test_compose_runs_tf_serving_with_the_flag_the_doc_relies_on():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    assert "--allow_version_labels_for_unavailable_models=true" in compose["services"]["serving"]["command"]
