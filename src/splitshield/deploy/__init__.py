"""Collaborative inference for real: export the edge encoder, serve the cloud part, run an edge client.

- ``export.py``: edge encoder (input normalisation, blocks, bottleneck, deterministic defense transforms) to
  ONNX or TorchScript, checked against PyTorch on real inputs; writes a JSON manifest next to the model file.
- ``cloud_export.py``: the cloud part to ONNX for the server, checked against PyTorch on real served features.
- ``edge.py``: runs an export (onnxruntime) and adds the deployed Gaussian noise on the device.
- ``wire.py``: the compact binary feature encoding used on the wire.
- ``cloud.py``: the cloud part in the server (onnxruntime or PyTorch backend).
- ``batcher.py``: dynamic batching of concurrent requests into one forward, with a bounded queue;
  ``shedding.py``: the 503 for a full queue, answered before routing.
- ``serving.py``: the serving knobs; ``replicas.py``: the app factory for ``--workers`` replicas.
- ``server.py``: the FastAPI app serving the cloud part; ``auth.py``: bearer tokens and bind rules;
  ``background.py``: uvicorn in a thread (tests, benchmarks).
- ``client.py``: the edge client (images -> features -> server -> predictions).
"""
