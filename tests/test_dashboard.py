"""The dashboard at `/ui`, in a real browser: Debian's headless `chromium`, driven by Selenium
through Debian's `chromium-driver` (scripts/install-test-servers installs both; nothing is
downloaded at test time). One browser serves the whole module.

Screenshots of the job list and of a job's page are saved under `$AISDL_SCREENSHOTS` when set
(the README's pictures in docs/ are made so), else in a pytest temporary folder; the path is
printed.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from aisdl.api.auth import RW
from conftest import Node
from helpers import free_port, wait_job
from origin import payload

T = TypeVar("T")
WAIT = 20.0  # seconds for anything the page should show; it polls once a second
SECRET = b"dashboard-test-secret-of-32-bytes-or-more"


def _program(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file()
                                      else None)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} is not installed: run scripts/install-test-servers"
                " (Debian's chromium and chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = _program("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1300", "--no-proxy-server", "--disable-extensions",
                "--disable-background-networking", "--no-first-run"):
        options.add_argument(arg)
    # The system's chromedriver, named: Selenium Manager (which downloads browsers) never runs.
    service = Service(executable_path=_program("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("AISDL_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {path}")
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One node for the module's tests without tokens (each starts its own jobs)."""
    home = tmp_path_factory.mktemp("dashboard")
    n = Node(free_port(), home / "home", home / "node.log", extra_args=("--retry-delay", "50ms"))
    n.start()
    try:
        yield n
    finally:
        n.stop()


def until(what: str, check: Callable[[], T | None], timeout: float = WAIT) -> T:
    """`check()`'s first truthy answer, asked every 0.1 s; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
        except StaleElementReferenceException:  # a row redrawn between find and read
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"the page did not show {what} within {timeout}s")
        time.sleep(0.1)


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def rows(driver: WebDriver, table_id: str) -> list[str]:
    return [str(r.text) for r in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")]


def shown(driver: WebDriver, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def session(token: str | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    if token:
        s.headers["Authorization"] = f"Bearer {token}"
    return s


def start_from_the_form(driver: WebDriver, source: str, dest: str, description: str) -> str:
    """Fills the start form, submits it from the keyboard (Enter), returns the new job's id."""
    for field, value in (("source", source), ("dest", dest), ("description", description)):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    driver.find_element(By.ID, "description").send_keys(Keys.ENTER)
    until("the new job's page", lambda: "#/jobs/dnl-" in driver.current_url)
    job_id = driver.current_url.split("#/jobs/", 1)[1]
    until("the job's id", lambda: text(driver, "job-id") == job_id)
    return job_id


# -- the page's own read of one job (no browser) -----------------------------------------------
def test_a_job_as_the_page_reads_it_only_what_is_new(node: Node, origin: Any) -> None:
    for i in (0, 1):
        origin.add(f"/n/f-{i}.bin", payload(f"n{i}", 3000))
    template = origin.url + "/n/f-{0..3}.bin"  # f-2 and f-3 are missing: two 404 errors
    s = session()
    job = s.post(f"{node.endpoint}/v1/download", timeout=10, json={
        "type": "range", "bucket": {"name": "news"}, "template": template}).json()["id"]
    wait_job(node.endpoint, job)
    url = f"{node.endpoint}/ui/api/jobs/{job}"

    first = s.get(url, params={"errors_after": "0", "tasks_after": "0"}, timeout=10).json()
    assert first["job"]["id"] == job and first["job"]["error_cnt"] == 2
    assert "download_errors" not in first["job"]  # the errors come after a cursor instead
    assert sorted(name for name, _ in first["errors"]) == ["f-2.bin", "f-3.bin"]
    assert all("404" in message for _, message in first["errors"])
    # every task that ended (the two 404s too), and the bytes of the two that came
    assert first["finished"]["files"] == 4 and first["finished"]["bytes"] == 6000
    assert first["recorded_bytes"] == 6000  # all of them, however many files the job has

    again = s.get(url, timeout=10, params={"errors_after": str(first["errors_after"]),
                                           "tasks_after": str(first["finished"]["tasks_after"])})
    assert again.json()["errors"] == [] and again.json()["finished"]["files"] == 0
    assert again.json()["errors_after"] == first["errors_after"]

    bad = s.get(url, params={"errors_after": "last"}, timeout=10)
    assert bad.status_code == 400 and "errors_after" in bad.json()["message"]
    assert s.get(f"{node.endpoint}/ui/api/jobs/dnl-nosuchjob", timeout=10).status_code == 404


