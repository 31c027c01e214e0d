"""The chat page's own behaviour in headless Chromium, against a scripted stand-in for the API (a plain
http.server streaming chosen text), so the reply can be hostile on purpose: Markdown and code render, HTML in a
reply stays text, Stop aborts the streaming request, the system prompt is sent first."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PAGE = Path(__file__).parents[2] / "danlu" / "serve" / "static" / "index.html"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--window-size=1000,800"]  # fmt: skip

HOSTILE = (
    'Here is **bold** and `x < y` and <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script>.\n\n'
    "```python\ndef f(a, b):\n    return a < b  # <b>not bold</b>\n```\n\n"
    "- one\n- two [link](javascript:alert(1))\n\n中文回答：丹炉。"
)


class FakeAPI(BaseHTTPRequestHandler):
    """GET / the real page; /v1/models one model; POST /v1/chat/completions streams `script` (a list of
    deltas) with `delay` seconds between them, recording each request body and whether the client hung up."""

    script: list[str] = []
    delay = 0.0
    bodies: list[dict] = []
    hung_up = threading.Event()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/":
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "fake"}]}).encode(), "application/json")
        else:
            self._send(404, b"{}", "application/json")

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        FakeAPI.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for piece in FakeAPI.script:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(FakeAPI.delay)
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            FakeAPI.hung_up.set()


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def ask(browser, site, text: str, system: str = "") -> WebDriverWait:
    browser.get(site + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "fake")
    if system:
        browser.find_element(By.ID, "system").send_keys(system)
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    return wait


def test_markdown_renders_and_html_in_a_reply_stays_text(site, browser, tmp_path):
    FakeAPI.script, FakeAPI.delay = [HOSTILE[i : i + 7] for i in range(0, len(HOSTILE), 7)], 0.0
    wait = ask(browser, site, "Show me some code", system="Answer in Markdown.")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-state='done']"))
    answer = browser.find_element(By.CSS_SELECTOR, ".assistant")
    assert answer.get_attribute("data-raw") == HOSTILE
    # no element came from the reply's HTML, and none of its script ran
    assert answer.find_elements(By.CSS_SELECTOR, "img, script") == []
    assert browser.execute_script("return window.pwned") is None
    assert '<img src=x onerror="window.pwned=1">' in answer.text and "<script>" in answer.text
    # Markdown: strong, inline code, a fenced block kept exactly, a list; the javascript: link is not a link
    assert answer.find_element(By.CSS_SELECTOR, "p strong").text == "bold"
    assert answer.find_element(By.CSS_SELECTOR, "p code").text == "x < y"
    block = answer.find_element(By.CSS_SELECTOR, "pre > code")
    assert block.get_attribute("textContent") == "def f(a, b):\n    return a < b  # <b>not bold</b>"
    assert block.get_attribute("data-lang") == "python"
    assert [li.text for li in answer.find_elements(By.CSS_SELECTOR, "ul > li")][0] == "one"
    assert answer.find_elements(By.CSS_SELECTOR, "a") == []
    mono = browser.execute_script("return getComputedStyle(arguments[0]).fontFamily", block)
    sans = browser.execute_script("return getComputedStyle(arguments[0]).fontFamily", answer)
    assert "monospace" in mono and "Noto Sans CJK SC" in sans and "PingFang SC" in sans
    # the system prompt went first, then the conversation
    sent = FakeAPI.bodies[-1]["messages"]
    assert sent == [{"role": "system", "content": "Answer in Markdown."},
                    {"role": "user", "content": "Show me some code"}]  # fmt: skip
    browser.save_screenshot(str(Path("/tmp") / "danlu_web_ui.png"))


def test_stop_aborts_the_stream_and_keeps_the_partial_reply(site, browser):
    FakeAPI.script, FakeAPI.delay = [f"word{i} " for i in range(200)], 0.05  # 10 s if nobody stops it
    FakeAPI.hung_up.clear()
    wait = ask(browser, site, "Talk for a long time")
    wait.until(lambda d: d.execute_script("return window.danluChunks") >= 3)
    stop = browser.find_element(By.ID, "stop")
    assert stop.is_displayed() and not browser.find_element(By.ID, "send").is_displayed()
    stop.click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-state='done']"))
    chunks = browser.execute_script("return window.danluChunks")
    time.sleep(0.5)
    assert browser.execute_script("return window.danluChunks") == chunks < 200  # nothing more arrives
    assert FakeAPI.hung_up.wait(5)  # the request itself was aborted: the server saw the client go
    assert browser.find_element(By.CSS_SELECTOR, ".note").text == "[stopped]"
    assert browser.find_elements(By.CSS_SELECTOR, ".error") == []
    assert browser.find_element(By.ID, "send").is_displayed()
    # the partial reply stays in the conversation: the next request carries it
    FakeAPI.script, FakeAPI.delay = ["ok"], 0.0
    browser.find_element(By.ID, "input").send_keys("go on")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".assistant[data-state='done']")) == 2)
    sent = FakeAPI.bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"].startswith("word0 word1 word2")
