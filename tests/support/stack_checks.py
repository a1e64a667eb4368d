"""Checks of a running compose stack, run from a container on its network by the compose smoke test.

Standard library only: it runs in the thin gateway image (scripts/compose_smoke.py mounts it there).
Each command prints one line per check and exits 1 when one fails:

  check     the page, an upload to /detect_face/image, /api/v1/search, /api/v1/models, /readyz, and
            TF Serving's REST status of every servable, through the gateway and from serving itself
  gallery   waits until /api/v1/search answers from a given gallery version (a new one, published
            while the stack runs)
  traffic   searches from several threads until SIGTERM (the smoke test stops a serving replica in
            between), prints a progress line every few answers and a summary; any failed request fails
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

SERVABLES = ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime")
REQUEST_TIMEOUT_S = 60

# What a result page for one face carries (tests/contract/test_pages.py checks the app's page has them).
RESULT_PAGE_MARKERS = (b"data-face-box", b"data-anime", b"data-crop", b'id="gallery-heading"')


class CheckFailed(Exception):
    """One check's reason for failing."""


def request(
    url: str, *, photo: Path | None = None, fields: dict[str, str] | None = None, accept: str = "*/*"
) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, or of a multipart POST of ``photo`` as ``image_file``."""
    headers = {"Accept": accept}
    data = None
    if photo is not None:
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in (fields or {}).items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image_file"; filename="{photo.name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n".encode()
            + photo.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        data = b"".join(parts)
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=REQUEST_TIMEOUT_S
        ) as answer:
            return answer.status, answer.headers.get("Content-Type", ""), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def expect(status: int, body: bytes, wanted: int = 200) -> None:
    if status != wanted:
        raise CheckFailed(f"HTTP {status} (wanted {wanted}): {body[:300]!r}")


def json_of(status: int, content_type: str, body: bytes) -> dict:
    expect(status, body)
    if not content_type.startswith("application/json"):
        raise CheckFailed(f"{content_type or 'no content type'}, not JSON: {body[:200]!r}")
    return json.loads(body)


def search(gateway: str, photo: Path) -> dict:
    answer = json_of(*request(f"{gateway}/api/v1/search", photo=photo, fields={"k": "3"}))
    if not answer.get("matches"):
        raise CheckFailed(f"no gallery matches: {json.dumps(answer)[:300]}")
    return answer


def available(status_answer: dict, name: str) -> str:
    """TF Serving's GET /v1/models/<name> answer: the AVAILABLE versions, or CheckFailed."""
    versions = [v["version"] for v in status_answer.get("model_version_status", []) if v.get("state") == "AVAILABLE"]
    if not versions:
        raise CheckFailed(f"{name}: no version AVAILABLE: {json.dumps(status_answer)[:300]}")
    return ",".join(versions)


def check_stack(gateway: str, serving_rest: str, photo: Path) -> list[tuple[str, str]]:
    """(check, what it found) for every check; raises CheckFailed naming the first that fails."""
    results: list[tuple[str, str]] = []

    def run(name: str, check) -> None:
        try:
            results.append((name, check()))
        except CheckFailed as exc:
            raise CheckFailed(f"{name}: {exc}") from None

    def page() -> str:
        status, content_type, body = request(f"{gateway}/")
        expect(status, body)
        if "text/html" not in content_type or b'name="image_file"' not in body:
            raise CheckFailed(f"not the upload page ({content_type}): {body[:200]!r}")
        return f"{len(body)} bytes of HTML with the upload form"

    def upload_page() -> str:
        status, content_type, body = request(f"{gateway}/detect_face/image", photo=photo, accept="text/html")
        expect(status, body)
        missing = [marker for marker in RESULT_PAGE_MARKERS if marker not in body]
        if "text/html" not in content_type or missing:
            raise CheckFailed(f"a result page without {missing} ({content_type}): {body[:200]!r}")
        return "result page with the anime face and the gallery"

    def api_search() -> str:
        answer = search(gateway, photo)
        # The thumbnail comes out of the search servable's folder, which the gateway mounts read-only.
        thumbnail = answer["matches"][0]["thumbnail_url"]
        status, content_type, body = request(f"{gateway}{thumbnail}")
        expect(status, body)
        if content_type != "image/jpeg" or not body.startswith(b"\xff\xd8"):
            raise CheckFailed(f"thumbnail {thumbnail}: {content_type}, {body[:20]!r}")
        return f"{len(answer['matches'])} matches from gallery version {answer['gallery_version']}, thumbnail JPEG"

    def api_models() -> str:
        answer = json_of(*request(f"{gateway}/api/v1/models"))
        states = {
            entry["name"]: [v["state"] for v in entry.get("versions", [])] for entry in answer.get("servables", [])
        }
        missing = [name for name in SERVABLES if "AVAILABLE" not in states.get(name, [])]
        if missing:
            raise CheckFailed(f"not AVAILABLE: {missing}: {json.dumps(answer['servables'])[:300]}")
        return "every pipeline servable AVAILABLE"

    def readyz() -> str:
        status, _, body = request(f"{gateway}/readyz")
        expect(status, body)
        return "200"

    def rest_status(base: str) -> str:
        found = []
        for name in SERVABLES:
            found.append(f"{name} v{available(json_of(*request(f'{base}/v1/models/{name}')), name)}")
        return ", ".join(found)

    run("page GET /", page)
    run("page POST /detect_face/image", upload_page)
    run("POST /api/v1/search", api_search)
    run("GET /api/v1/models", api_models)
    run("GET /readyz", readyz)
    run("gateway GET /v1/models/<servable>", lambda: rest_status(gateway))
    run("serving GET /v1/models/<servable>", lambda: rest_status(serving_rest))
    return results


