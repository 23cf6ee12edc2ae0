"""The results database: one SQLite row per stored result (training, attack, audit, export) of every run.

SQLite in WAL mode with a busy timeout is safe with concurrent writers (parallel grid workers, several processes)
and needs no server. Rows are keyed by (run_dir, kind), so re-storing a result replaces it: exactly once per key.

The database is an explicit sink: the command line opens one (``--results-db``, default runs/results.sqlite or
$SPLITSHIELD_RESULTS_DB) and hands it to what it runs (runs.RunFolder writes to it); library calls without one
store results in the run folders only.
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import time
from contextlib import closing
from typing import Any, Iterable

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


def default_path() -> str:
    """The command line's default database: $SPLITSHIELD_RESULTS_DB, else runs/results.sqlite."""
    return os.environ.get("SPLITSHIELD_RESULTS_DB") or DEFAULT_DB


class ResultsDB:
    """A results database file as a sink for runs.RunFolder (``record``) and a source for ``query``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def record(self, run_dir: str, kind: str, cfg: Any, metrics: dict[str, Any]) -> None:
        record(run_dir, kind, cfg, metrics, path=self.path)

    def query(self, **where: Any) -> list[dict[str, Any]]:
        return query(self.path, **where)

    def __repr__(self) -> str:
        return f"ResultsDB({self.path!r})"


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (identifies the code behind a number)."""
    from splitshield._version import __version__

    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def connect(path: str) -> sqlite3.Connection:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)  # autocommit: transactions are explicit
    conn.execute("PRAGMA busy_timeout=60000")
    _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
    _retry(lambda: conn.execute(SCHEMA))
    return conn


def _retry(op: Any, attempts: int = 20) -> Any:
    """Run ``op`` again when SQLite reports the database busy or locked.

    Why: the busy timeout does not cover every case. Two processes creating the database at once, or the switch to
    WAL mode, can fail at once with "database is locked" without waiting (SQLite returns BUSY without calling the
    busy handler where waiting could deadlock), so parallel grid workers need their own backoff."""
    for i in range(attempts):
        try:
            return op()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or i == attempts - 1:
                raise
            time.sleep(min(0.05 * 2 ** i, 2.0) * (0.5 + random.random()))
    return None


def record(run_dir: str, kind: str, cfg: Any, metrics: dict[str, Any], path: str) -> None:
    """Insert or replace the row (run_dir, kind) of database ``path``. ``cfg`` is the run's ExperimentConfig."""
    row = (os.path.abspath(run_dir), kind, cfg.name, cfg.data.name, cfg.model.name,
           "+".join(d.name for d in cfg.defenses) or "none", cfg.seed, cfg.digest(), code_version(), time.time(),
           json.dumps(metrics, sort_keys=True, default=float))
    def write() -> None:
        with closing(connect(path)) as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock first: no read-to-write upgrade that can fail
            try:
                conn.execute("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    _retry(write)


def query(path: str, **where: Any) -> list[dict[str, Any]]:
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
    if not os.path.exists(path):
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
