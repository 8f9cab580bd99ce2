"""Tests for decaylab.lab.report: a self-contained report rebuilt from a run folder alone,
whose text (captions, tables, the sweep's choice) says what the figures and numbers mean."""
from __future__ import annotations

import base64
import fcntl
import functools
import http.server
import json
import os
import re
import select
import shutil
import subprocess
import sys
import threading
import time

import pytest

# private: _page_html assembles the page without rendering its figures (build_report renders all)
from decaylab.lab.report import _page_html, build_report, figures, load_run_folder
from report_fixtures import SWEEP, compact_result, make_run_folder

ALL_FIGURES = {"curves", "loss-curves", "histograms", "weights-overlaid", "layer-sparsity", "sparsity-over-time",
               "input-maps"}
CHROMIUM = "/usr/bin/chromium"
IMG_TAG = re.compile(r"<img\b[^>]*>")
URL_ATTR = re.compile(r"""\b(?:src|href|srcset|action|poster|data)\s*=\s*["']([^"']*)["']""")


def _img_attrs(page):
    """[{attribute: value}] for every <img> in the page."""
    tags = IMG_TAG.findall(page)
    return [dict(re.findall(r'([\w-]+)="([^"]*)"', tag)) for tag in tags]


def _row(page, name):
    """The summary-table row (<tr>...</tr>) whose first cell is ``name`` (already escaped)."""
    match = re.search(rf'<tr[^>]*><td class="name">{re.escape(name)}</td>.*?</tr>', page)
    assert match, f"no summary row for {name!r}"
    return match.group(0)


