"""Model serving: Ray Serve deployments, the HTTP API and the server process.

Ray reads its authentication mode once, when it is first imported. A second
driver (``medgate models deploy``) must use the same mode as the server that
started the cluster, so the mode is fixed here, before any ray import, rather
than left to Ray's guess from whether ``~/.ray/auth_token`` happens to exist.
"""
import os

os.environ.setdefault("RAY_AUTH_MODE", "token")
