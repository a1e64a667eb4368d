"""docs/canary.md followed block by block: the recipe end to end on the embedded runtime and via gRPC to the TF
Serving protocol double, and its PromQL checked and evaluated by promtool.

The recipe's blocks (``<!-- canary: <file>: <step> -->``) are written, in the doc's order, into the running
gateway's serving_models.config (the gallery servable's block) and pipeline.toml (its [search] table),
the new gallery is built with ``build-index`` from two of the demo's sample photos (under the demo gallery's
names, so the shadow's top-k overlap compares like with like), and after each step the answers say which arm
and gallery version served them, while a client searches throughout and never gets an error. Routing is a
keyed hash of the client's address: a few clients show a step as well as many would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from app.config import PROJECT_ROOT
from app.modelzoo import weights
from app.modelzoo.demo import DEMO_GALLERY_FOLDER
from app.web.extensions import serving
from tests.support import programs
from tests.support.gateway import BACKEND_KINDS, PIPELINE_CONFIG, demo_serving_dir
from tests.support.rollouts import ASTRONAUT, address, gateway, metric, use_pipeline, with_rollout
from tests.support.waiting import wait_for

DOC = PROJECT_ROOT / "docs" / "canary.md"
BLOCK = re.compile(
    r"<!-- canary: (?P<file>serving_models\.config|pipeline\.toml): (?P<step>[\w ]+) -->\n```(?:toml)?\n"
    r"(?P<text>.*?)```",
    re.DOTALL,
)
SEARCH = "latent_search_model"
STEPS = [
    ("serving_models.config", "now"),
    ("pipeline.toml", "now"),
    ("serving_models.config", "load"),
    ("serving_models.config", "label"),
    ("pipeline.toml", "shadow"),
    ("pipeline.toml", "canary"),
    ("serving_models.config", "promote"),
    ("pipeline.toml", "promoted"),
    ("serving_models.config", "retire"),
    ("pipeline.toml", "roll back"),
    ("serving_models.config", "roll back"),
]


def recipe() -> dict[tuple[str, str], str]:
    blocks = {(match["file"], match["step"]): match["text"] for match in BLOCK.finditer(DOC.read_text("utf-8"))}
    assert list(blocks) == STEPS
    return blocks


def model_config(block: str) -> str:
    """The repository's serving_models.config with the gallery servable's block replaced by the doc's."""
    shipped = PIPELINE_CONFIG.read_text(encoding="utf-8")
    start = shipped.index(f'  config {{\n    name: "{SEARCH}"\n')
    end = shipped.index("  }\n", start) + len("  }\n")
    return shipped[:start] + "".join(f"  {line}\n" for line in block.splitlines()) + shipped[end:]


def pipeline(block: str) -> str:
    """The shipped pipeline.toml with the doc's [search] lines added to its [search] table."""
    head, _, lines = block.partition("\n")
    assert head == "[search]"
    return with_rollout(search=lines)


def agreement(app: Flask) -> tuple[float, float]:
    """The search shadow's agreement sum and count, from one scrape (copies keep coming: two could disagree)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    found = {"gateway_shadow_agreement_sum": 0.0, "gateway_shadow_agreement_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("stage") == "search":
                found[sample.name] += sample.value
    return found["gateway_shadow_agreement_sum"], found["gateway_shadow_agreement_count"]


class Recipe:
    """One gateway following the doc, and what its clients saw."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.config = Path(serving(app).settings.model_config_file)
        self.blocks = recipe()
        self.failures: list[str] = []
        self.sent = 0  # by the client that searches throughout
        self.stop = threading.Event()

    def write(self, file: str, step: str) -> None:
        block = self.blocks[(file, step)]
        if file == "pipeline.toml":
            use_pipeline(self.app, pipeline(block))
        else:
            self.config.write_text(model_config(block), encoding="utf-8")

    def faces(self, label: str) -> list[str]:
        """The gallery faces (by name) of the search every client sends, answered by the version ``label`` names."""
        response = self.app.test_client().post(
            "/api/v1/search", query_string={"k": "5", "search_label": label}, data=ASTRONAUT,
            content_type="image/jpeg",
        )  # fmt: skip
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return [match["filename"] for match in response.json["matches"]]

    def search(self, client: int, **pins: str) -> dict:
        response = self.app.test_client().post(
            "/api/v1/search", query_string={"k": "5", **pins}, data=ASTRONAUT, content_type="image/jpeg",
            **address(client),
        )  # fmt: skip
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return response.json

    def served(self, clients: range) -> Counter:
        """(arm, gallery version) of one search from each client."""
        return Counter((body["arms"]["search"], body["gallery_version"]) for body in (self.search(n) for n in clients))

    def label(self, name: str) -> int | None:
        """The gallery version a request pinned to ``name`` gets (None: the label is not in force)."""
        response = self.app.test_client().post(
            "/api/v1/search", query_string={"k": "3", "search_label": name}, data=ASTRONAUT,
            content_type="image/jpeg",
        )  # fmt: skip
        return response.json["gallery_version"] if response.status_code == 200 else None

    def available(self) -> set[int]:
        statuses = serving(self.app).backend.model_status(SEARCH)
        return {status.version for status in statuses if status.state == "AVAILABLE"}

    def client_throughout(self) -> None:
        """One client searching until the recipe ends; every answer must be a good one."""
        client = self.app.test_client()
        while not self.stop.is_set():
            self.sent += 1
            response = client.post(
                "/api/v1/search", query_string={"k": "5"}, data=ASTRONAUT, content_type="image/jpeg",
                **address(9999),
            )  # fmt: skip
            if response.status_code != 200:
                self.failures.append(response.get_data(as_text=True)[:300])
            self.stop.wait(0.05)