def wait_for_gallery(gateway: str, photo: Path, version: int, deadline_s: float) -> str:
    """Searches until the answer comes from gallery ``version``; the versions seen before it, and how long it took."""
    started = time.monotonic()
    seen: list[int] = []
    while True:
        answer = search(gateway, photo)
        if answer["gallery_version"] == version:
            return f"gallery version {version} answered after {time.monotonic() - started:.1f} s (before: {seen})"
        if answer["gallery_version"] not in seen:
            seen.append(answer["gallery_version"])
        if time.monotonic() - started > deadline_s:
            raise CheckFailed(
                f"gallery version {version} not served within {deadline_s:.0f} s; answers came from {seen}"
            )
        time.sleep(1)


class Traffic:
    """Searches from ``clients`` threads until stopped; every answer is counted, every failure kept."""

    def __init__(self, gateway: str, photo: Path, clients: int, pause_s: float) -> None:
        self.gateway, self.photo, self.clients, self.pause_s = gateway, photo, clients, pause_s
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.answered = 0
        self.failures: list[str] = []
        self.versions: Counter[int] = Counter()

    def client(self) -> None:
        while not self.stopping.is_set():
            try:
                answer = search(self.gateway, self.photo)
            except (CheckFailed, OSError, http.client.HTTPException, ValueError) as exc:
                with self.lock:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}"[:400])
                    print(f"failure {self.failures[-1]}", flush=True)
            else:
                with self.lock:
                    self.answered += 1
                    self.versions[answer["gallery_version"]] += 1
                    if self.answered % 10 == 0:
                        print(f"progress answered={self.answered} failed={len(self.failures)}", flush=True)
            self.stopping.wait(self.pause_s)

    def run(self, max_s: float) -> dict:
        threads = [threading.Thread(target=self.client, name=f"client-{i}") for i in range(self.clients)]
        for thread in threads:
            thread.start()
        # Short waits: the SIGTERM handler runs in this thread, and only once it wakes (the kernel may hand the
        # signal to a client thread, which does not interrupt a long wait here).
        deadline = time.monotonic() + max_s
        while not self.stopping.wait(0.5) and time.monotonic() < deadline:
            pass
        self.stopping.set()
        for thread in threads:
            thread.join()
        return {"answered": self.answered, "failed": len(self.failures), "failures": self.failures[:20],
                "gallery_versions": dict(self.versions)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", default="http://gateway:8000")
    parser.add_argument("--serving-rest", default="http://serving:8501")
    parser.add_argument("--photo", type=Path, required=True)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check")
    gallery = commands.add_parser("gallery")
    gallery.add_argument("version", type=int)
    gallery.add_argument("--deadline", type=float, default=120)
    traffic = commands.add_parser("traffic")
    traffic.add_argument("--clients", type=int, default=4)
    traffic.add_argument("--pause", type=float, default=0.05, help="seconds each client waits between searches")
    traffic.add_argument("--max-seconds", type=float, default=300, help="stops by itself after this long")
    args = parser.parse_args(argv)

    try:
        if args.command == "check":
            for name, found in check_stack(args.gateway, args.serving_rest, args.photo):
                print(f"ok {name}: {found}", flush=True)
        elif args.command == "gallery":
            print(f"ok {wait_for_gallery(args.gateway, args.photo, args.version, args.deadline)}", flush=True)
        else:
            load = Traffic(args.gateway, args.photo, args.clients, args.pause)
            signal.signal(signal.SIGTERM, lambda *_: load.stopping.set())
            summary = load.run(args.max_seconds)
            print(f"summary {json.dumps(summary)}", flush=True)
            if summary["failed"] or not summary["answered"]:
                return 1
    except CheckFailed as exc:
        print(f"FAIL {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
