"""The web gallery over a real workdir: HTML routes with TestClient, then real headless Chromium.

The workdir is a copy of the session's `atelier demo` run (or of
`ATELIER_TEST_SERVING_WORKDIR=DIR`, as in test_serving_api.py). Pages must show what the JSON
API answers (same state, same scoring path), so the expected product ids come from the API and
the expected images from the lake's `product_images` table.

The browser tests start the real app with uvicorn on 127.0.0.1 (a background thread) and drive
Debian's `chromium` + `chromium-driver` with Selenium; they are skipped, saying why, when either
binary or the `selenium` package is missing (`.ci/run` installs them). Besides the DOM (cards,
chips, model version, every <img> decoded), they check the screenshot's pixels: the page is not
blank, and where each visible card image is laid out the screenshot shows that product's
picture (compared with the image file listed in the lake).
"""

from __future__ import annotations

import html as htmlmod
import io
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

K = 12  # recommendation and similar cards per page (serving.gallery)
WINDOW = (1280, 1400)


@pytest.fixture(scope="module")
def settings(demo_workdir):
    from atelier.settings import load_settings

    return load_settings(workdir=demo_workdir)


@pytest.fixture(scope="module")
def holder(settings):
    from serving.state import StateHolder

    holder = StateHolder(settings)
    holder.reload("start")
    return holder


@pytest.fixture(scope="module")
def client(settings, holder):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings, holder)) as c:
        yield c


@pytest.fixture(scope="module")
def lake(settings):
    from atelier.lake import Lake

    return Lake(settings)


@pytest.fixture(scope="module")
def histories(lake) -> dict[str, list[str]]:
    """Each customer's latest history row: what materialisation put online."""
    frame = lake.read_pandas("customer_history").sort_values(
        ["customer_id", "event_timestamp", "created_timestamp"]
    )
    latest = frame.groupby("customer_id").tail(1)
    return {c: list(h) for c, h in zip(latest["customer_id"], latest["history"])}


@pytest.fixture(scope="module")
def customer(histories) -> str:
    """The customer with the longest history, the lowest id of a tie (the index's first)."""
    return min(histories, key=lambda c: (-len(set(histories[c])), c))


@pytest.fixture(scope="module")
def image_files(lake) -> dict[str, str]:
    """Product id → path of its main image (shot 0), as the lake lists it."""
    frame = lake.read_pandas("product_images")
    main = frame[frame["shot"] == 0]
    return dict(zip(main["product_id"], main["path"]))


@pytest.fixture(scope="module")
def model(holder) -> str:
    return holder.state.model_version


def section(html: str, name: str) -> str:
    """The HTML of `<section id="name">` (sections do not nest in the templates)."""
    found = re.search(rf'<section id="{name}"[^>]*>(.*?)</section>', html, re.S)
    assert found, f"no section {name!r} in the page"
    return found.group(1)


def card_ids(html: str) -> list[str]:
    return re.findall(r'<article class="card [^"]*" data-product-id="([^"]+)"', html)


def cards(html: str) -> dict[str, str]:
    """Product id → the HTML of its card."""
    parts = re.split(r'(?=<article class="card )', html)[1:]
    return {re.search(r'data-product-id="([^"]+)"', p).group(1): p for p in parts}


def recommend(client, customer_id: str, k: int = K) -> dict:
    r = client.post("/recommendations", json={"customer_id": customer_id, "k": k, "explain": True})
    assert r.status_code == 200, r.text
    return r.json()


