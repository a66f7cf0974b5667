"""scripts/memory_soak.py, CI-sized: the worker's memory and descriptors after many sessions,
many connections and commits past a session's end (the full run is in docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "memory_soak.py"


def load():
    spec = importlib.util.spec_from_file_location("memory_soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_soak"] = module
    spec.loader.exec_module(module)
    return module


def test_the_worker_holds_nothing_after_sessions_connections_and_commit_floods(tmp_path):
    soak = load()
    out = tmp_path / "memory.json"
    assert soak.main(["--session-connections", "2", "--sessions-per-connection", "4",
                      "--prompt-tokens", "200", "--connections", "100",
                      "--commit-sessions", "4", "--timeout", "60", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["sessions"]["sessions"] == 8 and r["sessions"]["all_drafted"]
    assert r["sessions"]["open_after_close"] == 0
    assert r["connections"]["opened"] == 100
    assert r["connections"]["served_at_once"] <= 64  # the default --max-connections
    assert r["connections"]["fds_leaked"] <= 0
    assert r["commits"]["refused_past_end"] == 4 and r["commits"]["live_after"] == 0
    assert r["after"]["open_connections"] == 0 and r["after"]["live_sessions"] == 0
    # memory: a small run may grow the allocator's caches a little, never by much
    assert r["after"]["rss_mb"] - r["rss_mb_baseline"] < 100