def test_the_page_is_served_with_a_strict_policy(node: Node) -> None:
    s = session()
    root = s.get(node.endpoint + "/", timeout=10, allow_redirects=False)
    assert root.status_code == 302 and root.headers["Location"] == "/ui"
    for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"),
                       ("/ui/app.css", "text/css")):
        r = s.get(node.endpoint + path, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(kind), path
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert s.get(node.endpoint + "/ui/secret.py", timeout=10).status_code == 404


# -- in the browser ----------------------------------------------------------------------------
def test_start_watch_filter_stop_and_remove_a_job(node: Node, origin: Any, browser: WebDriver,
                                                  screenshots: Path) -> None:
    size = 48 << 10
    for i in range(10):  # each file takes 0.4 s more than the last: progress moves for 4 s
        origin.add(f"/d/f-{i}.bin", payload(f"d{i}", size))
        origin.fault(f"/d/f-{i}.bin", "slow", rate=int(size / (0.4 * (i + 1))))
    origin.add("/d/f-12.bin", payload("d12", size))
    origin.fault("/d/f-12.bin", "hang", seconds=60)  # keeps the job running until it is stopped
    # f-10 and f-11 are missing: two 404s. A finished job, too, for the list's picture.
    origin.add("/one.bin", payload("one", 5000))
    s = session()
    done = s.post(f"{node.endpoint}/v1/download", timeout=10, json={
        "type": "single", "bucket": {"name": "dash"}, "link": origin.url_for("/one.bin"),
        "object_name": "one.bin", "description": "a finished job"}).json()["id"]
    wait_job(node.endpoint, done)

    browser.get(node.endpoint + "/")
    until("the job list", lambda: shown(browser, "list-view") and rows(browser, "jobs"))
    assert browser.current_url.endswith("/ui")
    job = start_from_the_form(browser, origin.url + "/d/f-{0..12}.bin", "ais://dash/shards/",
                              "dashboard test")

    # progress moves: the page shows the count going up while files are in flight
    counts: set[str] = set()
    most_in_flight = 0

    def progressed() -> bool:
        nonlocal most_in_flight
        counts.add(text(browser, "job-done").split(" ")[0])
        most_in_flight = max(most_in_flight, len(rows(browser, "inflight")))
        return "12/13" in counts

    until("12 of 13 files done", progressed)
    assert len(counts) >= 3, f"progress seen: {sorted(counts)}"
    assert most_in_flight >= 1
    until("the hanging file in flight", lambda: any("f-12.bin" in r
                                                    for r in rows(browser, "inflight")))
    assert text(browser, "job-status") == "Running"

    # the errors, and their filter
    until("both 404s in the error table", lambda: len(rows(browser, "errors")) == 2)
    assert all("404" in r for r in rows(browser, "errors"))
    box = browser.find_element(By.ID, "error-filter")
    box.send_keys("f-11")
    until("only f-11's error", lambda: (shown := rows(browser, "errors")) and len(shown) == 1
          and shown[0].startswith("shards/f-11.bin"))
    box.send_keys("-no-such")
    until("no error matching", lambda: not rows(browser, "errors")
          and shown(browser, "errors-empty"))
    assert "No errors match" in text(browser, "errors-empty")
    box.clear()
    box.send_keys(" ")  # `clear()` sends no input event; a blank filter is no filter
    until("both errors again", lambda: len(rows(browser, "errors")) == 2)
    browser.save_screenshot(str(screenshots / "dashboard-job.png"))

    # stop
    assert browser.find_element(By.ID, "remove").get_attribute("disabled")
    browser.find_element(By.ID, "stop").click()
    until("the job aborted", lambda: text(browser, "job-status") == "Aborted")
    status = s.get(f"{node.endpoint}/v1/download", json={"id": job}, timeout=10).json()
    assert status["aborted"] is True and status["finished_cnt"] == 10
    assert browser.find_element(By.ID, "stop").get_attribute("disabled")

    # the list shows it, with its errors
    browser.find_element(By.LINK_TEXT, "← All jobs").click()
    row = until("the job in the list", lambda: next(
        (r for r in rows(browser, "jobs") if job in r), None))
    assert "Aborted" in row and "12/13" in row and "dashboard test" in row
    browser.save_screenshot(str(screenshots / "dashboard-jobs.png"))

    # remove
    browser.find_element(By.LINK_TEXT, job).click()
    until("the stopped job's page", lambda: text(browser, "job-status") == "Aborted")
    browser.find_element(By.ID, "remove").click()
    until("the list without the job", lambda: shown(browser, "list-view") and rows(
        browser, "jobs") and not any(job in r for r in rows(browser, "jobs")))
    ids = [j["id"] for j in s.get(f"{node.endpoint}/v1/download", timeout=10).json()]
    assert job not in ids and done in ids


def test_errors_come_fifty_to_a_page(node: Node, origin: Any, browser: WebDriver) -> None:
    s = session()
    job = s.post(f"{node.endpoint}/v1/download", timeout=10, json={
        "type": "range", "bucket": {"name": "pages"},
        "template": origin.url + "/none/f-{0..119}.bin"}).json()["id"]  # 120 404s
    wait_job(node.endpoint, job)
    browser.get(f"{node.endpoint}/ui#/jobs/{job}")
    until("the first page of errors", lambda: text(browser, "errors-page")
          == "Errors 1–50 of 120")
    assert len(rows(browser, "errors")) == 50
    assert browser.find_element(By.ID, "errors-prev").get_attribute("disabled")
    browser.find_element(By.ID, "errors-next").send_keys(Keys.ENTER)  # from the keyboard
    until("the second page", lambda: text(browser, "errors-page") == "Errors 51–100 of 120")
    browser.find_element(By.ID, "errors-next").click()
    until("the last page", lambda: text(browser, "errors-page") == "Errors 101–120 of 120")
    assert len(rows(browser, "errors")) == 20
    assert browser.find_element(By.ID, "errors-next").get_attribute("disabled")
    browser.find_element(By.ID, "error-filter").send_keys("F-11")  # any case
    until("f-11 and f-110..f-119", lambda: text(browser, "errors-page") == "Errors 1–11 of 11")
    names = sorted(r.split(" ")[0] for r in rows(browser, "errors"))
    assert names == sorted(["f-11.bin", *(f"f-11{i}.bin" for i in range(10))])
    assert text(browser, "error-count") == "11 of 120 match"


def test_with_tokens_the_page_asks_for_one_and_works_with_it(
        origin: Any, browser: WebDriver, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    node = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
                extra_args=("--auth-secret", str(secret)))
    node.start()
    try:
        origin.add("/a.bin", payload("a", 20_000))
        browser.get(node.endpoint + "/ui")
        until("the token form", lambda: shown(browser, "login-view"))
        token_box = browser.find_element(By.ID, "token")
        token_box.send_keys("not-a-token", Keys.ENTER)
        until("the refusal", lambda: "refused the token" in text(browser, "alert"))

        good = jwt.encode({"sub": "dash", "admin": True, "exp": int(time.time()) + 600},
                          SECRET, algorithm="HS256")
        browser.find_element(By.ID, "token").send_keys(good, Keys.ENTER)
        until("the job list", lambda: shown(browser, "list-view"))
        job = start_from_the_form(browser, origin.url_for("/a.bin"), "ais://secured/a.bin",
                                  "with a token")
        until("the job finished", lambda: text(browser, "job-status") == "Finished")
        assert text(browser, "job-done").startswith("1/1")
        status = session(good).get(f"{node.endpoint}/v1/download", json={"id": job},
                                   timeout=10).json()
        assert status["finished_cnt"] == 1 and status["error_cnt"] == 0
        # a job's page needs what its AIS status needs: read access to the job's bucket
        for bucket, code in (("secured", 200), ("elsewhere", 403)):
            grant = [{"bck": {"name": bucket, "provider": "ais"}, "perm": str(int(RW))}]
            scoped = jwt.encode({"sub": "bob", "buckets": grant, "exp": int(time.time()) + 600},
                                SECRET, algorithm="HS256")
            r = session(scoped).get(f"{node.endpoint}/ui/api/jobs/{job}", timeout=10)
            assert r.status_code == code, f"{bucket}: {r.status_code} {r.text}"
        # the token lives in this tab only, and goes when asked to
        browser.find_element(By.ID, "forget-token").click()
        until("the token form again", lambda: shown(browser, "login-view"))
    finally:
        node.stop()
