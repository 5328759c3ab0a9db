"""The notebooks as a student uses them: JupyterLab in a real browser (Chromium via Playwright).

nbval proves that the cells execute; these tests prove that what a person sees works.
A JupyterLab server is started on 127.0.0.1 (a free port, a random token, as root with
``--allow-root``) on a temporary copy of ``notebooks/``, so running cells and autosave
never touch the committed files. Jupyter's configuration, workspace, settings, runtime
and IPython folders are temporary too. Debian's Chromium (``/usr/bin/chromium``, or
``$FACEPOINTS_CHROMIUM``) is driven through the Playwright client; no browser is
downloaded. The kernel is the ``python3`` kernel of the Python that runs the tests,
so it imports ``facepoints_lib``; it runs in the notebooks' CI mode on synthetic faces
(``FACEPOINTS_NB_FAST=1``, ``FACEPOINTS_DATA=synthetic``).

* ``02_augmentations.ipynb``: run all cells, wait for the sliders, drag ``rotation`` with
  the mouse and tick ``flip``; the transformed face must change on screen after each
  (pixel difference of screenshots of the figure), and no cell may show an error.
* ``04_error_analysis.ipynb``: run all cells; the CED plot must render as an image.
* ``01_data_exploration.ipynb``, ``03_architecture_experiments.ipynb`` and
  ``05_your_own_photos.ipynb``: run all cells; no cell may show an error or a warning box,
  and every figure cell shows a drawn image.
* ``05_your_own_photos.ipynb``: upload a phone's photo (EXIF orientation set) with the
  upload button; both figures are redrawn for it and its face stands upright in the
  table. Both 05 tests need the photos extra (skipped without it, failed where
  ``$FACEPOINTS_PHOTOS_REQUIRED=1``).
* In all of them, every figure on screen is saved as a screenshot and must be shown at its
  natural size (not scaled down to the output area), so its text shows at the size
  ``tests/test_figure_legibility.py`` checks. The window is 1280 x 1000 CSS px with
  JupyterLab's default layout (file browser open): the output area is then
  ``figure_layout.OUTPUT_WIDTH_PX`` wide, the narrowest of the common layouts.

Screenshots are saved to ``$FACEPOINTS_BROWSER_ARTIFACTS`` (default ``artifacts/browser/``,
git-ignored), with ``<notebook>_figures.json``: each figure's natural and shown width. Run only these tests with ``python -m pytest -m browser``; they are
skipped, with the reason, when Chromium, Playwright or JupyterLab is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / "notebooks"

pytestmark = pytest.mark.browser

CHROMIUM_ENV = "FACEPOINTS_CHROMIUM"
ARTIFACTS_ENV = "FACEPOINTS_BROWSER_ARTIFACTS"
REQUIRED_ENV = "FACEPOINTS_BROWSER_REQUIRED"     # "1" (set by CI): a missing requirement fails
SERVER_START_TIMEOUT = 90        # seconds for JupyterLab to answer
RUN_ALL_TIMEOUT = 150            # seconds for "Run All Cells" of one notebook
REDRAW_TIMEOUT = 20              # seconds for a widget's figure to be redrawn
CHANGED_PIXELS = 0.01            # fraction of the face panel that must change on screen
WINDOW = {"width": 1280, "height": 1000}   # CSS px: a laptop's browser window

CHROMIUM_ARGS = [                # headless, as root, on a machine with no outside network
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

# JupyterLab user settings: no news or update checks, no autosave, every cell in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def find_chromium() -> str | None:
    """``$FACEPOINTS_CHROMIUM``, else Debian's ``chromium`` on PATH or at /usr/bin/chromium."""
    named = os.environ.get(CHROMIUM_ENV, "").strip()
    if named:
        return named if Path(named).is_file() else None
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


