"""Collaborative inference for real: export the edge encoder, serve the cloud part, run an edge client.

- ``export.py``: edge encoder (input normalisation, blocks, bottleneck, deterministic defense transforms) to
  ONNX or TorchScript, checked against PyTorch on real inputs; writes a JSON manifest next to the model file.
- ``edge.py``: runs an export (onnxruntime) and adds the deployed Gaussian noise on the device.
- ``wire.py``: the compact binary feature encoding used on the wire.
- ``server.py``: the FastAPI app serving the cloud part; ``auth.py``: bearer tokens and bind rules.
- ``client.py``: the edge client (images -> features -> server -> predictions).
"""
