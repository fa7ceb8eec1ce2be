"""Import path for Ray Serve's own CLI on a cluster.

    serve build serving.serve_app:app -o serving/serve_config.yaml   # then edit replicas/GPUs there
    serve deploy serving/serve_config.yaml                           # on a running Ray cluster

The medgate configuration is read from ``$MEDGATE_CONFIG`` when the module is imported.
"""
from serving.app import build_app
from serving.config import load_config

app = build_app(load_config())