def artifacts_dir() -> Path:
    folder = Path(os.environ.get(ARTIFACTS_ENV, "").strip() or REPO_ROOT / "artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabServer:
    """A JupyterLab server on a temporary copy of the notebooks, stopped by ``stop()``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root = workdir / "notebooks"
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("MPLBACKEND", "FACEPOINTS_FIGURES", "FACEPOINTS_MODEL", "JUPYTER_PATH",
                     "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH"):
            env.pop(name, None)        # inline plots, nothing saved, nothing from the user's setup
        jupyter = self.workdir / "jupyter"
        env.update({
            "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
            "JUPYTER_DATA_DIR": str(jupyter / "data"),
            "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(jupyter / "config" / "lab" / "user-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(jupyter / "config" / "lab" / "workspaces"),
            "IPYTHONDIR": str(jupyter / "ipython"),
            "FACEPOINTS_NB_FAST": "1",            # the notebooks' CI mode: small sizes
            "FACEPOINTS_DATA": "synthetic",       # never the course data, even when present
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start(self) -> None:
        shutil.copytree(NOTEBOOKS, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        settings = self.workdir / "jupyter" / "config" / "lab" / "user-settings"
        for relative, values in LAB_SETTINGS.items():
            path = settings / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # A safety net should this process be killed before stop(): idle kernels are
            # culled and the server then exits by itself.
            "--MappingKernelManager.cull_idle_timeout=600", "--MappingKernelManager.cull_interval=60",
            "--ServerApp.shutdown_no_activity_timeout=900",
        ]
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, cwd=self.root, env=self.environment(), stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                request = urllib.request.Request(f"{self.base}/api/status",
                                                 headers={"Authorization": f"token {self.token}"})
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then SIGKILL the group if it lingers."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def missing_requirement() -> str | None:
    """Why the browser tests cannot run here, or None."""
    import importlib.util

    for module, extra in (("playwright", "browser"), ("jupyterlab", "notebooks"), ("ipywidgets", "notebooks")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[{extra}]')"
    if find_chromium() is None:
        return f"Chromium not found (apt-get install chromium, or set ${CHROMIUM_ENV} to its path)"
    return None


@pytest.fixture(scope="module")
def chromium_path() -> str:
    reason = missing_requirement()
    if reason and os.environ.get(REQUIRED_ENV, "").strip() == "1":
        pytest.fail(f"{reason}, but ${REQUIRED_ENV}=1 says the browser tests must run")
    if reason:
        pytest.skip(reason)
    return find_chromium()


@pytest.fixture(scope="module")
def lab(chromium_path):
    """A running JupyterLab server; stopped at the end whatever happens."""
    with tempfile.TemporaryDirectory(prefix="facepoints-lab-") as workdir:
        server = LabServer(Path(workdir))
        try:
            server.start()
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="facepoints-chromium-") as profile:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS,
                viewport=WINDOW)
            try:
                yield context
            finally:
                context.close()


# ---------------------------------------------------------------- driving a notebook

STATE_JS = r"""() => {
    const prompts = Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt'))
        .map(e => e.textContent.trim());
    const stderr = Array.from(document.querySelectorAll(
        '.jp-Notebook .jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'))
        .map(e => e.innerText);
    const widgetErrors = Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
        .map(e => e.innerText).filter(t => /Error (displaying|rendering) widget/.test(t));
    const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
    const session = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))
        .map(e => e.textContent.trim()).find(t => / \| /.test(t)) || '';
    return {prompts, stderr, widgetErrors, session,       // session: "Python 3 (ipykernel) | Idle"
            kernel: indicator && !session.startsWith('No Kernel') ? indicator.getAttribute('data-status') : null};
}"""

ERROR_TEXT = re.compile(r"Traceback|^\w*(Error|Exception)\b", re.MULTILINE)


class Notebook:
    """One notebook open in its own JupyterLab workspace in a browser tab."""

    def __init__(self, browser, lab: LabServer, name: str, prefix: str = ""):
        self.lab, self.name, self.stem = lab, name, Path(name).stem + prefix
        self.folder = artifacts_dir()
        for old in self.folder.glob(f"{self.stem}_*.png"):
            old.unlink()
        self.page = browser.new_page()
        self.page.set_default_timeout(60_000)
        workspace = re.sub(r"\W", "-", self.stem)
        self.page.goto(f"{lab.base}/lab/workspaces/{workspace}/tree/{name}?token={lab.token}")

    def state(self) -> dict:
        return self.page.evaluate(STATE_JS)

    def shot(self, label: str, element=None) -> Path:
        """Save a screenshot (of ``element``, or of the window) as an artefact."""
        path = self.folder / f"{self.stem}_{label}.png"
        (element or self.page).screenshot(path=str(path))
        return path

    def wait_kernel_idle(self, timeout: float = 60) -> None:
        """Wait for a started kernel ("Python 3 (ipykernel) | Idle" in the status bar)."""
        self.page.wait_for_function(f"() => ({STATE_JS})().session.endsWith('| Idle') "
                                    f"&& ({STATE_JS})().kernel === 'idle'", timeout=timeout * 1000)

    def run_all(self) -> dict:
        """Run > Run All Cells, as a person does; wait until no cell is queued or running."""
        self.page.wait_for_selector(".jp-NotebookPanel .jp-CodeCell")
        self.wait_kernel_idle()
        self.page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        # JupyterLab marks every queued cell [*] at once; then wait for the last to finish.
        self.page.wait_for_function(f"() => ({STATE_JS})().prompts.some(p => p === '[*]:')", timeout=15_000)
        deadline = time.monotonic() + RUN_ALL_TIMEOUT
        while True:
            state = self.state()
            if "[*]:" not in state["prompts"] and state["kernel"] == "idle":
                return state
            if time.monotonic() > deadline:
                self.shot("timeout")
                pytest.fail(f"{self.name}: cells still running after {RUN_ALL_TIMEOUT} s: "
                            f"{state['prompts']}\n{self.lab.log_tail()}")
            time.sleep(0.5)

    def log_console_errors(self) -> list[str]:
        """Errors in JupyterLab's log console, where output of widget callbacks goes.

        A callback that raises shows nowhere in the notebook: its traceback lands in the
        log console and the status bar shows a flashing count. Click that count, as a
        person would, and read the console.
        """
        item = self.page.locator(".jp-LogConsoleStatusItem")
        if item.count() == 0 or not re.search(r"[1-9]", item.first.inner_text()):
            return []
        item.first.click()
        self.page.wait_for_selector(".jp-LogConsolePanel .jp-OutputArea-output", timeout=10_000)
        texts = self.page.eval_on_selector_all(".jp-LogConsolePanel .jp-OutputArea-output",
                                               "nodes => nodes.map(n => n.innerText)")
        return [text[-1500:] for text in texts if ERROR_TEXT.search(text)]

    def assert_no_errors(self, when: str) -> None:
        state = self.state()
        errors = [text for text in state["stderr"] if ERROR_TEXT.search(text)] + state["widgetErrors"]
        errors += self.log_console_errors()
        if errors:
            self.shot(f"error_{when.replace(' ', '_')}")
            last_lines = dict.fromkeys(text.strip().splitlines()[-1] for text in errors if text.strip())
            pytest.fail(f"{self.name}, {when}: {len(errors)} error output(s) on screen, ending in:\n  "
                        + "\n  ".join(last_lines) + f"\nthe first one:\n{errors[0][-1500:]}")
        unexecuted = [i for i, p in enumerate(state["prompts"]) if not re.fullmatch(r"\[\d+\]:", p)]
        assert not unexecuted, f"{self.name}, {when}: code cells not executed: {unexecuted} ({state['prompts']})"

    def shot_quietly(self, label: str) -> None:
        try:
            self.shot(label)
        except Exception:                 # the page may be gone; keep the first error
            pass

    def close(self) -> None:
        self.page.close()


def image_source(element) -> str:
    return element.evaluate("e => e.getAttribute('src') || ''")


def wait_redrawn(notebook: Notebook, image, before: str) -> bool:
    """Wait until ``image`` shows a new picture and the kernel is idle; False if it never changes."""
    deadline = time.monotonic() + REDRAW_TIMEOUT
    source, since = image_source(image), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = image_source(image)
        if current != source:
            source, since = current, time.monotonic()
        settled = time.monotonic() - since > 1.0 and notebook.state()["kernel"] == "idle"
        if settled and source != before:
            return True
    return False


def changed_fraction(before: Path, after: Path, part: str = "right") -> float:
    """Fraction of pixels that differ between two screenshots, in their left or right half."""
    from PIL import Image

    a = np.asarray(Image.open(before).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(after).convert("RGB"), dtype=np.int16)
    height, width = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    a, b = a[:height, :width], b[:height, :width]
    half = slice(width // 2, width) if part == "right" else slice(0, width // 2)
    differs = np.abs(a[:, half] - b[:, half]).max(axis=-1) > 24
    return float(differs.mean())


# ---------------------------------------------------------------- the tests

def slider_in(cell, description: str):
    label = cell.page.locator("label.widget-label", has_text=re.compile(rf"^{re.escape(description)}$"))
    return cell.locator(".widget-slider", has=label)


def checkbox_in(cell, description: str):
    text = cell.page.locator("span", has_text=re.compile(rf"^{re.escape(description)}$"))
    return cell.locator(".widget-checkbox", has=text).locator("input[type=checkbox]")


def assert_face_changed(notebook: Notebook, what: str, before: Path, after: Path, redrawn: bool) -> None:
    """The transformed face (right half of the figure) differs on screen between two shots."""
    change, left = changed_fraction(before, after, "right"), changed_fraction(before, after, "left")
    print(f"{what}: {change:.1%} of the transformed face's pixels changed "
          f"({left:.1%} of the original's), redrawn: {redrawn}")
    assert change > CHANGED_PIXELS, (
        f"{what}, but the transformed face did not change on screen: {change:.2%} of its pixels "
        f"changed (needs > {CHANGED_PIXELS:.0%}), the figure was {'' if redrawn else 'not '}redrawn "
        f"within {REDRAW_TIMEOUT} s; compare {before} and {after}")


def test_augmentation_sliders_move_the_face(browser, lab):
    """02: run all, drag ``rotation`` and tick ``flip``: the transformed face changes on screen."""
    notebook = Notebook(browser, lab, "02_augmentations.ipynb")
    try:
        notebook.run_all()
        notebook.assert_no_errors("after Run All")
        page = notebook.page
        cell = page.locator(".jp-CodeCell", has=page.locator(".widget-slider")).first
        rotation = slider_in(cell, "rotation")
        rotation.wait_for(state="visible", timeout=REDRAW_TIMEOUT * 1000)
        face = cell.locator(".widget-output img").first      # the explorer's figure
        face.wait_for(state="visible", timeout=REDRAW_TIMEOUT * 1000)
        cell.scroll_into_view_if_needed()
        notebook.shot("0_widgets_rendered")
        start = notebook.shot("face_0_start", face)

        # Drag the rotation handle to the right with the mouse (about +20 degrees).
        source = image_source(face)
        box = rotation.locator(".noUi-handle").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 40, y, steps=8)
        page.mouse.up()
        readout = rotation.locator(".widget-readout").inner_text().strip()
        assert float(readout) > 5, f"dragging the rotation handle left it at {readout}"
        redrawn = wait_redrawn(notebook, face, source)
        rotated = notebook.shot("face_1_rotation", face)
        notebook.shot("1_after_rotation")
        notebook.assert_no_errors("after moving rotation")
        assert_face_changed(notebook, f"rotation moved to {readout}", start, rotated, redrawn)

        # Tick "flip".
        source = image_source(face)
        flip = checkbox_in(cell, "flip")
        flip.click()
        assert flip.is_checked()
        redrawn = wait_redrawn(notebook, face, source)
        flipped = notebook.shot("face_2_flip", face)
        notebook.shot("2_after_flip")
        notebook.assert_no_errors("after ticking flip")
        assert_face_changed(notebook, "flip ticked", rotated, flipped, redrawn)
        assert_figures_drawn(notebook, 5)
    except BaseException:
        notebook.shot_quietly("failure")
        raise
    finally:
        notebook.close()


def colour_pixels(path: Path, rgb: tuple[int, int, int], part: str = "left", tolerance: int = 40) -> int:
    """How many pixels of the screenshot's left or right half are close to the colour ``rgb``."""
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    width = pixels.shape[1]
    pixels = pixels[:, : width // 2] if part == "left" else pixels[:, width // 2:]
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def test_error_analysis_draws_the_ced_plot(browser, lab):
    """04: run all; the CED plot (two curves, with and without flip TTA) renders as an image."""
    notebook = Notebook(browser, lab, "04_error_analysis.ipynb")
    try:
        notebook.run_all()
        notebook.assert_no_errors("after Run All")
        page = notebook.page
        cell = page.locator(".jp-CodeCell", has_text="plot_ced(").first
        image = cell.locator(".jp-OutputArea-output img").first
        image.wait_for(state="visible", timeout=REDRAW_TIMEOUT * 1000)
        image.scroll_into_view_if_needed()
        width, height = image.evaluate("e => [e.naturalWidth, e.complete ? e.naturalHeight : 0]")
        notebook.shot("0_ced_cell")
        figure = notebook.shot("ced", image)
        assert width >= 400 and height >= 150, f"the CED figure is {width} x {height} px"
        from PIL import Image

        pixels = np.asarray(Image.open(figure).convert("L"))
        drawn = float((pixels < 200).mean())
        # The legend draws a line of each curve's colour (matplotlib's C0 blue and C1
        # orange) whatever the errors are; the curves add more of both.
        blue, orange = colour_pixels(figure, (31, 119, 180)), colour_pixels(figure, (255, 127, 14))
        print(f"CED figure {width} x {height} px, {drawn:.1%} of it drawn; "
              f"left panel: {blue} blue and {orange} orange pixels")
        assert drawn > 0.02, f"the CED figure looks blank ({drawn:.2%} drawn); see {figure}"
        assert blue >= 10 and orange >= 10, (
            f"the CED panel does not show its two curves ({blue} blue, {orange} orange pixels); see {figure}")
        assert_figures_drawn(notebook, 10)
    except BaseException:
        notebook.shot_quietly("failure")
        raise
    finally:
        notebook.close()


FIGURE_JS = """e => {
    const cell = e.closest('.jp-CodeCell');
    const prompt = cell && cell.querySelector('.jp-InputPrompt');
    return {natural: e.naturalWidth, shown: e.getBoundingClientRect().width,
            area: e.closest('.jp-OutputArea-output').getBoundingClientRect().width,
            cell: prompt ? prompt.textContent.trim() : ''};
}"""


def assert_figures_drawn(notebook: Notebook, minimum: int) -> None:
    """At least ``minimum`` output images, each saved as a screenshot, none blank, each
    shown at its natural size (a figure wider than the output area is scaled down, and
    its text with it), and no stderr box (a warning shows as a pink box in JupyterLab: a
    student reads it as something gone wrong)."""
    from PIL import Image

    page = notebook.page
    images = page.locator(".jp-OutputArea-output img")
    count = images.count()
    assert count >= minimum, f"{notebook.name}: {count} figures on screen, expected at least {minimum}"
    sizes = []
    for index in range(count):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        shot = notebook.shot(f"figure_{index}", image)
        drawn = float((np.asarray(Image.open(shot).convert("L")) < 200).mean())
        assert drawn > 0.01, f"{notebook.name}: figure {index} looks blank ({drawn:.2%} drawn); see {shot}"
        sizes.append({"figure": index, **image.evaluate(FIGURE_JS)})
    (notebook.folder / f"{notebook.stem}_figures.json").write_text(json.dumps(sizes, indent=1))
    for size in sizes:
        print(f"{notebook.stem} figure {size['figure']} (cell {size['cell']}): {size['natural']} px, "
              f"shown {size['shown']:.0f} px in an output area of {size['area']:.0f} px")
    scaled = [f"figure {s['figure']} (cell {s['cell']}): {s['natural']} px shown at {s['shown']:.0f}"
              for s in sizes if s["shown"] < s["natural"] - 0.5]
    assert not scaled, (f"{notebook.name}: figures wider than the output area, scaled down with their text "
                        f"(see {notebook.folder}): " + "; ".join(scaled))
    pink = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    texts = [pink.nth(i).inner_text()[:300] for i in range(pink.count())]
    assert not texts, f"{notebook.name}: {len(texts)} stderr box(es) on screen: {texts}"


PHOTO_NOTEBOOKS = {"05_your_own_photos.ipynb"}       # need the photos extra (dlib, scikit-image)
PHOTOS_REQUIRED_ENV = "FACEPOINTS_PHOTOS_REQUIRED"    # "1" (CI): a missing extra fails, as in tests/test_photo.py


def needs_photos_extra(name: str) -> None:
    """Skip a photo notebook without the photos extra (fail where it is required)."""
    import importlib.util

    if name in PHOTO_NOTEBOOKS and not all(importlib.util.find_spec(m) for m in ("dlib", "skimage")):
        reason = "needs the photos extra (pip install -e '.[photos]')"
        if os.environ.get(PHOTOS_REQUIRED_ENV, "").strip() == "1":
            pytest.fail(f"{reason}, but ${PHOTOS_REQUIRED_ENV}=1 says the photo tests must run")
        pytest.skip(reason)


@pytest.mark.parametrize("name, figures", [("01_data_exploration.ipynb", 7), ("03_architecture_experiments.ipynb", 4),
                                           ("05_your_own_photos.ipynb", 2)])
def test_notebook_runs_clean_in_the_browser(browser, lab, name, figures):
    """01, 03 and 05: run all; every figure renders, no error and no warning box on screen."""
    needs_photos_extra(name)
    notebook = Notebook(browser, lab, name)
    try:
        notebook.run_all()
        notebook.assert_no_errors("after Run All")
        notebook.shot("0_after_run_all")
        assert_figures_drawn(notebook, figures)
    except BaseException:
        notebook.shot_quietly("failure")
        raise
    finally:
        notebook.close()


def phone_photo(path: Path) -> Path:
    """scikit-image's astronaut stored turned a quarter, as a phone stores a photo taken
    sideways, with the EXIF orientation (6: turn 90 degrees clockwise to view) that puts
    her upright again in a viewer."""
    import importlib.util

    from PIL import Image

    source = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data" / "astronaut.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(source).convert("RGB").rotate(90, expand=True).save(path, exif=exif.tobytes(), quality=92)
    return path


def test_uploading_a_photo_to_05_redraws_the_figures(browser, lab, tmp_path):
    """05: run all, then upload a phone's photo with **your photo**: both figures are
    redrawn for it, the status line and the table name it, and the face in the table
    stands upright (its EXIF orientation applied)."""
    name = "05_your_own_photos.ipynb"
    needs_photos_extra(name)
    notebook = Notebook(browser, lab, name, prefix="_upload")
    try:
        notebook.run_all()
        notebook.assert_no_errors("after Run All")
        page = notebook.page
        cell = page.locator(".jp-CodeCell", has=page.locator(".widget-upload")).first
        output = cell.locator(".widget-output")
        first = output.locator("img").first
        first.wait_for(state="visible", timeout=REDRAW_TIMEOUT * 1000)
        before = image_source(first)
        # The button opens the browser's file dialog (its <input type=file> is never put in
        # the page), which Playwright answers as a person picking the file would.
        with page.expect_file_chooser() as chooser:
            cell.locator(".widget-upload").first.click()
        chooser.value.set_files(str(phone_photo(tmp_path / "phone.jpg")))
        status = cell.locator(".widget-label", has_text="phone.jpg")
        status.wait_for(state="visible", timeout=60_000)
        redrawn = wait_redrawn(notebook, first, before)
        cell.scroll_into_view_if_needed()
        notebook.shot("0_after_upload")
        notebook.assert_no_errors("after the upload")
        assert redrawn, "the photo figure was not redrawn after the upload"
        assert re.search(r"phone\.jpg: \d+ faces? found", status.inner_text()), status.inner_text()
        assert output.locator("img").count() == 2, "the photo and the crops the model saw"
        rows = [line for line in output.inner_text().splitlines() if line.startswith("phone.jpg")]
        print("\n".join(rows))
        assert rows and " 0 " in rows[0], output.inner_text()
        roll = float(re.search(r"([+-]\d+)°", rows[0]).group(1))    # face 0: the finder's best
        assert abs(roll) < 20, f"the uploaded face lies at {roll} degrees: its EXIF orientation was not applied"
        assert_figures_drawn(notebook, 2)
    except BaseException:
        notebook.shot_quietly("failure")
        raise
    finally:
        notebook.close()