@pytest.fixture
def folder(tmp_path):
    return make_run_folder(tmp_path / "run")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(folder, report.html text) of the default three-run image folder, built once."""
    folder = make_run_folder(tmp_path_factory.mktemp("built") / "run")
    path = build_report(folder)
    assert path == folder / "report.html"
    return folder, path.read_text(encoding="utf-8")


def test_report_has_every_figure_inlined(built):
    _, page = built
    imgs = _img_attrs(page)
    assert {img["data-figure"] for img in imgs} == ALL_FIGURES
    assert all(img["id"] == img["data-figure"] and img["alt"] for img in imgs)
    assert all(img["src"].startswith("data:image/png;base64,") for img in imgs)
    assert page.count("<figcaption>") == len(ALL_FIGURES)


def test_report_references_nothing_outside_the_file(built):
    _, page = built
    urls = URL_ATTR.findall(page)
    assert urls, "expected at least the inlined images"
    assert all(u.startswith("data:") for u in urls), [u[:40] for u in urls]
    assert "http://" not in page and "https://" not in page
    assert "url(" not in page and "@import" not in page and "<script" not in page


def test_rebuild_to_out_gives_the_same_page(built, tmp_path):
    folder, page = built
    path = build_report(folder, out=tmp_path / "again.html")
    assert path == tmp_path / "again.html"
    assert path.read_text(encoding="utf-8") == page
    assert (folder / "report.html").read_text(encoding="utf-8") == page


def test_figures_rebuild_identically_from_the_folder_alone(built, tmp_path):
    folder, page = built
    copy = shutil.copytree(folder, tmp_path / "copy")
    (copy / "report.html").unlink()
    for pt in copy.glob("runs/*/model.pt"):
        pt.unlink()                       # the report must not need the weights
    embedded = {img["data-figure"]: base64.b64decode(img["src"].split(",", 1)[1])
                for img in _img_attrs(page)}
    assert figures(load_run_folder(copy)) == embedded


def test_figures_leave_matplotlib_settings_alone(tmp_path):
    import matplotlib
    folder = make_run_folder(tmp_path / "run", runs=("l1",), image_shape=None)
    before = dict(matplotlib.rcParams)
    assert set(figures(folder)) == ALL_FIGURES - {"input-maps", "weights-overlaid"}  # one run: nothing to overlay
    assert dict(matplotlib.rcParams) == before


def test_importing_report_does_not_import_matplotlib():
    code = "import sys, decaylab.lab.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_runs_follow_config_order_else_alphabetical(folder):
    assert [r["name"] for r in load_run_folder(folder)["runs"]] == ["none", "l2", "l1"]
    config = json.loads((folder / "config.json").read_text())
    del config["runs"]
    (folder / "config.json").write_text(json.dumps(config))
    assert [r["name"] for r in load_run_folder(folder)["runs"]] == ["l1", "l2", "none"]


def test_partial_last_line_is_skipped(tmp_path):
    folder = make_run_folder(tmp_path / "run", epochs=4, partial_line=True)
    runs = load_run_folder(folder)["runs"]
    assert [len(r["metrics"]) for r in runs] == [4, 4, 4]
    assert runs[-1]["metrics"][-1]["epoch"] == 4


def test_incomplete_run_builds_and_is_marked(tmp_path):
    folder = make_run_folder(tmp_path / "run", epochs=4, incomplete="l2", partial_line=True)
    run = load_run_folder(folder)
    l2 = next(r for r in run["runs"] if r["name"] == "l2")
    assert l2["final"] is None and len(l2["metrics"]) == 3
    page = build_report(folder).read_text(encoding="utf-8")
    assert "incomplete" in _row(page, "l2") and "incomplete" not in _row(page, "l1")
    assert "incomplete (interrupted)" in page
    assert {img["data-figure"] for img in _img_attrs(page)} == ALL_FIGURES
    assert "Left out (incomplete, no final.json): l2." in page


def test_run_with_no_final_at_all_still_builds(tmp_path):
    folder = make_run_folder(tmp_path / "run", runs=("l1",), incomplete="l1")
    page = build_report(folder).read_text(encoding="utf-8")
    figs = {img["data-figure"] for img in _img_attrs(page)}
    assert figs == {"curves", "loss-curves", "layer-sparsity", "sparsity-over-time"}


def test_regression_shows_loss(tmp_path):
    folder = make_run_folder(tmp_path / "run", task="regression", image_shape=None)
    page = build_report(folder).read_text(encoding="utf-8")
    assert "<th>test loss</th>" in page and "test accuracy" not in page
    assert "Train, validation and test loss per epoch" in page
    assert {img["data-figure"] for img in _img_attrs(page)} == ALL_FIGURES - {"input-maps"}


def test_best_validation_accuracy_is_highlighted_not_best_test(built):
    folder, page = built
    runs = load_run_folder(folder)["runs"]
    vals = {r["name"]: r["final"]["val_acc"] for r in runs}
    best = max(vals, key=vals.get)
    assert _row(page, best).startswith('<tr class="best">')
    assert not any(_row(page, n).startswith('<tr class="best">') for n in vals if n != best)
    assert "chosen on validation data" in page


def test_the_highlight_follows_validation_when_test_disagrees(tmp_path):
    import json

    folder = make_run_folder(tmp_path / "run", runs=("none", "l2", "l1"))
    for name, val, test in (("none", 0.99, 0.80), ("l2", 0.90, 0.99), ("l1", 0.91, 0.95)):
        f = folder / "runs" / name / "final.json"
        d = json.loads(f.read_text())
        d.update(val_acc=val, test_acc=test)
        f.write_text(json.dumps(d))
    page = build_report(folder).read_text(encoding="utf-8")
    assert _row(page, "none").startswith('<tr class="best">')
    assert not _row(page, "l2").startswith('<tr class="best">')


def test_text_is_escaped(tmp_path):
    folder = make_run_folder(tmp_path / "run", runs=("none", "<b>x</b>"), image_shape=None)
    status = {"state": "failed", "error": "RuntimeError: <script>alert(1)</script> & co",
              "updated": "2025-01-02T03:05:00+00:00"}
    (folder / "status.json").write_text(json.dumps(status))
    page = build_report(folder).read_text(encoding="utf-8")
    assert "<b>x</b>" not in page and "<script" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert '<dd class="failed">failed</dd>' in page


def test_not_a_run_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_run_folder(tmp_path)


# -- captions, tables and figures that depend on what the folder holds -----------------------
def test_label_noise_is_explained_next_to_the_curves_and_the_tables(seeded, tmp_path):
    page = _page_html(seeded, {"curves": b"png"})
    curves = re.search(r'<figcaption>(.*?)</figcaption>', page).group(1)
    assert "flipped" in curves and "below test" in curves and "narrows" not in curves
    assert page.count("A negative gap is expected here") == 2  # selection and summary notes
    clean = load_run_folder(make_run_folder(tmp_path / "clean"))
    assert "flipped" not in _page_html(clean, {"curves": b"png"})


def test_selection_table_uses_the_summary_units(seeded):
    page = _page_html(seeded, {})
    table = re.search(r'<table id="selection">(.*?)</table>', page).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", table)
    assert cells and all(c.endswith("%") for c in cells), cells
    assert not any("± +" in c or "± -" in c for c in cells)


def test_sweep_choice_paragraph_uses_percent_like_the_summary(seeded):
    sw = {**SWEEP, "describe": "L1(alpha=λ)", "chosen_test_acc": {"best": 0.8234, "one_se": 0.8234}}
    page = _page_html({**seeded, "compare": None, "sweep": sw}, {})
    assert "(test 82.3%)" in page


@pytest.mark.slow
def test_report_shows_the_compaction_figure_only_after_compact(tmp_path):
    folder = make_run_folder(tmp_path / "run")
    assert "compaction" not in figures(folder)
    (folder / "runs" / "l1" / "compact.json").write_text(json.dumps(compact_result([1, 2, 3], {"fc1": [5, 16]})))
    (folder / "runs" / "l2" / "compact.json").write_text(json.dumps({"compacted": False, "reason": "x"}))
    assert "compaction" in figures(folder)
    page = build_report(folder).read_text()
    assert 'data-figure="compaction"' in page and "Nothing to remove (no zero neuron, channel or input): l2." in page


# ----------------------------------------------------------------------------- browser
class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records every request line it answers."""

    def log_request(self, code="-", size="-"):
        self.server.seen.append(self.requestline)

    def log_message(self, *args):
        pass


