"""The pages in a real browser: Playwright drives Debian's Chromium against the gateway on a loopback port.

Skipped with a reason when Chromium or the playwright package is missing, unless
GATEWAY_REQUIRE_BROWSER=1 (as in CI), which turns the skip into a failure. Every page a test
opens is watched for Content-Security-Policy violations, console errors and alert dialogs.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import skimage.data
from PIL import Image
from werkzeug.serving import make_server

from app.config import PROJECT_ROOT
from app.web.security import CONTENT_SECURITY_POLICY
from tests.support.gateway import demo_serving_dir
from tests.support.hostile import HOSTILE_NAMES, UPLOAD_NAMES, build_hostile_gallery

if TYPE_CHECKING:  # playwright is optional: the tests skip without it
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
README_SCREENSHOT = PROJECT_ROOT / "docs" / "screenshot.png"
TIMEOUT_MS = 60_000


def _unavailable(reason: str) -> None:
    if os.environ.get("GATEWAY_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_BROWSER=1 asks for the browser test to run)")
    pytest.skip(reason)


@contextmanager
def _served(config: Path) -> Iterator[str]:
    """The gateway (local backend, default settings) over ``config``, served on an ephemeral loopback port."""
    from app import create_app

    app = create_app({"poll_interval": 0, "model_config": config})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="gateway-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        app.extensions["serving"].close()


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[str]:
    """The gateway over the demo servables."""
    with _served(demo_serving_dir(tmp_path_factory.mktemp("browser-app"), demo_root)) as url:
        yield url


@pytest.fixture(scope="module")
def hostile_gateway_url(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[str]:
    """The gateway over a gallery whose face names are markup, quotes and percent tricks (tests/support/hostile.py)."""
    with _served(build_hostile_gallery(tmp_path_factory.mktemp("browser-hostile"), demo_root)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is missing: pip install -r requirements-dev.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Installed in every document before its own scripts run: reports each CSP violation to the test.
_WATCH_CSP = """
document.addEventListener("securitypolicyviolation", (event) => {
    window.reportCspViolation(`${event.effectiveDirective} blocked ${event.blockedURI || "inline"}`);
});
"""


def _watch(page: Page) -> tuple[list[str], list[str]]:
    """(CSP violations, alert/confirm/prompt dialogs) of ``page`` from now on; dialogs are dismissed."""
    violations: list[str] = []
    dialogs: list[str] = []
    page.expose_binding("reportCspViolation", lambda _source, violation: violations.append(violation))
    page.add_init_script(_WATCH_CSP)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    return violations, dialogs


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.extend(_unexpected(message)))
    violations, dialogs = _watch(page)
    yield page
    page.wait_for_timeout(100)  # a violation's event is delivered after the fact
    context.close()
    assert errors == [], "the page logged errors"
    assert violations == [], "the page broke its Content-Security-Policy"
    assert dialogs == [], "the page opened a dialog"


def _unexpected(message: ConsoleMessage) -> list[str]:
    """A console error, unless it is Chromium noting the status of an error page the test asked for."""
    if message.type != "error":
        return []
    if message.text.startswith("Failed to load resource") and message.location["url"].endswith("/detect_face/image"):
        return []
    return [message.text]


@pytest.fixture(scope="module")
def astronaut_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(path, format="JPEG", quality=90)
    return path


def _submit(page: Page) -> int:
    """Submit the upload form the way a user does; the HTTP status of the page that comes back."""
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Find the face").or_(page.get_by_role("button", name="Try this photo")).click()
    return navigation.value.status


def test_upload_shows_face_box_gallery_and_anime(page: Page, gateway_url: str, astronaut_jpeg: Path) -> None:
    page.goto(f"{gateway_url}/")
    page.set_input_files('input[name="image_file"]', str(astronaut_jpeg))
    page.wait_for_selector("[data-preview]:not([hidden])")  # app.js previews the chosen photo
    assert page.locator("[data-file-name]").inner_text() == "astronaut.jpg"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "upload_page.png"))

    assert _submit(page) == 200
    page.wait_for_selector("[data-face-box]")
    assert page.title().startswith("Result")

    photo = page.get_by_alt_text("The uploaded photo, with the detected face outlined").bounding_box()
    box = page.locator("[data-face-box]").bounding_box()
    assert photo is not None and box is not None
    assert box["width"] > 20 and box["height"] > 20
    assert photo["x"] <= box["x"] and box["x"] + box["width"] <= photo["x"] + photo["width"] + 1
    assert photo["y"] <= box["y"] and box["y"] + box["height"] <= photo["y"] + photo["height"] + 1
    centre_x = (box["x"] + box["width"] / 2 - photo["x"]) / photo["width"]
    centre_y = (box["y"] + box["height"] / 2 - photo["y"]) / photo["height"]
    assert 0.3 < centre_x < 0.6 and 0.1 < centre_y < 0.4  # the astronaut's face

    thumbnails = page.locator("[data-gallery] img")
    assert thumbnails.count() == 5
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-gallery] img')].every(img => img.complete && img.naturalWidth > 0)"
    )
    sources = thumbnails.evaluate_all("imgs => imgs.map(img => img.getAttribute('src'))")
    assert all(src.startswith("/api/v1/gallery/") for src in sources)
    assert page.locator("[data-anime]").evaluate("img => img.complete && img.naturalWidth") == 256
    assert page.locator("[data-crop]").evaluate("img => img.naturalWidth") > 0
    assert page.locator(".gallery-distance").first.inner_text().startswith("distance")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "result_page.png"
    page.screenshot(path=str(shot), full_page=True)
    _publish_screenshot(shot)


def _publish_screenshot(shot: Path) -> None:
    """Shrink the screenshot (an adaptive palette keeps it small) and copy it for the README.

    docs/screenshot.png is written when it is missing or GATEWAY_UPDATE_SCREENSHOT=1, so
    that an ordinary test run does not leave a changed binary in the working tree.
    """
    with Image.open(shot) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(shot, format="PNG", optimize=True)
    assert shot.stat().st_size < 600_000
    if not README_SCREENSHOT.exists() or os.environ.get("GATEWAY_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)


def test_drop_a_photo_on_the_form(page: Page, gateway_url: str, astronaut_jpeg: Path) -> None:
    page.goto(f"{gateway_url}/")
    data = base64.b64encode(astronaut_jpeg.read_bytes()).decode("ascii")
    page.locator("[data-dropzone]").evaluate(
        """(zone, data) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const files = new DataTransfer();
            files.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    page.wait_for_selector("[data-preview]:not([hidden])")
    assert page.locator('input[name="image_file"]').evaluate("input => input.files[0].name") == "dropped.jpg"
    assert _submit(page) == 200
    page.wait_for_selector("[data-face-box]")


