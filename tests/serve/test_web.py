"""The web chat page in headless Chromium (Selenium with Debian's chromium and chromium-driver): type a message,
watch the answer stream in piece by piece, and find it equal to the API's answer for the same conversation."""

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from danlu.serve.api import ServeConfig, create_app
from danlu.serve.server import BackgroundServer

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser(chromium):  # tests/conftest.py: Debian's chromium and chromedriver, or a line naming ./setup-dev
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    service = Service(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_the_page_streams_an_answer(tiny, browser):
    model, tokenizer = tiny
    with BackgroundServer(create_app(model, tokenizer, ServeConfig(model_name="tiny-world"))) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text == "tiny-world")
        for field, value in (("temperature", "0"), ("max-tokens", "24")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "input").send_keys("What is the capital of Hetoris?")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".assistant[data-state='done']"))
        shown = browser.find_element(By.CSS_SELECTOR, ".assistant").get_attribute("textContent")
        assert browser.find_elements(By.CSS_SELECTOR, ".error") == []
        assert browser.execute_script("return window.danluChunks") > 3  # it arrived in pieces
        messages = [{"role": "user", "content": "What is the capital of Hetoris?"}]
        api = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "tiny-world", "messages": messages, "temperature": 0, "max_tokens": 24},
            timeout=60,
        ).json()
        assert shown == api["choices"][0]["message"]["content"] and shown