def _high_fd(fd):
    """Move ``fd`` to a number >= 10 (inheritable) and return it."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``
    (chromium reads commands on fd 3 and writes replies and events on fd 4, NUL-separated)."""

    def __init__(self, chromium, flags, timeout=30.0):
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()
        cmd_r, evt_w = _high_fd(cmd_r), _high_fd(evt_w)   # so "3<&N 4>&M" cannot collide
        shell = f'exec "$0" "$@" 3<&{cmd_r} 4>&{evt_w} {cmd_r}<&- {evt_w}>&-'
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", shell, chromium, "--remote-debugging-pipe", *flags],
            pass_fds=(cmd_r, evt_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(evt_w)
        self._deadline = time.monotonic() + timeout
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method, session=None, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        reply = self._wait(lambda m, i=self._id: m.get("id") == i)
        assert "error" not in reply, reply
        return reply["result"]

    def wait_event(self, method):
        if not any(e["method"] == method for e in self.events):
            self._wait(lambda m: m.get("method") == method)

    def _wait(self, match):
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if match(msg):
                    return msg
            left = self._deadline - time.monotonic()
            if left <= 0 or not select.select([self._evt_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._evt_r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited with {self.proc.wait()}")
            self._buf += chunk

    def close(self):
        try:
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode()
                     + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._evt_r)


_IMAGE_CHECK = """JSON.stringify(Array.from(document.images).map(function (i) {
  return {figure: i.dataset.figure, ok: i.complete && i.naturalWidth > 0};
}))"""


def _chromium_or_skip():
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; CI must install chromium for browser tests")
    pytest.skip(f"{CHROMIUM} is not installed")


@pytest.fixture
def served(tmp_path):
    """(host:port, server) of a local server over tmp_path/site that logs its requests."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(_LoggingHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.seen, server.site = [], site
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _open_in_chromium(chromium, url, profile):
    """Load ``url`` in headless chromium; return (image checks, URLs the page requested)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--user-data-dir={profile}", "about:blank"]
    cdp = _DevTools(chromium, flags)
    try:
        target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
        session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Network.enable", "Page.enable"):
            cdp.send(domain, session)
        cdp.send("Page.navigate", session, url=url)
        cdp.wait_event("Page.loadEventFired")
        value = cdp.send("Runtime.evaluate", session, expression=_IMAGE_CHECK,
                         returnByValue=True)["result"]["value"]
    finally:
        cdp.close()
    requested = [e["params"]["request"]["url"] for e in cdp.events
                 if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session]
    return json.loads(value), requested


@pytest.mark.browser
def test_report_renders_offline_in_chromium(built, tmp_path, served):
    chromium = _chromium_or_skip()
    host, server = served
    (server.site / "report.html").write_text(built[1], encoding="utf-8")
    images, requested = _open_in_chromium(chromium, f"http://{host}/report.html",
                                          tmp_path / "profile")
    assert {img["figure"] for img in images} == ALL_FIGURES
    assert all(img["ok"] for img in images), images
    page_url = f"http://{host}/report.html"
    assert requested[0] == page_url
    assert all(u == page_url or u.startswith("data:") for u in requested), requested
    assert server.seen == ["GET /report.html HTTP/1.1"]
