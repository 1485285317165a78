"""`qualcode app` driven in a real Chromium (Selenium, Debian's chromium and chromium-driver):
label 20 segments by keyboard with the server killed and restarted half-way, train and classify
from the app, resolve two disagreements, correct a theme while browsing; the files on disk are
what the CLI writes; requests without the token, with a foreign Host or from another site are
refused; every page fits 1280 px (screenshots kept in .test-artifacts/app/)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qualcode.demo import skane_notes
from qualcode.files.labels import AUDIT_COLUMNS, audit_path
from qualcode.files.tables import read_table, write_table
from qualcode.labelling import LABEL_COLUMNS

from .conftest import ROOT, labeller_ready

QUALCODE = ROOT / ".venv" / "bin" / "qualcode"
ARTIFACTS = ROOT / ".test-artifacts" / "app"
pytestmark = pytest.mark.slow


def _driver_or_skip():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("QUALCODE_REQUIRE_CHROMIUM"):
            pytest.fail("QUALCODE_REQUIRE_CHROMIUM is set but chromium-driver is not installed")
        pytest.skip("chromium and chromium-driver not installed (CI installs them: .ci/run)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                 "--disable-dev-shm-usage", "--no-first-run"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def _start(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    log = folder.parent / f"app-{port}-{time.time_ns()}.log"  # a file: a full pipe would block it
    process = subprocess.Popen(
        [str(QUALCODE), "app", str(folder), "--port", str(port), "--no-browser"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    match = None
    while time.time() < deadline and match is None:
        match = re.search(r"(http://\S+token=\S+)", log.read_text())
        time.sleep(0.2)
    assert match, log.read_text()
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except urllib.error.HTTPError:
            break  # 403 without the token: the server is up
        except OSError:
            time.sleep(0.3)
    return process, match.group(1)


def _status(url: str, *, host: str | None = None, data: bytes | None = None,
            origin: str | None = None, cookie: str | None = None) -> int:  # fmt: skip
    request = urllib.request.Request(url, data=data)
    if host:
        request.add_header("Host", host)
    if origin:
        request.add_header("Origin", origin)
    if cookie:
        request.add_header("Cookie", cookie)
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


def _fits(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    wide = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert wide[0] <= wide[1], f"{name}: page {wide[0]} px wide in a {wide[1]} px window"


def _wait(driver, condition, timeout: float = 180):
    """Wait for ``condition``; an element that went away as the page changed is looked up
    again on the next poll (the page reloads after every answer)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    wait = WebDriverWait(driver, timeout, poll_frequency=0.5, ignored_exceptions=ignored)
    return wait.until(condition)


