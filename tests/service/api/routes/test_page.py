"""The try-on page (GET /) in a real browser: Debian's headless Chromium, driven by Selenium, against
a real server. The images the page shows must be the API's answers for the same inputs (read back
from the page's pixels), a refusal must show its message and field, and the page must work from
another origin (CORS) and warn about random weights. With TRYON_UPDATE_SCREENSHOT=1 it also
saves docs/page.png (the README's picture); a plain run leaves the tracked file alone."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from model.images import psnr
from tests.fixtures.service.harness import REPO, running_server
from tests.utils.installed import missing_reason
from tests.utils.local_http import LocalServer

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=missing_reason(
    "chromium and chromedriver", "apt-get install chromium chromium-driver; .ci/run does this"))

EXAMPLES = REPO / "service" / "examples"
STATIC = REPO / "service" / "static"
SCREENSHOT = REPO / "docs" / "page.png"
UPDATE_SCREENSHOT = os.environ.get("TRYON_UPDATE_SCREENSHOT") == "1"
API_KEY = "page-test-key"
# Chromium and Pillow decode the same JPEG with slightly different IDCT and upsampling.
CODEC_PSNR_DB = 40.0
# Big enough for a screenshot worth looking at, small enough for a busy 2-core CPU.
IMAGE_HW = (128, 96)
WAIT_S = 90


@pytest.fixture(scope="module")
def other_origin():
    """The page's three files served from another origin, as a shop would host its own page."""
    with LocalServer({
        "/index.html": (200, {"Content-Type": "text/html; charset=utf-8"}, (STATIC / "index.html").read_bytes()),
        "/static/app.js": (200, {"Content-Type": "text/javascript"}, (STATIC / "app.js").read_bytes()),
        "/static/app.css": (200, {"Content-Type": "text/css"}, (STATIC / "app.css").read_bytes()),
    }) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin_weights_file, other_origin):
    with running_server({"TRYON_WEIGHTS": str(standin_weights_file), "TRYON_IMAGE_SIZE": "{}x{}".format(*IMAGE_HW),
                         "TRYON_MAX_BATCH_SIZE": "1", "TRYON_API_KEYS": API_KEY,
                         "TRYON_CORS_ORIGINS": other_origin.base}, tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                 "--window-size=1280,1200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=f"waiting for {what}")


def open_page(driver, url: str, service: str | None = None) -> None:
    """The page at ``url``, pointed at ``service`` (typed into its Service URL field) when given."""
    driver.get(url)
    if service:
        driver.find_element("id", "api-base").send_keys(service + "\t")  # the field's change event
    wait_for(driver, lambda d: d.find_element("id", "service-status").get_attribute("data-state") == "ready",
             "the page to find the service ready")
    driver.find_element("id", "api-key").send_keys(API_KEY)


def choose(driver, field: str, *paths) -> None:
    driver.find_element("id", field).send_keys("\n".join(str(p) for p in paths))


def submit_and_wait(driver, results: int) -> list:
    driver.find_element("id", "submit").click()
    return wait_for(driver, lambda d: shown_results(d, results), f"{results} result image(s)")


def card_states(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('.result-card')]"
                                 ".map((card) => card.dataset.state)")


def shown_results(driver, count: int):
    """The result images once ``count`` of them are decoded, in garment order; else False."""
    images = driver.find_elements("css selector", ".result-card img.result")
    loaded = [img for img in images if driver.execute_script("return arguments[0].complete && "
                                                             "arguments[0].naturalWidth > 0", img)]
    if len(loaded) < count:
        return False
    return sorted(loaded, key=lambda img: int(img.find_element("xpath", "..").get_attribute("data-index")))


def pixels_shown(driver, img) -> np.ndarray:
    """The image as the page decoded it, read back through a canvas as lossless PNG."""
    url = driver.execute_script(
        "const img = arguments[0], canvas = document.createElement('canvas');"
        "canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;"
        "canvas.getContext('2d').drawImage(img, 0, 0); return canvas.toDataURL('image/png');", img)
    return decoded(base64.b64decode(url.split(",", 1)[1]))


