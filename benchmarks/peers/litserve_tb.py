"""LitServe serving the ``tb`` model with its own dynamic batching, as a user would write it.

``decode_request`` turns the uploaded PNG into the model input (in LitServe's inference worker, where
it runs decoding), ``batch`` stacks the items LitServe gathered (:data:`benchmarks.peers.LITSERVE_BATCHING`),
``predict`` runs one engine call, ``unbatch`` and ``encode_response`` answer ``{"probability": p}``.
Run in its own virtual environment (``bash benchmarks/peers/setup.sh litserve``)::

    PYTHONPATH=. .bench-venvs/litserve/bin/python benchmarks/peers/litserve_tb.py --port 8011
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import litserve as ls  # noqa: E402

from benchmarks.peers import LITSERVE_BATCHING, ROUTE  # noqa: E402
from benchmarks.peers.tb_model import TbModel  # noqa: E402


class TbAPI(ls.LitAPI):
    def setup(self, device) -> None:
        self.model = TbModel()

    def decode_request(self, request):
        # No annotation (LitServe reads it as `Request`): LitServe hands over the parsed multipart form.
        return self.model.item(request["file"].file.read())

    def batch(self, inputs):
        return list(inputs)

    def predict(self, batch):
        return self.model.probabilities(batch)

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return {"probability": output}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    api = TbAPI(api_path=ROUTE, **LITSERVE_BATCHING)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
