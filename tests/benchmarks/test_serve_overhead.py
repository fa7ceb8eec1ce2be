"""benchmarks/serve_overhead.py: the one client of every HTTP server, the targets from one run's
figures, and peers skipped with the setup command when their virtual environment is missing."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import benchmarks.peers.launch as launch
import benchmarks.serve_overhead as bench


def figures(http_rps: float, litserve_rps: float | None = None, bentoml_rps: float | None = None) -> dict:
    row = lambda p50, rps: {"sequential": {"p50_ms": p50}, "concurrent": {"req_per_s": rps}}  # noqa: E731
    rows = {"serve_handle": row(4.0, 300.0), "http": row(12.0, http_rps)}
    if litserve_rps is not None:
        rows["litserve"] = row(20.0, litserve_rps)
    if bentoml_rps is not None:
        rows["bentoml"] = row(20.0, bentoml_rps)
    return rows


def test_targets_give_numbers_and_verdicts_from_the_same_run():
    goals = bench.targets(figures(500.0, litserve_rps=480.0, bentoml_rps=520.0), direct_best=1800.0,
                          peers=["litserve", "bentoml"])
    assert goals["serve_handle_sequential_p50"] == {"target_ms": 5.0, "p50_ms": 4.0, "pass": True}
    assert goals["http_sequential_p50"] == {"target_ms": 10.0, "p50_ms": 12.0, "pass": False}
    direct = goals["http_concurrent_vs_direct"]
    assert direct["needed_req_per_s"] == pytest.approx(450.0) and direct["share"] == pytest.approx(500 / 1800)
    assert direct["pass"] is True
    peers = goals["http_concurrent_vs_peers"]
    assert (peers["best_peer"], peers["best_peer_req_per_s"], peers["pass"]) == ("bentoml", 520.0, False)


def test_targets_against_peers_only_count_peers_that_ran():
    goals = bench.targets(figures(100.0, litserve_rps=90.0), direct_best=1000.0, peers=["litserve", "bentoml"])
    assert goals["http_concurrent_vs_peers"]["best_peer"] == "litserve"
    assert goals["http_concurrent_vs_peers"]["pass"] is True
    assert goals["http_concurrent_vs_direct"]["pass"] is False  # 100 < 0.25 x 1000
    none = bench.targets(figures(100.0), direct_best=1000.0, peers=[])
    assert none["http_concurrent_vs_peers"] == {"target": "at least the best of LitServe and BentoML",
                                                "pass": None, "note": "no peer ran"}


@pytest.mark.parametrize("reply", [
    {"model": "tb", "findings": [{"code": {"value": "x"}, "probability": 0.25}]},  # medgate
    {"probability": 0.25},  # LitServe
    [{"probability": 0.25}],  # BentoML's batchable API: this request's slice of the batch
])
def test_probability_is_found_in_each_servers_reply(reply):
    assert bench.probability_in(reply) == 0.25


def test_probability_is_none_when_a_reply_has_none():
    assert bench.probability_in({"detail": "Internal server error"}) is None


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append({"path": self.path, "authorization": self.headers["Authorization"],
                          "content_type": self.headers["Content-Type"], "body": body,
                          "thread": threading.get_ident(), "peer_port": self.client_address[1]})
        reply = json.dumps({"probability": 0.5}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen, _Recorder.status = [], 200
    _Recorder.protocol_version = "HTTP/1.1"  # keep-alive, so connections can be counted
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_upload_client_posts_the_png_as_file_with_a_bearer_token(recorder):
    call = bench.upload_client(recorder + "/v1/infer/tb", b"\x89PNG\r\n\x1a\nrest", token="t0k")
    assert call() == {"probability": 0.5}
    (seen,) = _Recorder.seen
    assert seen["path"] == "/v1/infer/tb" and seen["authorization"] == "Bearer t0k"
    assert seen["content_type"].startswith("multipart/form-data")
    assert b'name="file"; filename="x.png"' in seen["body"] and b"Content-Type: image/png" in seen["body"]
    assert b"\x89PNG\r\n\x1a\nrest" in seen["body"]


def test_upload_client_keeps_one_connection_per_caller(recorder):
    call = bench.upload_client(recorder + "/v1/infer/tb", b"png")
    stats = bench.concurrent(call, 40, 4)
    assert stats["req_per_s"] > 0
    assert len({seen["peer_port"] for seen in _Recorder.seen}) == 4  # not one per request, not one shared


def test_upload_client_raises_on_an_error_status(recorder):
    _Recorder.status = 503
    with pytest.raises(Exception, match="503"):
        bench.upload_client(recorder + "/v1/infer/tb", b"png")()


def test_a_peer_without_its_venv_is_skipped_with_the_setup_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch, "VENVS", tmp_path / "no-venvs")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    rows, skipped = bench.measure_peers(["litserve", "bentoml"], "1.1.0", b"png", 2, 2)
    assert rows == {}
    assert set(skipped) == {"litserve", "bentoml"}
    out = capsys.readouterr().out
    assert "skipping litserve: no virtual environment at" in out
    assert "bash benchmarks/peers/setup.sh litserve" in out and "bash benchmarks/peers/setup.sh bentoml" in out


def test_unknown_peer_names_are_refused_naming_the_known_ones():
    assert launch.peer_names("litserve, bentoml") == ["litserve", "bentoml"]
    assert launch.peer_names("") == []
    with pytest.raises(ValueError, match=r"\['bentoml', 'litserve'\], \['triton'\] is given"):
        launch.peer_names("litserve,triton")
    with pytest.raises(SystemExit):
        bench.main(["--peers", "triton"])


def test_each_proxy_mode_measured_gets_its_own_targets():
    rows = figures(100.0, litserve_rps=150.0)
    rows["serve_handle_haproxy"] = {"sequential": {"p50_ms": 4.5}, "concurrent": {"req_per_s": 280.0}}
    rows["http_haproxy"] = {"sequential": {"p50_ms": 9.0}, "concurrent": {"req_per_s": 160.0}}
    goals = bench.targets(rows, direct_best=1000.0, peers=["litserve"])
    assert goals["http_sequential_p50"]["pass"] is False and goals["http_sequential_p50_haproxy"]["pass"] is True
    assert goals["serve_handle_sequential_p50_haproxy"] == {"target_ms": 5.0, "p50_ms": 4.5, "pass": True}
    assert goals["http_concurrent_vs_peers"]["pass"] is False and goals["http_concurrent_vs_peers_haproxy"]["pass"]
    rows["http_ray_proxy"] = {"sequential": {"p50_ms": 20.0}, "concurrent": {"req_per_s": 70.0}}
    rows["serve_handle_ray_proxy"] = {"sequential": {"p50_ms": 9.0}, "concurrent": {"req_per_s": 200.0}}
    goals = bench.targets(rows, direct_best=1000.0, peers=["litserve"])
    assert goals["http_sequential_p50_ray_proxy"]["p50_ms"] == 20.0 and goals["http_sequential_p50"]["p50_ms"] == 12.0
    only_haproxy = {k: v for k, v in rows.items() if k.endswith("_haproxy")}
    assert set(bench.targets(only_haproxy, direct_best=1000.0, peers=[])) == {
        "serve_handle_sequential_p50_haproxy", "http_sequential_p50_haproxy", "http_concurrent_vs_direct_haproxy",
        "http_concurrent_vs_peers_haproxy"}