def test_a_text_file_shows_a_readable_error(page: Page, gateway_url: str) -> None:
    page.goto(f"{gateway_url}/")
    # Named and typed as a JPEG, so that only the server can tell: the error page.
    page.set_input_files(
        'input[name="image_file"]', {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo at all\n"}
    )
    assert _submit(page) == 415
    alert = page.locator(".error-message")
    assert "not a readable image" in alert.inner_text().lower()
    assert page.get_by_role("heading", level=1).inner_text() == "That file is not a photo we can read"
    assert page.locator('form[action="/detect_face/image"] input[name="image_file"]').count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "error_page.png"))

    # Typed as text: the page says so before anything is sent.
    page.set_input_files(
        'input[name="image_file"]', {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"still not a photo\n"}
    )
    message = page.locator("[data-form-error]")
    assert message.is_visible()
    assert "notes.txt" in message.inner_text() and "JPEG" in message.inner_text()
    page.get_by_role("button", name="Try this photo").or_(page.get_by_role("button", name="Find the face")).click()
    assert page.url.endswith("/detect_face/image")  # still the error page: the form was not sent
    assert message.is_visible()


# -- the Content-Security-Policy and hostile names -------------------------------------------------


def test_csp_violations_would_be_caught(browser: Browser, gateway_url: str) -> None:
    """The watch the `page` fixture keeps is not blind: an inline script on the page is reported."""
    context = browser.new_context()
    try:
        page = context.new_page()
        violations, _ = _watch(page)
        page.goto(f"{gateway_url}/")
        page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "document.title = 'injected'";
            document.body.append(script);
        }""")
        page.wait_for_timeout(200)
        assert page.title() != "injected"
        assert any(violation.startswith("script-src") for violation in violations), violations
    finally:
        context.close()


def test_upload_result_and_error_pages_carry_the_policy(page: Page, gateway_url: str, astronaut_jpeg: Path) -> None:
    """Each page is served with the CSP, and (checked by the `page` fixture) breaks none of it."""
    response = page.goto(f"{gateway_url}/")
    assert response is not None and response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page.set_input_files('input[name="image_file"]', str(astronaut_jpeg))
    page.wait_for_selector("[data-preview]:not([hidden])")  # a data: URL preview: allowed by img-src
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Find the face").click()
    result = navigation.value
    assert result.status == 200 and result.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-gallery] img, [data-anime], [data-crop]')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    page.set_input_files(
        'input[name="image_file"]', {"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"not a photo\n"}
    )
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Try this photo").click()
    error = navigation.value
    assert error.status == 415 and error.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert error.headers["x-frame-options"] == "DENY"


def test_hostile_gallery_and_upload_names_stay_text(page: Page, hostile_gateway_url: str, astronaut_jpeg: Path) -> None:
    """Markup in gallery face names and in the photo's file name is shown as text; nothing runs, nothing breaks."""
    page.goto(f"{hostile_gateway_url}/")
    hostile_upload = UPLOAD_NAMES[1]  # '"><img src=x onerror=alert(1)>.png'
    photo = {"name": hostile_upload, "mimeType": "image/jpeg", "buffer": astronaut_jpeg.read_bytes()}
    page.set_input_files('input[name="image_file"]', photo)
    page.wait_for_selector("[data-preview]:not([hidden])")
    assert page.locator("[data-file-name]").inner_text() == hostile_upload
    page.fill('input[name="k"]', str(len(HOSTILE_NAMES)))
    assert _submit(page) == 200
    page.wait_for_selector("[data-face-box]")

    names = page.locator(".gallery-name").all_inner_texts()
    assert sorted(names) == sorted(HOSTILE_NAMES)
    # Every thumbnail URL (percent-encoded by the gateway) loads its image in a real browser.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-gallery] img')].every(img => img.complete && img.naturalWidth > 0)"
    )
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("script").count() == 1  # app.js, nothing injected
    assert page.locator("[onerror], [onmouseover]").count() == 0

    # The same name on a file that is not a photo: the error page.
    page.set_input_files(
        'input[name="image_file"]', {"name": UPLOAD_NAMES[0], "mimeType": "image/jpeg", "buffer": b"not a photo"}
    )
    assert _submit(page) == 415
    assert page.locator("script").count() == 1


