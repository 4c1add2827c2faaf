"""`minivlm-hf serve` in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`) via Selenium.

The page is driven as a user would: click the example image, upload another, ask a question, rank captions, judge a statement,
upload a file that is not an image. What the page shows is read from the DOM and compared with what
`minivlm_hf.inference` returns for the same image. Skipped when Chromium is missing, except under CI (`CI=1`),
where that is a failure.
"""

import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from serve_utils import make_demo_folder

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
QUESTION = "how many objects are there?"
STATEMENT = "there is a green star"


def _require(condition: bool, why: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (required under CI)")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _require(CHROMIUM.is_file() and CHROMEDRIVER.is_file(),
             "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require(False, "needs selenium (pip install selenium)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1700",
                 # nothing but loopback resolves: a page that tried to reach the network would fail visibly
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from minivlm_hf.serve.app import serve

    folder = make_demo_folder(tmp_path_factory.mktemp("demo_out"))
    port = _free_port()
    demo = serve([str(folder)], port=port, block=False, quiet=True, detection_threshold=0.1)
    yield folder, f"http://127.0.0.1:{port}/"
    demo.close()


def _wait(driver, condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # noqa: BLE001 - the page is still rendering
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; page text:\n{driver.find_element('tag name', 'body').text}")


def _rows(driver, elem_id: str) -> list[list[str]]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0] + ' tbody tr'))"
        ".map(tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent.trim()));", f"#{elem_id}")


def _type(element, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def test_every_task_from_the_browser(browser, served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from minivlm_hf import inference
    from minivlm_hf.assets import EXAMPLE_IMAGE
    from minivlm_hf.serve.app import DEFAULT_CAPTIONS, detection_rows

    folder, url = served
    model, processor = inference.load("detector", str(folder / "detector"))
    browser.get(url)

    # the bundled example, one click: every task runs
    example = inference.open_image(EXAMPLE_IMAGE).convert("RGB")
    _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#examples button"), "the example").click()
    _wait(browser, lambda: len(_rows(browser, "latency")) == 4, "the four tasks' latencies")
    expected = inference.detect(model, processor, [example], threshold=0.1)[0]
    assert _rows(browser, "detections") == [[str(v) for v in row] for row in detection_rows(expected)]

    # an uploaded image (the example mirrored, so that every result changes): boxes with their attributes, as
    # minivlm_hf.inference finds them
    image = example.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image.save(tmp_path / "mirrored.png")
    browser.find_element(By.CSS_SELECTOR, "#image button[aria-label='Remove Image']").click()
    _wait(browser, lambda: not _rows(browser, "latency"), "the results to clear")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(tmp_path / "mirrored.png"))
    _wait(browser, lambda: len(_rows(browser, "latency")) == 4, "the four tasks' latencies")
    expected = inference.detect(model, processor, [image], threshold=0.1)[0]
    assert expected, "the tiny detector finds regions above 0.1"
    assert _rows(browser, "detections") == [[str(v) for v in row] for row in detection_rows(expected)]
    shown = browser.execute_script("return document.querySelector('#detections-image img').src")
    assert shown.startswith(url)

    # the caption, decoded as the model's generation_config says (the page's defaults)
    model, processor = inference.load("caption", str(folder / "caption"))
    limit = model.config.max_text_length - 2
    settings = dict(num_beams=model.generation_config.num_beams or 1,
                    length_penalty=model.generation_config.length_penalty or 1.0,
                    max_new_tokens=min(model.generation_config.max_new_tokens or 20, limit))
    caption = inference.caption(model, processor, [image], do_sample=False, **settings)[0]
    assert caption and browser.execute_script("return document.querySelector('#caption textarea').value") == caption

    # the captions typed in the page, ranked
    model, processor = inference.load("retrieval", str(folder / "retrieval"))
    ranking = inference.rank_captions(model, processor, image, DEFAULT_CAPTIONS.splitlines())
    assert _rows(browser, "ranking") == [[str(i + 1), r["caption"], f"{r['score']:.3f}"]
                                         for i, r in enumerate(ranking)]

    # a typed question (Enter runs it): answers with scores
    model, processor = inference.load("vqa", str(folder / "vqa"))
    answers = inference.answer(model, processor, image, QUESTION, top_k=5)
    question = browser.find_element(By.CSS_SELECTOR, "#question textarea")
    _type(question, QUESTION)
    question.send_keys(Keys.ENTER)
    expected_answers = [[a["answer"], f"{a['score']:.3f}"] for a in answers]
    _wait(browser, lambda: _rows(browser, "answers") == expected_answers, f"the answers {expected_answers}")
    latency = {task: float(ms) for task, ms in _rows(browser, "latency")}
    assert set(latency) == {"detector", "caption", "vqa", "retrieval"} and all(v >= 0 for v in latency.values())

    # NLVR: a statement about the image and itself
    browser.find_element(By.XPATH, "//*[@id='nlvr']//button[contains(., 'Is a statement true of two images?')]").click()
    statement = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#statement textarea"), "NLVR")
    _type(statement, STATEMENT)
    browser.find_element(By.CSS_SELECTOR, "#judge").click()
    model, processor = inference.load("nlvr", str(folder / "nlvr"))
    verdict = inference.judge(model, processor, STATEMENT, image, image)
    text = _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#verdict").text, "the verdict")
    assert text.startswith(f"{'true' if verdict['label'] else 'false'} (P(true) = {verdict['score']:.3f})")

    screenshot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000

    # a file that is not an image: one message in the page, naming it
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"this is not a PNG")
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(bad))
    toast = _wait(browser, lambda: "holiday.png" in browser.find_element(By.TAG_NAME, "body").text
                  and browser.find_element(By.XPATH, "//*[contains(text(), 'holiday.png')]").text, "the error message")
    assert toast.startswith("holiday.png: not a readable image")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and "/tmp/gradio" not in body
    browser.save_screenshot(str(tmp_path / "serve_bad_upload.png"))

    # nothing but the app's own server was asked for anything (no CDN, fonts or analytics)
    requested = {json.loads(entry["message"])["message"]["params"]["request"]["url"]
                 for entry in browser.get_log("performance")
                 if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"}
    hosts = {urlparse(u).netloc for u in requested if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {urlparse(url).netloc}, sorted(requested)