# -- server-rendered HTML (TestClient) ------------------------------------------------------
def test_customer_page_shows_the_history_beside_the_api_ranking(
    client, customer, histories, image_files, model
):
    r = client.get(f"/ui/customers/{customer}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert f"model {model}" in html
    assert 'id="fallback"' not in html

    bought = section(html, "purchases")
    assert card_ids(bought) == list(dict.fromkeys(histories[customer]))
    api = recommend(client, customer)
    assert api["fallback"] is None and api["model_version"] == model
    shown = section(html, "recommendations")
    assert card_ids(shown) == [i["product_id"] for i in api["items"]]
    assert len(api["items"]) == K

    by_id = cards(shown)
    for item in api["items"]:
        card = by_id[item["product_id"]]
        assert f"#{item['rank']} · score" in card
        assert f"{item['score']:.4f}" in card
        for e in item["explanation"][:3]:
            assert f"<li>{htmlmod.escape(e['text'])}</li>" in card
        # One chip per attribute: known filled, predicted outlined with its confidence.
        attrs = client.get(f"/products/{item['product_id']}/attributes").json()["attributes"]
        chips = re.findall(
            r'<li class="chip (known|predicted)[^"]*"\s+data-attribute="(\w+)"', card
        )
        assert sorted(chips) == sorted(
            ("predicted" if a["source"] == "predicted" else "known", a["attribute"]) for a in attrs
        )
        for a in attrs:
            if a["source"] == "predicted":
                assert f"{a['confidence']:.0%} confidence" in card
        shared = re.findall(r'class="chip \w+ shared"\s+data-attribute="(\w+)"', card)
        assert sorted(shared) == sorted(e["attribute"] for e in item["explanation"])
        assert f'src="/images/{item["product_id"]}"' in card
        assert item["product_id"] in image_files


def fallbacks(client, reason: str) -> float:
    """`atelier_recommendation_fallbacks_total{reason=...}` from /metrics (0 when absent)."""
    found = re.search(
        rf'^atelier_recommendation_fallbacks_total\{{reason="{reason}"\}} (\S+)$',
        client.get("/metrics").text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_unknown_customer_page_renders_popularity_flagged(client, model):
    before = fallbacks(client, "unknown_customer")
    r = client.get("/ui/customers/nobody-we-know")
    assert fallbacks(client, "unknown_customer") == before + 1
    assert r.status_code == 200
    html = r.text
    assert 'id="fallback" data-reason="unknown_customer"' in html
    assert f"model {model}" in html
    assert card_ids(section(html, "purchases")) == []
    assert "No purchases known for this customer." in html
    api = recommend(client, "nobody-we-know")
    assert api["fallback"] == "unknown_customer"
    assert card_ids(section(html, "recommendations")) == [i["product_id"] for i in api["items"]]


def test_product_page_shows_attributes_and_the_similar_products(client, customer, histories):
    pid = histories[customer][0]
    r = client.get(f"/ui/products/{pid}")
    assert r.status_code == 200
    html = r.text
    head = section(html, "product")
    assert f'src="/images/{pid}"' in head
    attrs = client.get(f"/products/{pid}/attributes").json()["attributes"]
    assert len(re.findall(r'<li class="chip ', head)) == len(attrs) > 0
    for a in attrs:
        assert f'data-attribute="{a["attribute"]}"' in head
    api = client.get(f"/products/{pid}/similar", params={"k": K}).json()
    assert card_ids(section(html, "similar")) == [i["product_id"] for i in api["items"]]
    assert len(api["items"]) == K
    assert f"model {api['model_version']}" in html

    missing = client.get("/ui/products/no-such-product")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "unknown product &#39;no-such-product&#39;" in missing.text


def test_index_links_the_longest_histories_and_popular_products(client, customer):
    html = client.get("/ui/").text
    links = re.findall(r'href="/ui/customers/([^"]+)"', section(html, "customers"))
    assert links[0] == customer and len(links) == len(set(links)) > 1
    popular = recommend(client, "nobody-we-know")["items"]  # popularity, nothing excluded
    want = [i["product_id"] for i in popular if i["score"] > 0]
    assert card_ids(section(html, "popular")) == want and want
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"


def test_images_come_only_from_the_product_images_table(client, image_files):
    pid, path = sorted(image_files.items())[0]
    r = client.get(f"/images/{pid}")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content == Path(path).read_bytes()
    assert client.get(f"/images/{pid}", params={"shot": 0}).content == r.content
    r = client.get(f"/images/{pid}", params={"shot": 7})
    assert r.status_code == 404 and r.json()["detail"] == f"no image for shot 7 of product {pid!r}"
    assert client.get("/images/no-such-product").status_code == 404
    assert client.get(f"/images/{pid}", params={"shot": -1}).status_code == 422
    # A path is never a product id: traversal attempts find no row.
    for sneaky in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..", "%2E%2E"):
        assert client.get(f"/images/{sneaky}").status_code == 404


def test_pages_say_not_ready_before_a_state_is_loaded(settings):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.state import StateHolder

    # No `with`: the lifespan (which would start loading) does not run.
    client = TestClient(create_app(settings, StateHolder(settings)))
    r = client.get("/ui/")
    assert r.status_code == 503 and r.headers["content-type"].startswith("text/html")
    assert "loading the model" in r.text and "model-version" not in r.text
    assert client.get("/ui/customers/anyone").status_code == 503
    assert client.get("/images/0108775015").status_code == 503


# -- real headless Chromium -----------------------------------------------------------------
def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, a 1280×1400 CSS px viewport at scale 1."""
    chromium = _binary("chromium", "chromium-browser", "google-chrome")
    driver_bin = _binary("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip(
            "no Chromium browser or chromedriver on PATH (Debian: apt-get install chromium "
            f"chromium-driver); found browser={chromium}, driver={driver_bin}"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the selenium package is not installed (pip install .[dev])"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_bin), options=options)
    # The window size includes the (invisible) browser frame: fix the viewport itself.
    width, height = WINDOW
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def server(settings, holder):
    """The real app served by uvicorn on a free port of 127.0.0.1: its base URL."""
    import uvicorn

    from serving.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, holder), log_level="warning", access_log=False, lifespan="on"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


IMAGES_STATE = """
return Array.from(document.images).map(i => {
  const r = i.getBoundingClientRect();
  return {src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
          left: r.left, top: r.top, width: r.width, height: r.height};
});
"""


def _open(browser, url: str) -> list[dict]:
    """Load `url`, wait until every image finished (loaded or failed); the images' state."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"
        )
    )
    return browser.execute_script(IMAGES_STATE)


