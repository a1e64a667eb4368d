"""`python -m app.serve`: the arguments KServe appends to a transformer become the gateway's settings."""

from __future__ import annotations

import pytest

from app.serve import clear_metrics_folder, gateway_environment, parser

KSERVE = ["--model_name", "portrait", "--predictor_host", "portrait-predictor.portrait", "--http_port", "8080"]


def environment(argv: list[str], environ: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    options, unknown = parser().parse_known_args(argv)
    return gateway_environment(options, environ or {}), unknown


def test_kserves_arguments_become_the_gateways_settings() -> None:
    env, unknown = environment([*KSERVE, "--workers", "3"])
    assert env == {
        "GATEWAY_BIND": "0.0.0.0:8080",
        "GATEWAY_WORKERS": "3",
        "GATEWAY_BACKEND": "grpc",
        "GATEWAY_SERVING_TARGET": "portrait-predictor.portrait:80",  # the predictor Service's port
    }
    assert unknown == []


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("portrait-predictor.portrait:9000", "portrait-predictor.portrait:9000"),
        ("grpc://tf-serving:8500", "tf-serving:8500"),
        ("http://portrait-predictor.portrait/", "portrait-predictor.portrait:80"),
        ("[::1]:8500", "[::1]:8500"),
    ],
)
def test_a_predictor_host_keeps_its_port(host: str, target: str) -> None:
    env, _ = environment(["--predictor_host", host])
    assert env["GATEWAY_SERVING_TARGET"] == target


def test_settings_given_in_the_environment_win_over_the_predictor_host() -> None:
    given = {"GATEWAY_SERVING_TARGET": "dns:///tf-serving.portrait:8500", "GATEWAY_BACKEND": "grpc", "PATH": "/bin"}
    env, _ = environment(KSERVE, given)
    assert env["GATEWAY_SERVING_TARGET"] == "dns:///tf-serving.portrait:8500" and env["PATH"] == "/bin"


def test_arguments_a_newer_kserve_adds_are_reported_not_fatal() -> None:
    env, unknown = environment([*KSERVE, "--protocol", "v2", "--predictor_use_ssl=false"])
    assert unknown == ["--protocol", "v2", "--predictor_use_ssl=false"]
    assert env["GATEWAY_BIND"] == "0.0.0.0:8080"


def test_no_arguments_change_nothing() -> None:
    assert environment([], {"GATEWAY_BIND": "127.0.0.1:8000"})[0] == {"GATEWAY_BIND": "127.0.0.1:8000"}


@pytest.mark.parametrize("argv", [["--http_port", "70000"], ["--workers", "0"]])
def test_impossible_values_stop_with_a_message(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match=r"--http_port|--workers"):
        environment(argv)


def test_the_metrics_folder_is_emptied_of_stale_files(tmp_path) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    clear_metrics_folder({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
