"""Browser tests: every shipped workflow opened, queued and finished in ComfyUI's real front end.

The real server (conftest `server`) with the pack and the front end it serves; Debian's headless Chromium
driven by Selenium through Debian's chromedriver (no browser download). Per workflow, as a user would:
drop the .json file on the canvas, see no dialog (missing nodes, validation), set the quick CPU values of
tests/workflow_quick.py in the node widgets, click Run, wait until it finished, and see its outputs on the
nodes. A screenshot of each is kept in tests/artifacts/browser/ (git-ignored). The rendered node boxes are
checked for overlaps too (the front end's own sizes, not the saved ones).

scripts/setup_browser.sh installs chromium and chromium-driver; without them these tests fail (not skip).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time

import pytest

from comfy_server import format_execution_error, texts
from workflow_quick import QUICK, SMALL_ARTWORK, write_small_artwork

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "workflows", "*.json")))
SHOTS = os.path.join(ROOT, "tests", "artifacts", "browser")
BROWSER_HINT = "run bash scripts/setup_browser.sh (apt-get install chromium chromium-driver) for the browser tests"

DROP_FILE = """
const [text, name] = arguments;
const file = new File([text], name, {type: "application/json"});
const data = new DataTransfer();
data.items.add(file);
const canvas = document.querySelector("#graph-canvas") || document.querySelector("canvas");
const rect = canvas.getBoundingClientRect();
for (const type of ["dragenter", "dragover", "drop"]) {
  canvas.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true,
                                            clientX: rect.left + rect.width / 2, clientY: rect.top + rect.height / 2}));
}
"""

DIALOGS = """
return [...document.querySelectorAll(".p-dialog, [role=dialog]")]
  .filter(d => d.offsetParent !== null && d.getBoundingClientRect().height > 0)
  .map(d => d.innerText.slice(0, 400));
"""

SET_WIDGETS = """
const [quick, smallArtwork] = arguments;
const changed = [];
for (const node of window.app.graph.nodes) {
  for (const w of node.widgets || []) {
    let value;
    const choices = (w.options && w.options.values) || [];
    if (node.type === "LoadImage" && w.name === "image" && w.value === "coffee.png") value = smallArtwork;
    // the shipped TAEF2 comes from shared/models when setup_host.sh finds it; otherwise any TAE encoder here
    else if (w.name === "tae_name" && w.value !== "none" && !choices.includes(w.value))
      value = choices.find(c => c !== "none");
    else if (quick[node.type] && w.name in quick[node.type]) value = quick[node.type][w.name];
    else continue;
    w.value = value;
    if (w.callback) w.callback(value, window.app.canvas, node);
    changed.push(`${node.id}.${w.name}=${value}`);
  }
}
window.app.graph.setDirtyCanvas(true, true);
return changed;
"""

RENDERED_OVERLAPS = """
const nodes = window.app.graph.nodes;
const box = n => { const r = n.boundingRect; return [r[0], r[1], r[0] + r[2], r[1] + r[3]]; };
const out = [];
for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
  const a = box(nodes[i]), b = box(nodes[j]);
  if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) out.push(`${nodes[i].id}/${nodes[j].id}`);
}
return out;
"""

FIT_VIEW = """
const c = window.app.canvas, nodes = window.app.graph.nodes;
c.deselectAll();
let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
for (const n of nodes) {
  const r = n.boundingRect;
  x0 = Math.min(x0, r[0]); y0 = Math.min(y0, r[1]); x1 = Math.max(x1, r[0] + r[2]); y1 = Math.max(y1, r[1] + r[3]);
}
const w = c.canvas.width / (window.devicePixelRatio || 1), h = c.canvas.height / (window.devicePixelRatio || 1);
const top = 90;  // the menu bar and tabs
const scale = Math.min(w / (x1 - x0 + 80), (h - top) / (y1 - y0 + 80), 1.2);
c.ds.scale = scale;
c.ds.offset[0] = (w / scale - (x1 - x0)) / 2 - x0;
c.ds.offset[1] = (top + (h - top - (y1 - y0) * scale) / 2) / scale - y0;
c.setDirty(true, true);
"""

# the text meant as a table renders as one in Preview Any's Markdown widget (not as a run-on paragraph)
RENDERED_TABLES = """
return [...document.querySelectorAll("table")].filter(t => t.offsetParent !== null && t.rows.length > 1)
  .map(t => t.innerText.toLowerCase().slice(0, 400));
