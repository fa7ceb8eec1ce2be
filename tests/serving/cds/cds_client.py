"""A CDS Client (an EHR) for tests: its signing keys, the JWTs it sends, a JWK Set server, and the
CDS Hooks routes served by uvicorn on a free port (without Ray and without the guard, whose role
matrix is tested beside)."""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI

from peers import free_port
from serving.cds import api as cds_api
from serving.http import context as web_context
from serving.http.auth import digest
from web_app import TOKENS

EHR_ISS = "https://ehr.hospital.example"


class SigningKey:
    """An ES384 (EC P-384) or RS384 (RSA 2048) key pair with its kid."""

    def __init__(self, alg: str = "ES384", kid: str | None = None) -> None:
        self.alg, self.kid = alg, kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        self.private = ec.generate_private_key(ec.SECP384R1()) if alg == "ES384" else \
            rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        algorithm = jwt.algorithms.ECAlgorithm if self.alg == "ES384" else jwt.algorithms.RSAAlgorithm
        key = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**key, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, aud: str, *, iss: str = EHR_ISS, lifetime_s: int = 300, issued_ago_s: int = 0,
              jti: str | None = None, **claims) -> str:
        now = int(time.time()) - issued_ago_s
        payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + lifetime_s, "jti": jti or uuid.uuid4().hex,
                   "sub": "ehr-client-1", **claims}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid})


class JwksServer:
    """An HTTP server answering ``GET /jwks.json`` with the keys' JWK Set (the EHR's published keys)."""

    def __init__(self, *keys: SigningKey) -> None:
        body = json.dumps({"keys": [k.jwk() for k in keys]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "JwksServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class CdsApp:
    """The CDS Hooks routes over ``state_dir``; ``url`` once started."""

    def __init__(self, state_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = FastAPI()
        app.include_router(cds_api.build_router(web_context.current))
        self.context = web_context.install(state_dir, [(digest(t), r, f"{r} user") for r, t in TOKENS.items()],
                                           public_base_url=self.url)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def service_url(self, service: str = "medgate-patient-view") -> str:
        return f"{self.url}/cds-services/{service}"

    def __enter__(self) -> "CdsApp":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
