"""The page at `/` in a real browser (Debian's headless chromium through chromium-driver and
selenium): what a person sees, and that it follows a release without a reload. Run by
tests/serve_page.rs, which has set the store up; prints one JSON document of what was seen.

usage: page_check.py URL TOKEN LOCK HOLDER_TOKEN SCREENSHOT_DIR
"""
import json
import os
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--user-data-dir=" + tempfile.mkdtemp(prefix="chromium-")]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)


def card(d, lock):
    for c in d.find_elements(By.CSS_SELECTOR, "article.lock"):
        if c.get_attribute("data-lock") == lock:
            return c
    return None


def wait(what, check, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = check()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for " + what)


def main():
    url, token, lock, holder_token, shots = sys.argv[1:6]
    d = browser()
    out = {}
    try:
        d.set_window_size(390, 844)  # a phone
        d.get(url + "/")
        d.execute_script("window.__notReloaded = true;")
        c = wait("the lock's card", lambda: card(d, lock))
        out["holder"] = c.find_element(By.CSS_SELECTOR, "dd.holder").text
        out["pipeline"] = c.find_element(By.CSS_SELECTOR, "dd.pipeline a").get_attribute("href")
        out["fence"] = c.find_element(By.CSS_SELECTOR, "dd.fence").text
        out["lease_left"] = c.find_element(By.CSS_SELECTOR, "dd.lease-left").text
        out["queue"] = [li.find_element(By.CSS_SELECTOR, ".who").text for li in c.find_elements(By.CSS_SELECTOR, "ol.queue li")]
        c.find_element(By.CSS_SELECTOR, "summary").click()
        out["timeline"] = [li.text for li in c.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
        out["cards"] = len(d.find_elements(By.CSS_SELECTOR, "article.lock"))
        out["next_page"] = len(d.find_elements(By.CSS_SELECTOR, "a.next")) == 1
        out["overflows"] = d.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1;")
        d.save_screenshot(os.path.join(shots, "serve-page-held.png"))

        # The holder releases (over the API, as a later job would); the page follows by itself.
        body = json.dumps({"lock": lock, "owner": out["holder"], "token": holder_token}).encode()
        req = urllib.request.Request(url + "/api/v1/release", data=body, method="POST",
                                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=20).read()
        wait("the waiter shown as holder", lambda: card(d, lock).find_element(By.CSS_SELECTOR, "dd.holder").text != out["holder"], 30)
        c = card(d, lock)
        out["holder_after"] = c.find_element(By.CSS_SELECTOR, "dd.holder").text
        out["queue_after"] = [li.text for li in c.find_elements(By.CSS_SELECTOR, "ol.queue li")]
        out["history_open_after"] = c.find_element(By.CSS_SELECTOR, "details").get_attribute("open") is not None
        out["timeline_after"] = [li.text for li in c.find_elements(By.CSS_SELECTOR, "ol.timeline li")]
        out["not_reloaded"] = d.execute_script("return window.__notReloaded === true;")
        d.save_screenshot(os.path.join(shots, "serve-page-after-release.png"))

        d.find_element(By.CSS_SELECTOR, "a.next").click()
        wait("the second page", lambda: card(d, lock) is None)
        out["second_page_cards"] = len(d.find_elements(By.CSS_SELECTOR, "article.lock"))
    finally:
        d.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
