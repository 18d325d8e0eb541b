"""Drives the admin status page in Debian's headless Chromium (selenium +
chromedriver) for the end-to-end test, step by step with the Rust side:

    python3 status_page.py ADMIN_URL TOKEN DOWN_URL SCREENSHOT

Prints one line per step reached (LOGGED-IN, SPARKED, SEEN-DOWN,
SEEN-BACK, LIMITED, EDITED, DONE) and waits for a line on stdin where the
test must act first (after LOGGED-IN: the test sends requests through the
gateway and writes a line; after SPARKED: it stops the backend at DOWN_URL
and writes a line; after SEEN-DOWN: it starts it again and writes a line).
Any failure prints FAILED with the reason and exits 1.
"""

import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

admin, token, down_url, screenshot = sys.argv[1:5]


def say(line):
    print(line, flush=True)


def wait(what, check, timeout=20):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception as error:  # the page re-renders under us
            last = error
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def sparklines(driver, url):
    """The y coordinates of each sparkline (rate, latency, errors) in the
    backend's row; 23 is the baseline, smaller is higher."""
    lines = driver.find_elements(By.CSS_SELECTOR, f'#backends tr[data-url="{url}"] svg.spark polyline')
    return [[float(p.split(",")[1]) for p in line.get_attribute("points").split()] for line in lines]


def rose(driver, url):
    """Rate and latency sparklines rose from the baseline; errors stayed flat."""
    lines = sparklines(driver, url)
    if len(lines) != 3:
        return False
    rate, latency, errors = lines
    return min(rate) < 23 and min(latency) < 23 and set(errors) == {23.0}


def health(driver, url):
    cells = driver.find_elements(By.CSS_SELECTOR, f'#backends tr[data-url="{url}"] td.health')
    return cells[0].text if cells else None


options = Options()
for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
    options.add_argument(flag)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(admin + "/")
    wait("the token form", lambda: driver.find_element(By.ID, "token").is_displayed())
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "token-save").click()
    wait("two healthy backends", lambda: len(driver.find_elements(By.CSS_SELECTOR, "#backends td.health")) == 2
         and all(c.text == "up" for c in driver.find_elements(By.CSS_SELECTOR, "#backends td.health")))
    say("LOGGED-IN")

    sys.stdin.readline()
    wait("the request rate and latency sparklines rising", lambda: rose(driver, down_url))
    say("SPARKED")

    sys.stdin.readline()
    wait("the stopped backend shown down", lambda: health(driver, down_url) == "down")
    say("SEEN-DOWN")

    sys.stdin.readline()
    wait("the backend shown up again", lambda: health(driver, down_url) == "up")
    say("SEEN-BACK")

    wait("the refused client listed", lambda: "ip:127.0.0.1" in driver.find_element(By.ID, "limited").text)
    say("LIMITED")

    form = {"client-id": "ip:10.9.8.7", "client-capacity": "42", "client-refill": "4"}
    for field, value in form.items():
        driver.find_element(By.ID, field).clear()
        driver.find_element(By.ID, field).send_keys(value)
    driver.find_element(By.ID, "client-save").click()
    row = '#clients tr[data-client="ip:10.9.8.7"]'
    wait("the new client row", lambda: driver.find_element(By.CSS_SELECTOR, row + " td.capacity").text == "42")
    driver.find_element(By.CSS_SELECTOR, row + " button.edit").click()
    driver.find_element(By.ID, "client-capacity").clear()
    driver.find_element(By.ID, "client-capacity").send_keys("77")
    driver.find_element(By.ID, "client-save").click()
    wait("the edited capacity", lambda: driver.find_element(By.CSS_SELECTOR, row + " td.capacity").text == "77")
    say("EDITED")

    time.sleep(2.5)  # a few samples in the sparklines
    driver.save_screenshot(screenshot)
    say("DONE")
except Exception as error:
    say(f"FAILED {error}")
    try:
        say("PAGE " + driver.find_element(By.TAG_NAME, "main").text.replace("\n", " | "))
    except Exception:
        pass
    sys.exit(1)
finally:
    driver.quit()
