"""`flask --app app pull-models` against real servers on loopback: rclone's S3 server, fake-gcs-server and
http.server. A bucket and a tarball of the test servables are pulled and then served through the gateway; a wrong
secret, an unknown scheme, a missing file fail with one line and leave nothing; --if-missing keeps what is there;
servers that fail the first requests are retried; and the thin gateway's virtualenv (no TensorFlow) runs it.

rclone and fake-gcs-server come from requirements-dev.txt; missing, their tests skip, unless GATEWAY_REQUIRE_S3=1
or GATEWAY_REQUIRE_GCS=1 (.ci/run). tests/support/programs.py starts them and tests/support/servables.py has the
servables' config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import object_stores, programs, servables
from tests.support.object_stores import FileServer, FlakyProxy, Store
from tests.support.thin_gateway import gateway_venv

REPO = Path(__file__).resolve().parents[2]
BUCKET, PREFIX = "models", "portrait"
TARBALL = "portrait-models.tar.gz"
# Everything a pull reads from its environment: cleared, so that only what a test gives reaches the command.
STORAGE_VARIABLES = ("AWS_", "S3_", "GOOGLE_", "STORAGE_EMULATOR_HOST", "GATEWAY_", "awsAnonymousCredential")
# half_plus_latest is version 2, y = 0.5 * x + 3.
PREDICT = ("/v1/models/half_plus_latest:predict", {"instances": [1.0, 2.0]}, {"predictions": [3.5, 4.0]})


def pull_models(
    src: str, dest: Path, env: dict[str, str] | None = None, *args: str, python: str = sys.executable
) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(STORAGE_VARIABLES)} | (env or {})
    return subprocess.run(
        [python, "-m", "flask", "--app", "app", "pull-models", src, str(dest), *args],
        cwd=REPO, env=environ, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_failed_in_one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a failed pull left files behind"


def served_answer(serving_models: Path) -> dict:
    """The gateway over the pulled folder (the test servables' config beside it): TF Serving's REST predict."""
    from app import create_app

    config = serving_models.parent / "serving_models.config"
    config.write_text(servables.CONFIG, encoding="utf-8")
    app = create_app({"poll_interval": 0, "model_config": config, "rate_limit": ""})
    try:
        path, body, _ = PREDICT
        response = app.test_client().post(path, data=json.dumps(body))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()
    finally:
        app.extensions["serving"].close()


# -- the servers, over the test servables ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def buckets(tmp_path_factory: pytest.TempPathFactory, exported_models: Path) -> Path:
    """A folder of buckets: models/portrait/<servable>/<version>/..., the test servables."""
    root = tmp_path_factory.mktemp("buckets")
    shutil.copytree(exported_models, root / BUCKET / PREFIX)
    return root


@pytest.fixture(scope="module")
def s3(buckets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with object_stores.s3_server(buckets, tmp_path_factory.mktemp("s3-log")) as server:
        yield server


@pytest.fixture(scope="module")
def gcs(buckets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with object_stores.gcs_server(buckets, tmp_path_factory.mktemp("gcs-log")) as server:
        yield server


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory, exported_models: Path) -> Path:
    """A folder for http.server: the test servables as a gzip-compressed tarball (servable folders at its top)."""
    folder = tmp_path_factory.mktemp("downloads")
    with tarfile.open(folder / TARBALL, "w:gz") as tar:
        for entry in sorted(exported_models.iterdir()):
            tar.add(entry, arcname=entry.name)
    return folder


@pytest.fixture
def web(downloads: Path) -> Iterator[FileServer]:
    with FileServer(downloads) as server:
        yield server


def source(kind: str, request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """(URI, environment) of the test servables on the ``kind`` server."""
    if kind == "s3":
        return f"s3://{BUCKET}/{PREFIX}", request.getfixturevalue("s3").environ()
    if kind == "gs":
        return f"gs://{BUCKET}/{PREFIX}", request.getfixturevalue("gcs").environ()
    return request.getfixturevalue("web").url(TARBALL), {}


# -- pulled, then served ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "gs", "http tarball"])
def test_pulled_servables_serve_through_the_gateway(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, exported_models: Path
) -> None:
    uri, env = source(kind, request)
    dest = tmp_path / "serving_models"
    result = pull_models(uri, dest, env)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == tree(exported_models)
    files = len(tree(exported_models))
    assert f"pulled {files} files (" in result.stdout and f"from {uri} into {dest} in " in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving_models"]  # no staging folder left
    assert served_answer(dest) == PREDICT[2]


def test_a_pull_into_serving_models_keeps_its_readme(s3: Store, tmp_path: Path, exported_models: Path) -> None:
    """docker-compose's pull profile writes into ./serving_models, which holds the repository's README."""
    dest = tmp_path / "serving_models"
    dest.mkdir()
    (dest / "README.md").write_text("the repository's own file")
    result = pull_models(f"s3://{BUCKET}/{PREFIX}", dest, s3.environ(), "--if-missing")
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {**tree(exported_models), "README.md": b"the repository's own file"}
    assert served_answer(dest) == PREDICT[2]


# -- failures: one line, nothing left --------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_a_wrong_secret_fails_in_one_line_and_leaves_nothing(s3: Store, tmp_path: Path, wrong: str) -> None:
    result = pull_models(f"s3://{BUCKET}/{PREFIX}", tmp_path / "volume" / "models", s3.environ(**{wrong: "wrong"}))
    line = assert_failed_in_one_line(result, f"s3://{BUCKET}/{PREFIX}", "access refused", "AWS_SECRET_ACCESS_KEY")
    assert "tried" not in line  # refused credentials are not retried
    assert_nothing_left(tmp_path)


def test_no_credentials_at_all_names_the_variables(s3: Store, tmp_path: Path) -> None:
    env = {k: v for k, v in s3.environ().items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    result = pull_models(f"s3://{BUCKET}/{PREFIX}", tmp_path / "models", env | {"AWS_CONFIG_FILE": "/dev/null",
                         "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"})  # fmt: skip
    assert_failed_in_one_line(result, "no credentials found", "AWS_ACCESS_KEY_ID", "awsAnonymousCredential")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("ftp://models.example/portrait", ["ftp://models.example/portrait", "unknown scheme 'ftp://'", "s3://"]),
        ("s3://no-such-bucket/portrait", ["s3://no-such-bucket/portrait", "no bucket 'no-such-bucket'"]),
        (f"s3://{BUCKET}/nothing-here", [f"s3://{BUCKET}/nothing-here", "holds nothing under that prefix"]),
    ],
    ids=["unknown scheme", "no such bucket", "empty prefix"],
)
def test_a_source_that_is_not_there_fails_in_one_line(s3: Store, tmp_path: Path, uri: str, words: list[str]) -> None:
    result = pull_models(uri, tmp_path / "models", s3.environ())
    assert_failed_in_one_line(result, *words)
    assert_nothing_left(tmp_path)


def test_a_missing_tarball_fails_in_one_line(web: FileServer, tmp_path: Path) -> None:
    result = pull_models(web.url("no-such.tar.gz"), tmp_path / "models")
    assert_failed_in_one_line(result, web.url("no-such.tar.gz"), "404")
    assert_nothing_left(tmp_path)


def test_an_unusable_google_key_file_names_the_variable(tmp_path: Path) -> None:
    (tmp_path / "key.json").write_text("{}")
    result = pull_models("gs://models/portrait", tmp_path / "out" / "models",
                         {"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "key.json")})  # fmt: skip
    assert_failed_in_one_line(result, "gs://models/portrait", "GOOGLE_APPLICATION_CREDENTIALS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]


def test_an_endpoint_nobody_answers_is_retried_then_named(tmp_path: Path) -> None:
    endpoint = f"http://{programs.LOOPBACK}:{programs.free_port()}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    result = pull_models("s3://models/portrait", tmp_path / "models", env, "--attempts", "2", "--backoff", "0")
    assert result.returncode != 0
    *retries, last = result.stderr.strip().splitlines()
    assert len(retries) == 1 and "trying again" in retries[0]
    for word in (endpoint, "tried 2 times", "AWS_ENDPOINT_URL"):
        assert word in last, last
    assert_nothing_left(tmp_path)


# -- --if-missing ----------------------------------------------------------------------------------------------


def test_if_missing_keeps_a_pulled_folder_and_fetches_nothing(s3: Store, tmp_path: Path) -> None:
    dest = tmp_path / "models"
    assert pull_models(f"s3://{BUCKET}/{PREFIX}", dest, s3.environ()).returncode == 0
    marker = dest / "half_plus" / "1" / "changed-by-hand.txt"
    marker.write_text("kept")
    again = pull_models(f"s3://{BUCKET}/{PREFIX}", dest, s3.environ(), "--if-missing")
    assert again.returncode == 0, again.stderr
    assert "half_plus: already there, kept" in again.stdout
    assert "pulled 0 files (0 bytes)" in again.stdout
    assert marker.read_text() == "kept"
    replaced = pull_models(f"s3://{BUCKET}/{PREFIX}", dest, s3.environ())  # without the flag: replaced, whole
    assert replaced.returncode == 0 and not marker.exists()


# -- retries ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["s3", "gs", "http tarball"])
def test_a_server_failing_the_first_requests_is_retried(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, exported_models: Path
) -> None:
    uri, env = source(kind, request)
    failures = 2
    if kind == "http tarball":
        request.getfixturevalue("web").counter.failures = failures
        proxy = None
    else:
        store = request.getfixturevalue("s3" if kind == "s3" else "gcs")
        proxy = FlakyProxy(store.port, failures=failures).__enter__()
        env = env | ({"AWS_ENDPOINT_URL": proxy.url} if kind == "s3" else {"STORAGE_EMULATOR_HOST": proxy.url})
    try:
        result = pull_models(uri, tmp_path / "models", env, "--backoff", "0.05")
    finally:
        if proxy is not None:
            proxy.__exit__(None, None, None)
    assert result.returncode == 0, result.stderr
    assert "503" in result.stderr and "trying again" in result.stderr
    assert tree(tmp_path / "models") == tree(exported_models)


def test_a_server_that_keeps_failing_gives_up_after_the_attempts(web: FileServer, tmp_path: Path) -> None:
    web.counter.failures = 100
    result = pull_models(web.url(TARBALL), tmp_path / "models", None, "--attempts", "3", "--backoff", "0")
    assert result.returncode != 0
    assert result.stderr.count("trying again") == 2 and web.counter.requests == 3
    assert "503" in result.stderr.splitlines()[-1] and "tried 3 times" in result.stderr.splitlines()[-1]
    assert_nothing_left(tmp_path)


# -- the thin image ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_thin_gateway_virtualenv_pulls_from_every_scheme(
    s3: Store, gcs: Store, web: FileServer, tmp_path: Path, exported_models: Path
) -> None:
    """requirements-gateway.txt alone (no TensorFlow; footprint's cached virtualenv) runs the storage initializer."""
    thin = gateway_venv()
    missing = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('tensorflow', 'keras')))"
    assert subprocess.run([str(thin), "-c", missing], timeout=60).returncode == 0
    for name, uri, env in [
        ("s3", f"s3://{BUCKET}/{PREFIX}", s3.environ()),
        ("gs", f"gs://{BUCKET}/{PREFIX}", gcs.environ()),
        ("http", web.url(TARBALL), {}),
    ]:
        result = pull_models(uri, tmp_path / name, env, python=str(thin))
        assert result.returncode == 0, (name, result.stderr[-2000:])
        assert tree(tmp_path / name) == tree(exported_models), name