@pytest.mark.long(minutes=1.5)
@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_the_canary_recipe_end_to_end(kind, tmp_path, demo_root):
    config = demo_serving_dir(tmp_path, demo_root)
    photos = tmp_path / "new-gallery"
    (photos / DEMO_GALLERY_FOLDER).mkdir(parents=True)  # the faces keep the names they have in version 1
    with gateway(kind, config) as app:
        cook = Recipe(app)
        # 1. What serves now: version 1, labelled stable, and the stage sent to the label.
        cook.write("serving_models.config", "now")
        wait_for(lambda: cook.label("stable") == 1, 10, "stable in force")
        cook.write("pipeline.toml", "now")
        watcher = threading.Thread(target=cook.client_throughout)
        watcher.start()
        try:
            assert cook.served(range(5)) == {("stable", 1): 5}
            # 2. Build the new gallery: written as version 2, not loaded (the policy names version 1 only). From
            # the photo of the face nearest the clients' and one other: some of the nearest faces are found again.
            nearest = cook.faces("stable")[0].removeprefix(f"{DEMO_GALLERY_FOLDER}/").partition("#")[0]
            samples = sorted(weights.sample_photos(), key=lambda photo: photo.name != nearest)[:2]
            assert samples[0].name == nearest
            for photo in samples:
                shutil.copyfile(photo, photos / DEMO_GALLERY_FOLDER / photo.name)
            built = app.test_cli_runner().invoke(args=["build-index", "--all-faces", str(photos)])
            assert built.exit_code == 0, built.output
            assert f"{SEARCH}/2" in built.output
            # 3. Load it beside version 1: nothing changes for the clients.
            cook.write("serving_models.config", "load")
            wait_for(lambda: cook.available() == {1, 2}, 20, "version 2 available")
            assert cook.served(range(5)) == {("stable", 1): 5}
            # 4. Label it canary: a pin reaches it.
            cook.write("serving_models.config", "label")
            wait_for(lambda: cook.label("canary") == 2, 10, "canary in force")
            # 5. Mirror: every answer is still the stable gallery's; each is repeated on the canary and compared.
            cook.write("pipeline.toml", "shadow")
            compared = metric(app, "gateway_shadow_requests_total", stage="search", shadow="canary", outcome="compared")
            assert cook.served(range(10)) == {("stable", 1): 10}
            wait_for(
                lambda: metric(
                    app, "gateway_shadow_requests_total", stage="search", shadow="canary", outcome="compared"
                ) >= compared + 10,
                20,
                "the shadow copies compared",
            )  # fmt: skip
            total, count = agreement(app)
            overlap = total / count
            # Every copy is of the same search: the mean is the share of the stable answer's faces the canary's has.
            stable, canary = cook.faces("stable"), cook.faces("canary")
            assert overlap == pytest.approx(len(set(stable) & set(canary)) / len(stable)), (stable, canary)
            assert overlap > 0.0  # the nearest face is in both galleries
            # 6. 10 % of the clients on the canary, each on the same arm every time.
            cook.write("pipeline.toml", "canary")
            before = {arm: metric(app, "gateway_stage_requests_total", stage="search", arm=arm) for arm in
                      ("stable", "canary")}  # fmt: skip
            sent = cook.sent
            split = cook.served(range(100))
            assert set(split) == {("stable", 1), ("canary", 2)}
            assert 0.04 <= split[("canary", 2)] / 100 <= 0.16, split  # these 100 addresses: 7 on the canary
            assert cook.served(range(100)) == split
            # 7. The metrics count what was sent, per arm (and what the other client sent meanwhile).
            for arm in ("stable", "canary"):
                counted = metric(app, "gateway_stage_requests_total", stage="search", arm=arm) - before[arm]
                ours = sum(count for (served, _), count in split.items() if served == arm) * 2
                assert ours <= counted <= ours + cook.sent - sent + 1
            names = re.findall(r"^\| `(gateway_[a-z_]+)\{", DOC.read_text(encoding="utf-8"), re.MULTILINE)
            exposition = app.test_client().get("/metrics").get_data(as_text=True)
            assert len(names) == 6 and all(f"# HELP {name} " in exposition for name in names), names
            # Rolling back during the canary: everyone on the stable gallery at once.
            cook.write("pipeline.toml", "roll back")
            assert cook.served(range(10)) == {("stable", 1): 10}
            cook.write("pipeline.toml", "canary")
            # 8. Promote by moving the label, then end the split.
            cook.write("serving_models.config", "promote")
            wait_for(lambda: cook.label("stable") == 2, 10, "stable moved to version 2")
            cook.write("pipeline.toml", "promoted")
            assert cook.served(range(10)) == {("stable", 2): 10}
            # Rolling back after promoting, while version 1 is loaded: the label moves back.
            cook.write("serving_models.config", "roll back")
            wait_for(lambda: cook.label("stable") == 1, 10, "stable back on version 1")
            assert cook.served(range(10)) == {("stable", 1): 10}
            cook.write("serving_models.config", "promote")
            wait_for(lambda: cook.label("stable") == 2, 10, "stable moved to version 2 again")
            # 9. Retire version 1.
            cook.write("serving_models.config", "retire")
            wait_for(lambda: cook.available() == {2}, 20, "version 1 retired")
            assert cook.served(range(10)) == {("stable", 2): 10}
        finally:
            cook.stop.set()
            watcher.join(timeout=60)
        assert cook.failures == []