"""
TABLES_EXPECTED = {"robustness_report": "verdict", "lora_mimicry_test": "target share",
                   "mimicry_miniature": "target share"}

OUTPUTS_SHOWN = """
const missing = [];
for (const node of window.app.graph.nodes) {
  if (node.mode !== 0) continue;
  const shows = ["SaveImage", "PreviewImage", "SavePoisonDataset", "SaveCloakedFolder", "StyleMimicryScore",
                 "RobustnessCheck"];
  if (shows.includes(node.type) && !(node.imgs && node.imgs.length)) missing.push(`${node.id} ${node.type}: no image`);
  if (node.type === "PreviewAny") {
    const w = (node.widgets || []).find(w => typeof w.value === "string");
    if (!w || !w.value.trim()) missing.push(`${node.id} PreviewAny: no text`);
  }
}
return missing;
"""


def check_img2img(server, entry):
    saved = [p for p in server.output_files(entry) if p.startswith(server.output_dir)]
    assert len(saved) == 1 and "glazed_img2img" in saved[0], saved
    report = "\n".join(sum(texts(entry).values(), []))
    assert "GlazePerturb" in report and "+" in report, report  # an ensemble: "<checkpoint VAE>+<TAE>"


def check_portfolio(server, entry):
    names = sorted(os.listdir(os.path.join(server.input_dir, "cloak_portfolio")))
    folder = os.path.join(server.output_dir, "cloak", "portfolio")
    assert set(names) <= set(os.listdir(folder)) and "cloak_report.md" in os.listdir(folder)
    report = "\n".join(sum(texts(entry).values(), []))
    assert all(n in report for n in names), report


def check_mimicry(server, entry):
    shown = sum(texts(entry).values(), [])
    scores = next(json.loads(t) for t in shown if t.lstrip().startswith("{"))
    for lora in ("clean_lora", "cloaked_lora"):
        for measure in ("pixel", "latent"):
            assert 0 <= scores[lora][measure]["target_share"] <= 1
    with open(os.path.join(SHOTS, "mimicry_scores.json"), "w") as f:
        json.dump(scores, f, indent=1)


def check_miniature(server, entry):
    shown = "\n".join(sum(texts(entry).values(), []))
    assert "mimic on cloaked set" in shown and "TrainMiniatureMimic |" in shown, shown[:2000]
    check_mimicry(server, entry)


CHECKS = {"glaze_img2img_target": check_img2img, "glaze_portfolio": check_portfolio,
          "lora_mimicry_test": check_mimicry, "mimicry_miniature": check_miniature}


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory, tiny_checkpoint):
    """A server of its own: the workflows write into its output folder, which other e2e tests count files in."""
    from comfy_server import ComfyServer

    with ComfyServer(workdir=str(tmp_path_factory.mktemp("browser_server")),
                     cpu=os.environ.get("CLOAK_TEST_GPU") != "1") as running:
        yield running


@pytest.fixture(scope="module")
def browser(browser_server):
    server = browser_server
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: {BROWSER_HINT}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed in the host venv: run bash scripts/setup_host.sh", pytrace=False)
    write_small_artwork(server.input_dir)
    for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Validation.Workflows", True),
                           ("Comfy.Minimap.Visible", False), ("LiteGraph.Canvas.MinFontSizeForLOD", 0)):
        server._request("POST", f"/settings/{setting}", value)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=2560,1440", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(30)
    try:
        driver.get(server.url)
        wait_for(lambda: driver.execute_script("return !!(window.app && window.app.graph && window.app.canvas)"),
                 120, "the ComfyUI front end did not start")
        time.sleep(2)  # let the first-run UI settle
        os.makedirs(SHOTS, exist_ok=True)
        yield driver
    finally:
        driver.quit()


def wait_for(condition, timeout: float, message: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(poll)


def click_run(driver) -> None:
    """The Run (queue) button of the top menu / action bar; Ctrl+Enter when no button is found."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for how, what in ((By.CSS_SELECTOR, "[data-testid='queue-button']"),
                      (By.XPATH, "//button[.//span[normalize-space()='Run'] or normalize-space()='Run']"),
                      (By.XPATH, "//button[contains(normalize-space(), 'Queue')]")):
        buttons = [b for b in driver.find_elements(how, what) if b.is_displayed()]
        if buttons:
            wait_for(lambda: not driver.execute_script(DIALOGS), 10,
                     f"a dialog covers the Run button: {driver.execute_script(DIALOGS)}")
            buttons[0].click()
            return
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.CONTROL, Keys.ENTER)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: os.path.basename(p)[:-5])
def test_workflow_opens_runs_and_shows_outputs_in_the_browser(browser, browser_server, path):
    server = browser_server
    name = os.path.basename(path)[:-5]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    expected = len(json.loads(text)["nodes"])
    browser.execute_script("window.app.graph.clear()")
    browser.execute_script(DROP_FILE, text, os.path.basename(path))
    wait_for(lambda: browser.execute_script("return window.app.graph.nodes.length") == expected, 30,
             f"{name}: dropping the file did not load its {expected} nodes")
    time.sleep(1.5)
    dialogs = browser.execute_script(DIALOGS)
    assert not dialogs, f"{name}: a dialog opened on load: {dialogs}"
    overlaps = browser.execute_script(RENDERED_OVERLAPS)
    assert not overlaps, f"{name}: rendered nodes overlap (ids): {overlaps}"
    changed = browser.execute_script(SET_WIDGETS, QUICK, SMALL_ARTWORK)
    before = set(server._request("GET", "/history") or {})
    start = time.monotonic()
    click_run(browser)

    def finished():
        history = server._request("GET", "/history") or {}
        new = [v for k, v in history.items() if k not in before]
        if not new:
            if browser.execute_script(DIALOGS):
                return "dialog"
            return None
        status = new[0].get("status") or {}
        if status.get("status_str") == "error":
            raise AssertionError(f"{name}: {format_execution_error(new[0])}")
        return new[0] if status.get("completed") else None

    entry = wait_for(finished, 900, f"{name}: did not finish within 900 s (quick values: {changed})", poll=1)
    assert entry != "dialog", f"{name}: queueing opened a dialog: {browser.execute_script(DIALOGS)}"
    seconds = time.monotonic() - start
    # the whole graph in view, as the "fit view" button does: the canvas loads a node's images when it draws it
    browser.execute_script(FIT_VIEW)
    deadline = time.monotonic() + 20
    while (missing := browser.execute_script(OUTPUTS_SHOWN)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not missing, f"{name}: outputs not shown on the canvas: {missing}"
    if name in TABLES_EXPECTED:
        tables = wait_for(lambda: browser.execute_script(RENDERED_TABLES), 20,
                          f"{name}: no rendered <table> on the canvas (the report shows as plain text)")
        assert any(TABLES_EXPECTED[name] in t for t in tables), (name, tables)
    CHECKS.get(name, lambda *_: None)(server, entry)
    shot = os.path.join(SHOTS, f"{name}.png")
    browser.save_screenshot(shot)
    assert os.path.getsize(shot) > 10_000
    timings = os.path.join(SHOTS, "timings.json")
    data = json.load(open(timings)) if os.path.isfile(timings) else {}
    data[name] = round(seconds, 1)
    with open(timings, "w") as f:
        json.dump(data, f, indent=1)
