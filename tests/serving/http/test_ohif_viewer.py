"""The OHIF Viewer (its published build, ``@ohif/app`` on npm) in headless Chromium over medgate's
DICOMweb: the study list finds a chest X-ray medgate processed, the viewer draws its image from
WADO-RS frames, lists its result objects (SR, SC, GSPS) and, opening the SR, draws its finding on
the X-ray; for a chest CT the viewer draws the slices and overlays the nodules' SEG, its panel
listing the segments.  (OHIF 3.13 has no presentation state display: it lists the GSPS series as one
it cannot show.)

OHIF's ``dist`` is a static site.  As a hospital would put it behind its reverse proxy, the test
serves it with a small same-origin proxy (:class:`OhifProxy`): OHIF's files at ``/``, our
``app-config.js`` (one DICOMweb data source at ``/dicomweb``), and ``/dicomweb/*`` forwarded to the
medgate web app with the bearer token added, so the browser never holds it and needs no CORS or
CSP exception.  The package is fetched with ``npm pack`` at a pinned version, checked against its
pinned integrity and unpacked into the git-ignored ``tests/serving/http/ohif/``; without npm or the
registry the test is skipped.  A screenshot goes to the test's tmp folder (and to
``docs/ohif-viewer.png`` with ``MEDGATE_UPDATE_SCREENSHOTS=1``).
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import itertools
import json
import mimetypes
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
import requests

from scipy import ndimage

from dicom_gateway.seg import build_segmentation
from dicom_testdata import chest_ct, make_ct_series
from models.finding import Concept, Finding
from models.registry import ModelRegistry
from peers import free_port, wait_until
from serving.imaging.findings import finding_of, source_image
from serving.imaging.results import ResultWriter
from serving.store import Store
from test_dicomweb import _client, _part10, server  # noqa: F401 - the fixture
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from web_app import CHROMIUM, CHROMIUM_ARGS, auth

#: The published OHIF build, pinned with its npm integrity (``npm view @ohif/app@3.13.2 dist.integrity``).
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==")
OHIF_FOLDER = Path(__file__).with_name("ohif")
NPM_PACK_TIMEOUT_S = 300
DOCS = Path(__file__).resolve().parents[3] / "docs"
DOC_SCREENSHOT = "ohif-viewer.png"
PATIENT_ID, PATIENT_NAME, ACCESSION = "079300000023", "Tran^Thi Mai", "ACC-OHIF-1"
#: The model's probability in the study's report.
PROBABILITY = 0.91
#: A returning user: OHIF's first-visit tour (``ohif.tours``, a modal overlay) has been shown.
TOUR_SEEN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"
#: Where OHIF 3.13's right-hand panel button (segmentations) sits in a 1280x800 window.
SEGMENTATION_PANEL_XY = (1262, 99)
PULMONARY_NODULE = Concept("786838002", "SCT", "Pulmonary nodule")
#: Seconds the viewer may take to show each step (the whole test stays under a minute).
STEP_TIMEOUT_MS = 30_000
#: How long to wait for a measurement's label before rendering the viewport again.
REDRAW_WAIT_MS = 4_000
VIEWPORT = {"width": 1280, "height": 800}

#: OHIF's configuration: one DICOMweb data source on the proxy's own origin (the options the
#: ``@ohif/extension-default`` dicomweb data source reads; WADO-RS frames for images and thumbnails).
APP_CONFIG = """window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  investigationalUseDialog: { option: 'never' },
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  maxNumberOfWebWorkers: 2,
  defaultDataSourceName: 'medgate',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'medgate',
    configuration: {
      friendlyName: 'medgate DICOMweb',
      name: 'medgate',
      wadoUriRoot: window.location.origin + '/dicomweb',
      qidoRoot: window.location.origin + '/dicomweb',
      wadoRoot: window.location.origin + '/dicomweb',
      qidoSupportsIncludeField: true,
      supportsReject: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      staticWado: false,
      singlepart: false,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: false },
    },
  }],
};
"""


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """OHIF's ``dist`` folder, fetched (``npm pack``) and unpacked on first use."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(reason="npm is needed to fetch @ohif/app (Debian package npm)")
    target = OHIF_FOLDER / f"app-{OHIF_VERSION}"
    stamp = target / ".medgate-integrity"
    OHIF_FOLDER.mkdir(exist_ok=True)
    with open(Path(tempfile.gettempdir()) / "medgate-ohif-install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one installer at a time
        if stamp.exists() and stamp.read_text() == OHIF_INTEGRITY:
            return target / "dist"
        pack = subprocess.run([npm, "pack", f"@ohif/app@{OHIF_VERSION}", "--json", "--pack-destination",
                               str(OHIF_FOLDER)], capture_output=True, text=True, timeout=NPM_PACK_TIMEOUT_S)
        if pack.returncode != 0:
            pytest.skip(reason=f"@ohif/app@{OHIF_VERSION} cannot be fetched from the npm registry: "
                               f"{pack.stderr.strip()[-400:]}")
        tarball = OHIF_FOLDER / json.loads(pack.stdout)[0]["filename"]
        try:
            data = tarball.read_bytes()
            assert _integrity(data) == OHIF_INTEGRITY, f"{tarball} is not the pinned @ohif/app@{OHIF_VERSION}"
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(tarball) as archive:
                archive.extractall(target, members=[m for m in archive.getmembers()
                                                    if m.name.startswith("package/dist/")], filter="data")
            (target / "package" / "dist").rename(target / "dist")
            (target / "package").rmdir()
        finally:
            tarball.unlink(missing_ok=True)
        stamp.write_text(OHIF_INTEGRITY)
    return target / "dist"


class OhifProxy:
    """OHIF's static files at ``/`` and medgate's DICOMweb at ``/dicomweb/*`` on one origin, the
    bearer token added to every forwarded request; ``requests`` records (path, status, content type)."""

    def __init__(self, dist: Path, medgate_url: str, headers: dict[str, str]) -> None:
        self.dist, self.medgate_url, self.headers = dist.resolve(), medgate_url, headers
        self.requests: list[tuple[str, int, str]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the recorded requests are enough
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urlsplit(self.path).path
                if path.startswith("/dicomweb/"):
                    proxy.forward(self)
                elif path == "/app-config.js":
                    self.reply(200, "application/javascript", APP_CONFIG.encode())
                else:
                    proxy.static(self, path)

            def reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler) -> None:
        headers = {**self.headers, **({"Accept": handler.headers["Accept"]} if handler.headers["Accept"] else {})}
        answer = requests.get(self.medgate_url + handler.path, headers=headers, timeout=30)
        content_type = answer.headers.get("content-type", "application/octet-stream")
        self.requests.append((urlsplit(handler.path).path, answer.status_code, content_type))
        handler.reply(answer.status_code, content_type, answer.content)

    def static(self, handler, path: str) -> None:
        file = (self.dist / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.dist) or not file.is_file():
            file = self.dist / "index.html"  # the viewer's own routes (/viewer?...) are the app
        content_type = ("application/wasm" if file.suffix == ".wasm" else
                        mimetypes.guess_type(file.name)[0] or "application/octet-stream")
        handler.reply(200, content_type, file.read_bytes())

    def __enter__(self) -> "OhifProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def processed(server):
    """A generated chest X-ray stored by STOW-RS and its results (SR, SC, GSPS) written by the
    pipeline's result writer, the study then marked ``done`` as the pipeline marks it."""
    pixels = generate_cxr(np.random.default_rng(23), size_px=256, tb=True).pixels
    ds = _part10(make_dx_dataset(pixels, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, accession=ACCESSION))
    _client(server).store_instances([ds])
    manifest = ModelRegistry().get("tb")
    info = {"name": "tb", "version": manifest.version, "threshold": manifest.threshold,
            "finding": {"value": manifest.finding.value, "scheme": manifest.finding.scheme,
                        "meaning": manifest.finding.meaning}}
    heatmap = np.zeros((1, 8, 8), np.float32)
    heatmap[0, 3, 2] = 1.0  # the lesion's peak: the patient's right mid zone, left of the picture
    finding = finding_of(ds, {"probability": np.array([PROBABILITY], np.float32), "heatmap": heatmap}, info,
                         manifest.serving)
    store = Store(server.state_dir / "medgate.sqlite3")
    try:
        paths = ResultWriter(store, None, server.state_dir / "results").image(ds, finding, info, manifest.serving)
        time.sleep(0.01)
        store.set_study_status(str(ds.StudyInstanceUID), "done", detail="SR, SC, GSPS")
    finally:
        store.close()
    assert sorted(paths) == ["gsps", "sc", "sr"]
    return server, ds, {kind: pydicom.dcmread(path) for kind, path in paths.items()}


@contextmanager
def viewer(dist: Path, web, tmp_path: Path):
    """A Chromium page and the :class:`OhifProxy` before ``web`` (``page.proxy``); on the way out the
    DICOMweb requests and console errors are printed and the last view is kept as ``last.png``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(reason="playwright is not installed (pip install playwright; the dev extra has it)")
    if not Path(CHROMIUM).exists():
        pytest.skip(reason=f"{CHROMIUM} not found (Debian package chromium)")
    with OhifProxy(dist, web.url, auth("clinician")) as proxy, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, locale="en-US")
        context.add_init_script(TOUR_SEEN)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
        page.proxy = proxy
        try:
            yield page
        finally:
            page.screenshot(path=str(tmp_path / "last.png"))
            print("DICOMweb requests:", *proxy.requests, "console errors:", *page.console_errors[:20], sep="\n")
            browser.close()


@pytest.fixture
def page(ohif_dist, processed, tmp_path):
    with viewer(ohif_dist, processed[0], tmp_path) as page:
        yield page


def _canvas_spread(page) -> float:
    """The spread of grey values the viewport's canvas shows (0 for an empty viewport)."""
    return page.evaluate("""() => {
        const canvas = document.querySelector('canvas.cornerstone-canvas');
        if (!canvas || !canvas.width) return 0;
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let min = 255, max = 0;
        for (let i = 0; i < d.length; i += 4) { min = Math.min(min, d[i]); max = Math.max(max, d[i]); }
        return max - min;
    }""")


def _coloured_pixels(page) -> int:
    """Pixels of the viewport's canvas that are not grey (a segmentation's colour over the CT)."""
    return page.evaluate("""() => {
        const canvas = document.querySelector('canvas.cornerstone-canvas');
        if (!canvas || !canvas.width) return 0;
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) { if (Math.abs(d[i + 2] - d[i]) > 40) n++; }
        return n;
    }""")


def _wait_for_drawn_text(page, text: str) -> None:
    """Wait for ``text`` drawn on the viewport.  OHIF 3.13 draws an SR's measurements on the
    viewport's next render; when they are added after its last one (a race in the viewer, about
    one run in three on our 2-core machine) they appear only when something renders it again, as a
    user's resizing the window does.  So between waits the window is made one pixel wider, then
    back, as a user would nudge it; it ends at :data:`VIEWPORT` for the screenshot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    for width in itertools.cycle((VIEWPORT["width"] + 1, VIEWPORT["width"])):
        try:
            page.get_by_text(text).first.wait_for(timeout=REDRAW_WAIT_MS)
            break
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise
        page.set_viewport_size({**VIEWPORT, "width": width})
    page.set_viewport_size(VIEWPORT)


def test_ohif_finds_the_study_shows_its_image_and_lists_its_results(page, processed, tmp_path):
    web, ds, results = processed
    proxy = page.proxy
    page.goto(proxy.url + "/")
    page.get_by_text("Tran, Thi Mai").first.wait_for(timeout=STEP_TIMEOUT_MS)  # the study list, PN as OHIF shows it
    assert page.get_by_text("DX\\OT\\PR\\SR").count() == 1  # Modalities in Study: the image and our results
    assert any(path == "/dicomweb/studies" and status == 200 for path, status, _ in proxy.requests), proxy.requests

    page.goto(f"{proxy.url}/viewer?StudyInstanceUIDs={ds.StudyInstanceUID}")
    frames = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
              f"{ds.SOPInstanceUID}/frames/1")
    wait_until(lambda: any(path == frames and status == 200 for path, status, _ in proxy.requests),
               timeout_s=STEP_TIMEOUT_MS / 1000)
    wait_until(lambda: _canvas_spread(page) > 50, timeout_s=STEP_TIMEOUT_MS / 1000)  # the X-ray is drawn
    for kind, modality in (("sr", "SR"), ("sc", "OT"), ("gsps", "PR")):  # the study browser lists each result
        page.get_by_text(str(results[kind].SeriesDescription), exact=True).first.wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_text(modality, exact=True).first.wait_for(timeout=STEP_TIMEOUT_MS)
    page.get_by_text("SR", exact=True).first.dblclick()  # the report, read by OHIF's TID 1500 reader
    # its finding, drawn at its place on the X-ray (the label is the measurement's, with its UCUM unit "1")
    _wait_for_drawn_text(page, f"Probability: {PROBABILITY:.2f}")
    path = tmp_path / DOC_SCREENSHOT
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    if os.environ.get("MEDGATE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, DOCS / DOC_SCREENSHOT)
    failed = [(path, status) for path, status, _ in proxy.requests if status >= 400]
    assert failed == [], failed


@pytest.fixture
def processed_ct(server):
    """A generated chest CT with two nodules stored by STOW-RS, its SEG and SR written by the result
    writer (as the pipeline writes a nodule model's results), the study then marked ``done``."""
    volume, sample = chest_ct(seed=3, shape_vox=(20, 64, 64), n_nodules=2)
    labels, _ = ndimage.label(sample.nodule_mask)
    series = [_part10(ds) for ds in make_ct_series(volume, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)]
    _client(server).store_instances(series)
    images = [source_image(ds) for ds in series]
    info = {"name": "nodule", "version": "1.0.0"}
    findings = [Finding(model="nodule", model_version="1.0.0", code=PULMONARY_NODULE,
                        probability=p, threshold=0.5, source=images[0], other_sources=tuple(images[1:]),
                        mask=labels == n) for n, p in ((1, 0.97), (2, 0.93))]
    store = Store(server.state_dir / "medgate.sqlite3")
    try:
        writer = ResultWriter(store, None, server.state_dir / "results")
        seg = build_segmentation(findings, series)
        study_uid = str(series[0].StudyInstanceUID)
        writer.dicom(study_uid, "SEG", seg, info, findings)
        writer.dicom(study_uid, "SR", writer.sr(findings, series, info, seed=study_uid, segmentation=seg), info,
                     findings)
        time.sleep(0.01)
        store.set_study_status(study_uid, "done", detail="SEG, SR")
    finally:
        store.close()
    return server, series, seg


def test_ohif_shows_the_segmentation_of_a_ct(processed_ct, ohif_dist, tmp_path):
    web, series, seg = processed_ct
    with viewer(ohif_dist, web, tmp_path) as page:
        proxy = page.proxy
        page.goto(f"{proxy.url}/viewer?StudyInstanceUIDs={series[0].StudyInstanceUID}")
        page.get_by_text(str(seg.SeriesDescription), exact=True).first.wait_for(timeout=STEP_TIMEOUT_MS)
        wait_until(lambda: _canvas_spread(page) > 50, timeout_s=STEP_TIMEOUT_MS / 1000)  # the CT, from its frames
        assert _coloured_pixels(page) == 0
        page.get_by_text("SEG", exact=True).first.dblclick()
        page.get_by_text("Do you want to open this Segmentation?").wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_text("Yes", exact=True).first.click()
        wait_until(lambda: _coloured_pixels(page) > 100, timeout_s=STEP_TIMEOUT_MS / 1000)  # the nodule, in colour
        page.mouse.click(*SEGMENTATION_PANEL_XY)
        for segment in seg.SegmentSequence:  # OHIF's segmentation panel lists the segments by label
            page.get_by_text(str(segment.SegmentLabel), exact=True).wait_for(timeout=STEP_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "ohif-viewer-seg.png"))
    seg_path = f"/dicomweb/studies/{seg.StudyInstanceUID}/series/{seg.SeriesInstanceUID}/instances/{seg.SOPInstanceUID}"
    assert (seg_path, 200) in [(path, status) for path, status, _ in proxy.requests]  # OHIF reads a SEG whole
    assert sum("/frames/" in path for path, _, _ in proxy.requests) >= len(series) // 2
    failed = [(path, status) for path, status, _ in proxy.requests if status >= 400]
    assert failed == [], failed