# -- every face of a group photo -------------------------------------------------------------------


@pytest.fixture(scope="module")
def group_jpeg() -> Path:
    from app.modelzoo import weights

    return weights.sample_photos()[0]  # three people


def test_choosing_a_face_of_a_group_photo(page: Page, gateway_url: str, group_jpeg: Path) -> None:
    """The form asks about every face by default; each outlined face leads to its own matches and anime image,
    one face shown at a time, with no JavaScript involved."""
    page.goto(f"{gateway_url}/")
    assert page.locator('input[name="faces"][value="all"]').is_checked()
    page.set_input_files('input[name="image_file"]', str(group_jpeg))
    page.wait_for_selector("[data-preview]:not([hidden])")
    assert _submit(page) == 200
    outlines = page.locator("a[data-face-link]")
    assert outlines.count() == 3
    sections = page.locator("[data-face-result]")
    assert sections.count() == 3
    # Before any choice, the first face's results show, the others' do not.
    assert [sections.nth(i).is_visible() for i in range(3)] == [True, False, False]

    outlines.nth(2).click()  # the third face's outline on the photo
    page.wait_for_url("**#face-2")
    assert [sections.nth(i).is_visible() for i in range(3)] == [False, False, True]
    chosen = page.locator("#face-2")
    assert chosen.locator("[data-anime]").evaluate("img => img.complete && img.naturalWidth") == 256
    assert chosen.locator("[data-gallery] img").count() == 5
    page.wait_for_function(
        "() => [...document.querySelectorAll('#face-2 [data-gallery] img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )

    page.locator('a[data-face-choice="1"]').click()  # the list of faces beside the photo leads there too
    page.wait_for_url("**#face-1")
    assert [sections.nth(i).is_visible() for i in range(3)] == [False, True, False]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "group_result_page.png"), full_page=True)
