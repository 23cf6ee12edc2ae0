"""A bounded schemathesis run (its CLI, against the published OpenAPI schema) on a loopback server: no 5xx,
only documented status codes and content types, and auth is enforced. ~15-20 s."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from splitshield.config import load_config
from splitshield.deploy.server import BackgroundServer, CloudModel, Limits, create_app
from splitshield.train import train

TOKEN = "schema-token-0123456789abcdef"


def _schemathesis() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    return exe if os.path.exists(exe) else (shutil.which("schemathesis") or "")


@pytest.mark.skipif(not _schemathesis(), reason="schemathesis is not installed (pip install schemathesis)")
def test_schemathesis_finds_no_server_errors(tmp_path):
    cfg = load_config({"name": "t", "data": {"name": "synthetic"}, "model": {"width": 0.125},
                       "defenses": [{"name": "gaussian_noise", "sigma": 0.05}],
                       "train": {"epochs": 1, "progress": False, "max_steps_per_epoch": 2}})
    run_dir = train(cfg, out=str(tmp_path / "run")).run_dir
    app = create_app(CloudModel.from_run(run_dir), TOKEN, Limits(max_batch=32, max_body_bytes=64 << 10,
                                                                  max_json_batch=4))
    with BackgroundServer(app) as server:
        proc = subprocess.run(
            [_schemathesis(), "run", f"{server.url}/openapi.json", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,ignored_auth",
             "--max-examples", "10", "--max-time", "15", "--seed", "1", "--workers", "1", "--no-color",
             "--generation-database", "none", "--request-timeout", "10", "-H", f"Authorization: Bearer {TOKEN}"],
            capture_output=True, text=True, timeout=90, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and int(generated.group(1)) >= 30 and generated.group(1) == generated.group(2), out[-1500:]