def decoded(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def files(**paths) -> list:
    return [(name, (p.name, p.read_bytes())) for name, many in paths.items()
            for p in (many if isinstance(many, list) else [many])]


def api(server, path: str, fields: list, **headers) -> httpx.Response:
    """The same request the page makes, with the page's default options."""
    return httpx.post(f"{server.url}{path}", files=fields, params={"format": "jpeg", "size": "model"},
                      headers={"Authorization": f"Bearer {API_KEY}", **headers}, timeout=WAIT_S)


@pytest.fixture(scope="module")
def second_garment(tmp_path_factory):
    path = tmp_path_factory.mktemp("garments") / "cloth_mirrored.png"
    ImageOps.mirror(Image.open(EXAMPLES / "cloth.png").convert("RGB")).save(path)
    return path


def test_page_files_are_served_with_their_types(server):
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # 'self' only, from default-src
    assert "non-commercial research and education only" in page.text
    script = httpx.get(f"{server.url}/static/app.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for outside in ("/static/..%2Fapp.py", "/static/nothing.js", "/examples/draw_garment.py"):
        missing = httpx.get(f"{server.url}{outside}", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_page_shows_the_api_answer(browser, server):
    open_page(browser, f"{server.url}/")
    person = {"masked_model": EXAMPLES / "masked_model.png", "pose": EXAMPLES / "pose.png"}
    for field, path in person.items():
        choose(browser, field, path)
    choose(browser, "cloth", EXAMPLES / "cloth.png")
    [image] = submit_and_wait(browser, 1)

    answer = api(server, "/v1/tryon", files(**person, cloth=EXAMPLES / "cloth.png"))
    assert answer.status_code == 200, answer.text
    shown, want = pixels_shown(browser, image), decoded(answer.content)
    assert shown.shape == want.shape == (*IMAGE_HW, 3)
    assert psnr(shown, want) >= CODEC_PSNR_DB
    assert want.std() > 5  # a picture, not a flat fill that any blank image would match
    stages = [dt.get_attribute("textContent") for dt in browser.find_elements("css selector", "#timings dt")]
    assert {"decode", "queue", "inference", "encode"} <= set(stages)
    assert "200" in browser.find_element("id", "request-line").text
    assert not browser.find_element("id", "random-weights").is_displayed()


def test_page_streams_several_garments_and_saves_the_screenshot(browser, server, second_garment, tmp_path):
    """The examples (a photo, its keypoints, a garment) plus a second garment: /v1/tryon/batch, each
    part shown as it arrives, each equal to the API's answer."""
    open_page(browser, f"{server.url}/")
    browser.find_element("id", "load-examples").click()
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#garments li")) == 1, "the examples")
    choose(browser, "cloth", second_garment)
    browser.find_element("id", "submit").click()
    # One garment per engine call on a CPU: the first result is on the page while the second is dressed.
    wait_for(browser, lambda d: card_states(d) == ["done", "pending"], "the first result before the second")
    images = wait_for(browser, lambda d: shown_results(d, 2), "2 result images")

    person = {"person": EXAMPLES / "person.jpg", "keypoints": EXAMPLES / "person_keypoints.json"}
    answer = api(server, "/v1/tryon/batch", files(**person, cloth=[EXAMPLES / "cloth.png", second_garment]),
                 Accept="application/x-ndjson")
    assert answer.status_code == 200, answer.text
    parts = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    for image, part in zip(images, parts, strict=True):
        assert psnr(pixels_shown(browser, image), decoded(base64.b64decode(part["image"]))) >= CODEC_PSNR_DB
    captions = browser.find_elements("css selector", ".result-card figcaption")
    assert all("inference" in caption.text for caption in captions)  # each part's own timings
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot = SCREENSHOT if UPDATE_SCREENSHOT else tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] >= 1000


def test_page_shows_what_the_model_saw_behind_its_toggle(browser, server):
    """The toggle: after the try-on, /v1/prepare with the same person and garment; the box drawn over
    the photo where the API says it is, and the model's inputs beside the result, as the API gives them."""
    open_page(browser, f"{server.url}/")
    browser.find_element("id", "load-examples").click()
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#garments li")) == 1, "the examples")
    assert not browser.find_element("id", "model-view").is_displayed()
    browser.find_element("id", "show-inputs").click()
    submit_and_wait(browser, 1)
    wait_for(browser, lambda d: d.find_element("id", "saw-box").get_attribute("data-box"), "the box")

    fields = files(person=EXAMPLES / "person.jpg", keypoints=EXAMPLES / "person_keypoints.json",
                   cloth=EXAMPLES / "cloth.png")
    saw = httpx.post(f"{server.url}/v1/prepare", files=fields, timeout=WAIT_S,
                     headers={"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}).json()
    assert browser.find_element("id", "saw-box").get_attribute("data-box") == ",".join(map(str, saw["box"]))
    for name in ("masked_model", "pose", "cloth", "mask"):
        img = browser.find_element("id", f"saw-{name}")
        assert img.is_displayed()
        assert np.array_equal(pixels_shown(browser, img), decoded(base64.b64decode(saw[name])))
    # Drawn over the photo: the box's share of the photo as the page shows it.
    shown = browser.execute_script(
        "const p = document.getElementById('saw-photo').getBoundingClientRect(),"
        " b = document.getElementById('saw-box').getBoundingClientRect();"
        "return [(b.left - p.left) / p.width, (b.top - p.top) / p.height, (b.right - p.left) / p.width];")
    width, height = Image.open(EXAMPLES / "person.jpg").size
    left, top, right, _ = saw["box"]
    assert shown == pytest.approx([left / width, top / height, right / width], abs=0.02)


def test_page_shows_a_refusal_with_its_field(browser, server, tmp_path):
    not_an_image = tmp_path / "garment.txt"
    not_an_image.write_text("a shirt, described in words\n")
    open_page(browser, f"{server.url}/")
    choose(browser, "masked_model", EXAMPLES / "masked_model.png")
    choose(browser, "pose", EXAMPLES / "pose.png")
    choose(browser, "cloth", not_an_image)
    browser.find_element("id", "submit").click()
    wait_for(browser, lambda d: d.find_element("id", "error").is_displayed(), "the error box")

    answer = api(server, "/v1/tryon", files(masked_model=EXAMPLES / "masked_model.png",
                                            pose=EXAMPLES / "pose.png", cloth=not_an_image))
    error = answer.json()["error"]
    assert answer.status_code == 415 and error["field"] == "cloth"
    assert browser.find_element("id", "error-message").text == error["message"]
    assert browser.find_element("id", "error-field").text == "cloth"
    assert browser.find_element("id", "error-code").text == error["code"]
    assert "at-fault" in browser.find_element("css selector", '.zone[data-field="cloth"]').get_attribute("class")
    assert not browser.find_elements("css selector", "img.result")


def test_page_from_another_origin_with_the_examples(browser, server, other_origin):
    """A shop's own page on its own origin: CORS lets it read the answer and its headers. The examples
    button fetches the photo, its keypoints and the garment from the service."""
    open_page(browser, f"{other_origin.base}/index.html", server.url)
    browser.find_element("id", "load-examples").click()
    wait_for(browser, lambda d: len(d.find_elements("css selector", "#garments li")) == 1, "the examples")
    [image] = submit_and_wait(browser, 1)

    answer = api(server, "/v1/tryon", files(person=EXAMPLES / "person.jpg",
                                            keypoints=EXAMPLES / "person_keypoints.json",
                                            cloth=EXAMPLES / "cloth.png"))
    assert answer.status_code == 200, answer.text
    assert psnr(pixels_shown(browser, image), decoded(answer.content)) >= CODEC_PSNR_DB
    assert browser.find_elements("css selector", "#timings dt")  # Server-Timing is exposed cross-origin
    photo = files(person=EXAMPLES / "person.jpg", keypoints=EXAMPLES / "person_keypoints.json",
                  cloth=EXAMPLES / "cloth.png")
    crossing = api(server, "/v1/tryon", photo, Origin=other_origin.base)
    assert "X-Person-Box" in crossing.headers["access-control-expose-headers"].split(", ")  # a shop's page reads it


def test_page_off_and_random_weights_warning(browser, tmp_path, other_origin):
    """TRYON_DEMO_PAGE=false: / is the usual JSON 404. The page elsewhere still shows the random-weights
    warning exactly when the server says its weights are random (with a checkpoint in weights/, it does not)."""
    with running_server({"TRYON_DEMO_PAGE": "false", "TRYON_CORS_ORIGINS": other_origin.base,
                         "TRYON_IMAGE_SIZE": "64x64", "TRYON_MAX_BATCH_SIZE": "1"}, tmp_path) as off:
        for path in ("/", "/static/app.js", "/examples/cloth.png"):
            answer = httpx.get(f"{off.url}{path}", timeout=10)
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
        random = httpx.get(f"{off.url}/readyz", timeout=10).json()["random_weights"]
        open_page(browser, f"{other_origin.base}/index.html", off.url)
        assert browser.find_element("id", "random-weights").is_displayed() == random
