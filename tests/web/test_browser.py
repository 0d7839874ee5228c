"""The page in a real browser: headless Chromium (Debian's chromium package) driven by
Playwright loads the page from its link, moves the batch slider until nothing fits, and checks
what the page then shows. It saves a screenshot of that page; README's (docs/plan-ui.png) is
that screenshot, written there with

    PLAN_UI_SCREENSHOT=docs/plan-ui.png python -m pytest -q tests/web/test_browser.py -k slide

(not on every run: the PNG's bytes differ from run to run, and a test run should leave the
checkout as it was; the variable names where a copy goes, and changes no check).

Skipped cleanly without the playwright package or without /usr/bin/chromium (Playwright's
own browser download is not used: `apt-get install chromium`).
"""
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from webtools import plan_json

from planner.web import engine

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
LINK = "?model=8b&gpu=rtx4090&method=lora&method=qlora&method=qdora"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")


@pytest.fixture
def page(server, tmp_path):
    """A fresh headless Chromium page (a new profile in tmp_path) that records every request
    that leaves the server."""
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, accept_downloads=True,
            viewport={"width": 1400, "height": 1000},
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = context.new_page()
        page.outside = []
        local = (server, "data:", "blob:")
        page.on("request", lambda r: None if r.url.startswith(local) else page.outside.append(r.url))
        page.set_default_timeout(30_000)
        yield page
        context.close()


def rows(page) -> dict[str, list[str]]:
    """The summary table: label -> the cells of each method."""
    out = {}
    for line in page.inner_text("#summary table").splitlines():
        cells = [c.strip() for c in line.split("\t")]
        out[cells[0]] = cells[1:]
    return out


def command(page) -> str:
    return page.input_value("#command textarea")


def wait_for_batch(page, batch: int) -> None:
    page.wait_for_function(
        "(b) => document.querySelector('#command textarea').value.includes('--batch-size ' + b + ' ')", arg=batch)


ERROR_LINE = "(document.querySelector('#error .plan-error') || {innerText: ''}).innerText"


def error(page) -> str:
    """The error line the page shows ('' for none), without Gradio's progress text beside it."""
    return page.evaluate(ERROR_LINE)


def wait_for_error(page, line: str) -> None:
    """Wait until the page shows this error line (not an earlier one: filling a box passes
    through its empty value, which has a line of its own)."""
    page.wait_for_function(f"(line) => {ERROR_LINE} === line", arg=line)


def test_slide_the_batch_until_nothing_fits(server, page, tmp_path):
    page.goto(server + LINK)
    page.wait_for_selector("#summary table")
    first = rows(page)
    assert first[""] == ["lora", "qlora", "qdora"]
    assert command(page) == "plan --model 8b --gpu rtx4090 --method lora --method qlora --method qdora " \
                            "--max-batch-size --max-seq-len"
    assert "yes" in first["fits"]  # the control: at batch 1 something fits
    slider = page.locator("#batch_size input[type=range]")
    seen = {1: first["fits"]}
    batch = 1
    while "yes" in seen[batch]:
        assert batch < 16, seen
        slider.focus()
        page.keyboard.press("ArrowRight")
        batch += 1
        wait_for_batch(page, batch)
        seen[batch] = rows(page)["fits"]
    shown = rows(page)
    # what the page shows once nothing fits, at `batch`
    assert shown["fits"] == ["no", "no", "no"] and "yes" in seen[batch - 1]
    assert all(float(h) < 0 for h in shown["headroom (GiB)"])
    assert max(int(b) for b in shown["max batch size (seq 512)"]) == batch - 1
    assert page.input_value("#batch_size input[type=number]") == str(batch)
    assert page.inner_text("#summary").count(f"Nothing planned fits rtx4090 (24.0 GiB) at batch {batch}, seq 512") == 1
    assert error(page) == ""
    assert page.locator("#plot img").get_attribute("src").startswith("data:image/png;base64,")
    # the link and the command hold the batch; the download is what the command prints with --json
    assert parse_qs(urlsplit(page.url).query)["batch-size"] == [str(batch)]
    assert command(page) == (f"plan --model 8b --gpu rtx4090 --method lora --method qlora --method qdora "
                             f"--batch-size {batch} --max-batch-size --max-seq-len")
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "plan.json"
    saved = Path(download.value.path()).read_text()
    assert saved == plan_json(command(page))
    assert json.loads(saved)["plans"][1]["settings"]["batch_size"] == batch
    shot = tmp_path / "plan-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("PLAN_UI_SCREENSHOT"):
        shutil.copyfile(shot, ROOT / os.environ["PLAN_UI_SCREENSHOT"])
    # the link reproduces the plan in a new page
    again = page.context.new_page()
    again.goto(page.url)
    again.wait_for_selector("#summary table")
    assert rows(again) == shown and command(again) == command(page)
    assert page.outside == [] and not getattr(again, "outside", [])


def test_bad_input_shows_plans_line_and_the_page_recovers(server, page):
    page.goto(server + "?model=qwen2.5-0.5b&method=lora")
    page.wait_for_selector("#summary table")
    page.get_by_text("Several GPUs").click()
    box = page.locator("#num_gpus input")
    box.fill("0")
    box.press("Tab")
    wait_for_error(page, "plan: error: number of GPUs must be at least 1, got 0")
    assert page.locator("#summary table").count() == 0
    assert "--num-gpus 0" in command(page)
    box.fill("1")
    box.press("Tab")
    page.wait_for_selector("#summary table")
    wait_for_error(page, "")
    assert re.search(r"\bfits\s+(yes|no)\b", page.inner_text("#summary"))
    # a paste (an input event with no keys, as a paste from the mouse makes): a bad one, then a good one
    paste = page.locator("#config textarea")
    paste.focus()
    page.keyboard.insert_text("{oops")
    wait_for_error(page, "plan: error: pasted config.json: not a readable JSON config (JSONDecodeError: "
                         "Expecting property name enclosed in double quotes: line 1 column 2 (char 1))")
    config = {**engine.resolve_model("qwen2.5-0.5b").hf_config(), "_name_or_path": "Qwen/Qwen2.5-0.5B"}
    paste.fill("")
    paste.focus()
    page.keyboard.insert_text(json.dumps(config))
    page.wait_for_function("document.querySelector('#command textarea').value.includes('Qwen2.5-0.5B.json')")
    page.wait_for_selector("#summary table")
    assert page.inner_text("#summary h3").startswith("Qwen2.5-0.5B on t4 (15.00 GiB)")
    wait_for_error(page, "")
    assert "config=" in page.url


def test_a_bad_link_says_why_and_plans_the_defaults(server, page):
    page.goto(server + "?model=7b&batch-size=-3")
    page.wait_for_selector("#summary table")
    assert error(page) == ("plan: error: batch size must be at least 1, got -3 "
                                                 "(the link's settings are ignored)")
    assert command(page) == "plan --model 7b --gpu t4 --max-batch-size --max-seq-len"
    assert page.input_value("#batch_size input[type=number]") == "1"