def _count(browser, css: str) -> int:
    from selenium.webdriver.common.by import By

    return len(browser.find_elements(By.CSS_SELECTOR, css))


def _screenshot_shows_the_images(browser, images: list[dict], files: dict[str, str], out: Path):
    """The viewport screenshot is the size set, not blank, and shows each visible card image
    (its laid-out box, cropped from the screenshot, looks like the product's image file)."""
    from PIL import Image

    png = browser.get_screenshot_as_png()
    out.write_bytes(png)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert shot.size == (width, height) == WINDOW
    pixels = np.asarray(shot, np.int16)
    # A blank page, or one of text and flat boxes only, fails these: the pages have a dark
    # header, photos, filled chips and text on a light background (about 20% darker than
    # light grey and 50,000 colours on the demo catalogue).
    ink = (pixels.max(axis=2) < 200).mean()
    assert ink > 0.1, f"only {ink:.1%} of the screenshot is darker than light grey"
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 5000, f"the screenshot has only {colours} distinct colours"

    def thumb(image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize((16, 24), Image.BILINEAR), np.float32)

    pictures = {}  # product id → its image file, small: what each crop is compared with
    for img in images:
        pid = img["src"].removeprefix("/images/")
        with Image.open(files[pid]) as source:
            pictures[pid] = thumb(source)
    compared = 0
    for img in images:
        pid = img["src"].removeprefix("/images/")
        # The box `object-fit: contain` draws the picture in, in screenshot pixels.
        scale = min(img["width"] / img["w"], img["height"] / img["h"])
        dw, dh = img["w"] * scale, img["h"] * scale
        left = img["left"] + (img["width"] - dw) / 2
        top = img["top"] + (img["height"] - dh) / 2
        box = tuple(round(v) for v in (left, top, left + dw, top + dh))
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height or dw < 40:
            continue  # not fully in the viewport
        seen = thumb(shot.crop(box))
        diffs = {p: float(np.abs(seen - picture).mean()) for p, picture in pictures.items()}
        # Mean absolute difference in 0-255 levels: the demo's pictures match within 1 and
        # differ from each other by 5 or more.
        assert diffs[pid] < 8, f"the screenshot at {box} does not show {pid}'s image: {diffs}"
        assert diffs[pid] == min(diffs.values()), f"{box} looks more like another: {diffs}"
        compared += 1
    return compared


def test_customer_page_in_chromium(
    browser, server, customer, histories, image_files, model, tmp_path
):
    from PIL import Image

    images = _open(browser, f"{server}/ui/customers/{customer}")
    assert _count(browser, "section#purchases") == 1
    assert _count(browser, "section#recommendations") == 1
    n_bought = len(set(histories[customer]))
    assert _count(browser, "#purchases article.card") == n_bought >= 1
    assert _count(browser, "#recommendations article.card") == K
    assert _count(browser, "#recommendations article.card .chip.known") > 0
    assert _count(browser, "#recommendations article.card .chip.predicted") > 0
    assert _count(browser, "#purchases article.card .chip") > 0
    header = browser.find_element("id", "model-version").text
    assert header == f"model {model}"

    # Every card has one image, and every image decoded (a broken one has naturalWidth 0).
    assert len(images) == n_bought + K
    broken = [i["src"] for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert broken == []
    for i in images:
        pid = i["src"].removeprefix("/images/")
        with Image.open(image_files[pid]) as source:
            assert (i["w"], i["h"]) == source.size

    # Chips look different: known filled, predicted outlined (computed styles, not classes).
    known, predicted = browser.execute_script(
        "const s = c => getComputedStyle(document.querySelector(c));"
        "return [s('#recommendations .chip.known').backgroundColor,"
        "        s('#recommendations .chip.predicted').borderStyle];"
    )
    assert known != "rgb(255, 255, 255)" and "dashed" in predicted

    compared = _screenshot_shows_the_images(browser, images, image_files, tmp_path / "customer.png")
    assert compared >= 4, f"only {compared} card images were inside the viewport"


def test_product_page_in_chromium(browser, server, customer, histories, image_files, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    pid = histories[customer][0]
    images = _open(browser, f"{server}/ui/products/{pid}")
    assert _count(browser, "section#product .chip") > 0
    assert _count(browser, "#similar article.card") == K
    assert len(images) == 1 + K and images[0]["src"] == f"/images/{pid}"
    assert all(i["complete"] and i["w"] > 0 for i in images)
    compared = _screenshot_shows_the_images(browser, images, image_files, tmp_path / "product.png")
    assert compared >= 2

    # A link of a similar card leads to that product's page.
    first = browser.find_element("css selector", "#similar article.card h3 a")
    target = first.get_attribute("href").rsplit("/", 1)[1]
    first.click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith(f"/ui/products/{target}"))
    assert browser.find_element("id", "product").get_attribute("data-product-id") == target