# -- the PromQL of the doc -------------------------------------------------------------------------------------

PROMQL = re.compile(r"```promql\n(?P<text>.*?)```", re.DOTALL)


def doc_expressions() -> dict[str, str]:
    """The doc's PromQL, each expression under a recording-rule name made of its comment."""
    (block,) = PROMQL.findall(DOC.read_text(encoding="utf-8"))
    found = {}
    for chunk in block.strip().split("\n\n"):
        comment, _, expression = chunk.partition("\n")
        assert comment.startswith("# ")
        name = "canary:" + re.sub(r"[^a-z0-9]+", "_", comment[2:].lower()).strip("_")
        found[name] = " ".join(line.strip() for line in expression.splitlines())
    return found


# One minute of traffic per sample: 90 stable and 10 canary calls, the canary failing one in ten (each answered
# by the stable arm), 90 shadow copies with a mean top-k overlap of 0.8; every call in the first bucket but the
# canary's 95th percentile in the second.
SERIES = {
    'gateway_stage_requests_total{stage="search", arm="stable"}': "0+90x20",
    'gateway_stage_requests_total{stage="search", arm="canary"}': "0+10x20",
    'gateway_stage_errors_total{stage="search", arm="stable", code="model_failure"}': "0+0x20",
    'gateway_stage_errors_total{stage="search", arm="canary", code="model_failure"}': "0+1x20",
    'gateway_stage_fallbacks_total{stage="search", arm="canary", to="stable"}': "0+1x20",
    'gateway_shadow_agreement_sum{stage="search", arm="stable", shadow="canary", measure="topk_overlap"}': "0+72x20",
    'gateway_shadow_agreement_count{stage="search", arm="stable", shadow="canary", measure="topk_overlap"}': "0+90x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="stable", le="0.01"}': "0+90x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="stable", le="0.02"}': "0+90x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="stable", le="+Inf"}': "0+90x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="canary", le="0.01"}': "0+0x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="canary", le="0.02"}': "0+10x20",
    'gateway_stage_duration_seconds_bucket{stage="search", arm="canary", le="+Inf"}': "0+10x20",
}
EXPECTED = {
    "canary:error_ratio_per_arm": [('{arm="canary"}', 0.1), ('{arm="stable"}', 0.0)],
    "canary:95th_percentile_latency_per_arm": [('{arm="canary"}', 0.0195), ('{arm="stable"}', 0.0095)],
    "canary:share_of_the_calls_each_arm_answered": [('{arm="canary"}', 0.1), ('{arm="stable"}', 0.9)],
    "canary:mean_top_k_overlap_of_the_shadow_with_the_stable_answers": [("", 0.8)],
    "canary:canary_failures_answered_by_the_stable_arm": [("", 0.0167)],  # per second
}


def test_the_docs_promql_is_valid_and_computes_what_it_says(tmp_path):
    promtool = programs.require("promtool", "PROMETHEUS", package="prometheus")
    expressions = doc_expressions()
    assert set(expressions) == set(EXPECTED)
    rules = {"groups": [{"name": "canary-doc", "rules": [{"record": n, "expr": e} for n, e in expressions.items()]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    checked = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    cases = [
        {
            # Rounded: promtool 2.42 compares floats exactly, and 0.1 computes as 0.09999999999999999.
            "expr": f"round({name}, 0.0001)",
            "eval_time": "15m",
            "exp_samples": [{"labels": labels or "{}", "value": value} for labels, value in want],
        }
        for name, want in EXPECTED.items()
    ]
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": values} for series, values in SERIES.items()],
                "promql_expr_test": cases,
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    ran = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