def test_the_app_loop_in_chromium(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = _driver_or_skip()
    folder = tmp_path / "projekt"
    folder.mkdir()
    shutil.copy(ROOT / "corpora" / "codebook.yaml", folder / "codebook.yaml")
    write_table(skane_notes(ROOT / "corpora"), folder / "segments.csv")
    seed = read_table(ROOT / "corpora" / "labels" / "seed_set.csv")
    seed["labelled_at"], seed["note"] = "2026-11-01T10:00:00+00:00", ""
    write_table(seed[list(LABEL_COLUMNS)], folder / "labels.csv")
    labeller_ready(
        folder / "segments.csv", folder / "codebook.yaml", tmp_path, folder / "labels.csv"
    )
    port = 8800 + os.getpid() % 150
    process, url = _start(folder, port)
    base = f"http://127.0.0.1:{port}"
    answered: dict[str, str] = {}
    try:
        # security: no token, a foreign Host, a cross-site POST
        assert _status(f"{base}/label") == 403
        token = url.split("token=")[1]
        assert _status(f"{base}/?token={token}", host=f"evil.example:{port}") == 403
        cookie = f"qualcode_token={token}"
        assert _status(f"{base}/label", data=b"index=0&theme=steering", cookie=cookie,
                       origin="http://evil.example") == 403  # fmt: skip
        assert _status(f"{base}/label", data=b"index=0&theme=steering", cookie=cookie) == 200
        assert len(read_table(folder / "labels.csv")) == len(seed)  # refused: nothing written

        driver.get(url)
        driver.get(f"{base}/coder?name=anna")
        for n in range(14):
            if n == 9:  # the power goes mid-session; everything answered is on disk
                process.send_signal(signal.SIGKILL)
                process.wait()
                process, url = _start(folder, port)
                driver.get(url)
                driver.get(f"{base}/label")
            card = _wait(driver, lambda d: d.find_element(By.ID, "segment"))
            if n == 0:
                _fits(driver, "label")
                assert "built-in method" not in driver.page_source
            segment = card.get_attribute("data-segment")
            assert segment not in answered
            body = driver.find_element(By.TAG_NAME, "body")
            if n == 3:  # n writes a note, Esc comes back; the note goes with the answer
                body.send_keys("n")
                driver.switch_to.active_element.send_keys("oklart, två teman?", Keys.ESCAPE)
                noted = segment
            key = str(n % 8 + 1)
            if n == 5:  # Enter saves the suggestion
                key = Keys.ENTER
                theme = card.find_element(By.CSS_SELECTOR, 'button[data-suggested="yes"]')
            else:
                theme = card.find_element(By.CSS_SELECTOR, f'button[data-key="{key}"]')
            answered[segment] = theme.get_attribute("value")
            driver.find_element(By.TAG_NAME, "body").send_keys(key)
            _wait(driver, lambda d, s=segment: d.find_element(By.ID, "segment")
                  .get_attribute("data-segment") != s)  # fmt: skip
        labels = read_table(folder / "labels.csv")
        mine = labels[labels["coder"] == "anna"]
        assert list(labels.columns) == list(LABEL_COLUMNS)
        assert dict(zip(mine["segment_id"], mine["theme"])) == answered
        assert dict(zip(mine["segment_id"], mine["note"])) == {
            s: "oklart, två teman?" if s == noted else "" for s in answered
        }
        driver.get(f"{base}/label")
        per_theme = driver.find_elements(By.CSS_SELECTOR, "#per-theme tbody tr")
        shown = {r.get_attribute("data-theme"): int(r.find_elements(By.TAG_NAME, "td")[1].text)
                 for r in per_theme}  # fmt: skip
        assert shown == {t: list(answered.values()).count(t) for t in shown}

        driver.get(f"{base}/")
        _fits(driver, "home")
        for job in ("train", "classify"):
            driver.find_element(By.ID, f"run-{job}").click()

            def finished(d, job=job):  # the page shows the job's state as it runs
                text = d.find_element(By.ID, f"job-{job}").text
                return text if text.startswith(("done", "failed")) else None

            text = _wait(driver, finished, timeout=300)
            assert text.startswith("done"), (job, text, driver.page_source[-800:])
        assert (folder / "model" / "model.json").exists()
        cli = tmp_path / "cli.csv"
        command = [QUALCODE, "classify", folder / "model", folder / "segments.csv", "-o", cli, "-q"]
        subprocess.run([str(c) for c in command], check=True)
        app_predictions = read_table(folder / "predictions.csv")
        assert app_predictions.equals(read_table(cli))  # what the CLI writes

        driver.get(f"{base}/review")
        _fits(driver, "review")
        rows = driver.find_elements(By.CSS_SELECTOR, "#review-rows tbody tr")
        assert len(rows) >= 2
        before = read_table(folder / "labels.csv")
        for _ in range(2):
            form = driver.find_element(By.CSS_SELECTOR, "#review-rows tbody tr form.resolve")
            form.find_element(By.TAG_NAME, "button").click()
            _wait(
                driver, lambda d: d.find_elements(By.ID, "count") or d.find_elements(By.ID, "error")
            )
            assert not driver.find_elements(By.ID, "error"), driver.find_element(
                By.ID, "error"
            ).text
        log = read_table(audit_path(folder / "labels.csv"))
        assert list(log.columns) == list(AUDIT_COLUMNS) and len(log) == 2
        assert list(folder.glob("labels.csv.*.bak"))  # backed up before each change
        assert len(read_table(folder / "labels.csv")) >= len(before)

        driver.get(f"{base}/browse")
        _fits(driver, "browse")
        overview = driver.find_elements(By.CSS_SELECTOR, "#overview tbody tr")
        counts = [int(r.find_elements(By.TAG_NAME, "td")[1].text) for r in overview]
        assert len(overview) == 8 and sum(counts) >= len(app_predictions)  # themes, counted
        assert driver.find_elements(By.CSS_SELECTOR, "#overview q.quote")  # with quotes
        row = driver.find_element(By.CSS_SELECTOR, "#browse-rows tbody tr")
        segment = row.get_attribute("data-segment")
        select = row.find_element(By.TAG_NAME, "select")
        current = select.get_attribute("value")
        other = next(o for o in select.find_elements(By.TAG_NAME, "option")
                     if o.get_attribute("value") != current)  # fmt: skip
        chosen = other.get_attribute("value")
        Select(select).select_by_value(chosen)
        row.find_element(By.TAG_NAME, "button").click()
        _wait(driver, lambda d: d.find_elements(By.ID, "count") or d.find_elements(By.ID, "error"))
        assert not driver.find_elements(By.ID, "error"), driver.find_element(By.ID, "error").text
        labels = read_table(folder / "labels.csv")
        last = labels[(labels["segment_id"] == segment) & (labels["coder"] == "anna")].iloc[-1]
        assert last["theme"] == chosen  # the correction is a label
    finally:
        driver.quit()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_apps_over_one_folder_two_coders_and_two_tabs_lose_nothing(tmp_path):
    """Two servers over one shared folder (as two analysts would run them), anna in two tabs
    on one, bo on the other, all answering at once: every answer is a row in labels.csv."""
    import threading

    import uvicorn

    from qualcode.app import Workspace
    from qualcode.app.server import create_app

    folder = tmp_path / "delad"
    folder.mkdir()
    shutil.copy(ROOT / "corpora" / "codebook.yaml", folder / "codebook.yaml")
    write_table(skane_notes(ROOT / "corpora"), folder / "segments.csv")
    servers, bases = [], []
    for multi_label in (False, True):  # the second app allows several themes per segment
        port = _free_port()
        workspace = Workspace(folder, multi_label=multi_label)
        config = uvicorn.Config(create_app(workspace, port=port), port=port, log_level="warning")
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        bases.append((f"http://127.0.0.1:{port}", workspace.token))
    posted: dict[str, list[str]] = {"anna": [], "bo": []}
    failures: list[str] = []

    def tab(base: str, token: str, coder: str, key: int) -> None:
        cookie = f"qualcode_token={token}; qualcode_coder={coder}"
        try:
            for n in range(6):
                request = urllib.request.Request(f"{base}/label", headers={"Cookie": cookie})
                page = urllib.request.urlopen(request, timeout=120).read().decode()
                index = re.search(r'name="index" value="(\d+)"', page).group(1)
                form = re.search(r'name="form_token" value="(\w+)"', page).group(1)
                segment = re.search(r'data-segment="([^"]+)"', page).group(1)
                themes = re.findall(r'name="theme" value="(\w+)"', page)
                chosen = f"theme={themes[(n + key) % 8]}"
                if 'type="checkbox"' in page:
                    chosen += f"&theme={themes[(n + key + 1) % 8]}&action=save"
                body = f"form_token={form}&index={index}&{chosen}&note=flik+{key}".encode()
                answer = urllib.request.Request(f"{base}/label", data=body,
                                                headers={"Cookie": cookie})  # fmt: skip
                assert urllib.request.urlopen(answer, timeout=120).status == 200
                posted[coder].append(segment)
        except Exception as err:  # noqa: BLE001 - reported by the test below
            failures.append(f"{coder}/{key}: {err!r}")

    deadline = time.time() + 60
    while time.time() < deadline and not all(s.started for s in servers):
        time.sleep(0.1)
    try:
        tabs = [
            threading.Thread(target=tab, args=(*bases[0], "anna", 1)),
            threading.Thread(target=tab, args=(*bases[0], "anna", 2)),
            threading.Thread(target=tab, args=(*bases[1], "bo", 3)),
        ]
        for thread in tabs:
            thread.start()
        for thread in tabs:
            thread.join(timeout=300)
    finally:
        for server in servers:
            server.should_exit = True
    assert not failures, failures
    labels = read_table(folder / "labels.csv")
    assert list(labels.columns) == list(LABEL_COLUMNS)
    for coder, segments in posted.items():
        rows = labels[labels["coder"] == coder]
        assert sorted(rows["segment_id"]) == sorted(segments)  # one row per answer, none lost
    assert len(posted["anna"]) == 12 and len(posted["bo"]) == 6
    assert set(labels["note"]) == {"flik 1", "flik 2", "flik 3"}
    assert all(t.count(";") == 1 for t in labels.loc[labels["coder"] == "bo", "theme"])
