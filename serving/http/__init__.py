"""The HTTP server: the ingress (``/v1``, ``/healthz``, ``/metrics``), STOW-RS, the dashboard and its
routes, the FHIR read API, authentication, sessions, request limits and security headers."""
