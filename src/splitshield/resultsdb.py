"""The results database: one SQLite row per stored result (training, attack, audit, export) of every run.

SQLite in WAL mode with a busy timeout is safe with concurrent writers (parallel grid workers, several processes)
and needs no server. Rows are keyed by (run_dir, kind), so re-storing a result replaces it: exactly once per key.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from contextlib import closing
from typing import Any, Iterable, Optional

DEFAULT_DB = os.path.join("runs", "results.sqlite")
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    run_dir TEXT NOT NULL,
    kind TEXT NOT NULL,            -- 'train', 'attack-decoder-train', 'audit', ...
    name TEXT, dataset TEXT, model TEXT, defenses TEXT, seed INTEGER,
    config_hash TEXT, code_version TEXT, created REAL,
    metrics TEXT NOT NULL,         -- JSON object
    PRIMARY KEY (run_dir, kind)
)
"""


def db_path() -> str:
    return os.environ.get("SPLITSHIELD_RESULTS_DB", DEFAULT_DB)


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (identifies the code behind a number)."""
    from splitshield import __version__

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def connect(path: Optional[str] = None) -> sqlite3.Connection:
    path = path or db_path()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.execute(SCHEMA)
    return conn


def record(run_dir: str, kind: str, cfg: Any, metrics: dict[str, Any], path: Optional[str] = None) -> None:
    """Insert or replace the row (run_dir, kind). ``cfg`` is the run's ExperimentConfig."""
    row = (os.path.abspath(run_dir), kind, cfg.name, cfg.data.name, cfg.model.name,
           "+".join(d.name for d in cfg.defenses) or "none", cfg.seed, cfg.digest(), code_version(), time.time(),
           json.dumps(metrics, sort_keys=True, default=float))
    with closing(connect(path)) as conn, conn:
        conn.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)


def query(path: Optional[str] = None, **where: Any) -> list[dict[str, Any]]:
    """Rows matching column=value filters, metrics decoded, oldest first."""
    columns = {"run_dir", "kind", "name", "dataset", "model", "defenses", "seed", "config_hash"}
    bad = set(where) - columns
    if bad:
        from splitshield.errors import UserError

        raise UserError(f"unknown results column {sorted(bad)[0]!r}; valid: {', '.join(sorted(columns))}")
    sql = "SELECT * FROM results"
    if where:
        sql += " WHERE " + " AND ".join(f"{k} = ?" for k in where)
    sql += " ORDER BY created"
    if not os.path.exists(path or db_path()):
        return []
    with closing(connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(sql, tuple(where.values())).fetchall()
    return [dict(dict(r), metrics=json.loads(r["metrics"])) for r in rows]


def flatten(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per row (metrics as columns), for CSV export."""
    out = []
    for r in rows:
        flat = {k: v for k, v in r.items() if k != "metrics"}
        flat.update({k: v for k, v in r["metrics"].items() if isinstance(v, (int, float, str, bool))})
        out.append(flat)
    return out
