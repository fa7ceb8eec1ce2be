"""Model serving: Ray Serve deployments, the HTTP API and the server process.

Importing it has no side effect: the Ray authentication mode is fixed by the ``medgate`` command
before it imports Ray (:func:`serving.cli.main.fix_ray_auth_mode`).
"""
