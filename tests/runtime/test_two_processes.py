"""Controller and worker as two OS processes (``python -m wanspec worker`` / ``controller``).

The slow part of the suite (each process imports torch): workers are started once per module,
concurrently, and controllers that can run side by side do.  Every subprocess is terminated in a
``finally`` and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import save_tiny_model
from wanspec.cli.app import app

TIMEOUT_S = 120
PROMPTS = ["To be, or not to be", "whether 'tis nobler in the mind to suffer"]
KILL_PROMPTS = PROMPTS + ["the slings and arrows of outrageous fortune", "or to take arms"]
SAMPLING_FLAGS = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "17"]
LISTENING = re.compile(r"listening on (tcp|quic)://([0-9.]+):(\d+)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wanspec_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wanspec", *args]


class WorkerProcess:
    """``wanspec worker`` in a subprocess; ``address`` once it prints its listening line."""

    def __init__(self, *args: str, log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")
        self.proc = subprocess.Popen(
            wanspec_cmd("worker", "--listen", "127.0.0.1:0", "--threads", "1", *args),
            stdout=subprocess.PIPE, stderr=self._err, env=_env(), text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.address: str | None = None
        self.port: int | None = None

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_listening(self, timeout: float = TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            m = LISTENING.search(line)
            if m:
                self.address, self.port = f"{m.group(2)}:{m.group(3)}", int(m.group(3))
                return self.address
        self.stop()
        raise AssertionError(f"worker did not start listening; stdout={''.join(seen)!r} "
                             f"stderr={self.log.read_text(errors='replace')[-2000:]!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def start_controller(address: str, transport: str, dirs: dict[str, Path], *extra: str):
    return subprocess.Popen(
        wanspec_cmd("controller", "--worker", address, "--transport", transport,
                    "--target", str(dirs["target"]), "--draft", str(dirs["draft"]),
                    "--ignore-eos", "--json", "--threads", "1", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"controller did not finish in {TIMEOUT_S} s; stderr={err[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out, err


def results_of(out: str) -> list[dict]:
    """``controller --json``: JSON Lines, one object per prompt."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


_runner = CliRunner()


def reference_ids(dirs, prompt: str, max_tokens: int, sampling_flags=()) -> list[int]:
    """``wanspec generate --mode target --json`` (run in-process: the same command, no import)."""
    r = _runner.invoke(app, ["generate", "--mode", "target", "--target", str(dirs["target"]),
                             "--prompt", prompt, "--max-tokens", str(max_tokens), "--ignore-eos",
                             "--json", *sampling_flags])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["token_ids"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, target, near_draft):
    root = tmp_path_factory.mktemp("two-proc")
    return {"target": save_tiny_model(target, root / "target"),
            "draft": save_tiny_model(near_draft, root / "draft"),
            "root": root}


@pytest.fixture(scope="module")
def certdir(dirs):
    d = dirs["root"] / "certs"
    r = subprocess.run(wanspec_cmd("certs", str(d)), capture_output=True, text=True,
                       timeout=TIMEOUT_S, env=_env())
    assert r.returncode == 0, r.stderr
    for name in ("ca.pem", "server.pem", "server.key"):
        assert (d / name).is_file()
    return d


@pytest.fixture(scope="module")
def workers(dirs, certdir):
    """A TCP worker, a QUIC worker and a TCP worker to be killed, started concurrently."""
    root = dirs["root"]
    started = {
        "tcp": WorkerProcess("--transport", "tcp", "--draft", str(dirs["draft"]),
                             log=root / "tcp-worker.log"),
        "quic": WorkerProcess("--transport", "quic", "--draft", str(dirs["draft"]),
                              "--cert", str(certdir / "server.pem"),
                              "--key", str(certdir / "server.key"),
                              log=root / "quic-worker.log"),
        "victim": WorkerProcess("--transport", "tcp", "--draft", str(dirs["draft"]),
                                log=root / "victim-worker.log"),
    }
    try:
        for w in started.values():
            w.wait_listening()
        yield started
    finally:
        for w in started.values():
            w.stop()


def _check_results(results, dirs, prompts, max_tokens, sampling_flags=(), *, worker_used=True):
    assert len(results) == len(prompts)
    for prompt, r in zip(prompts, results):
        assert r["token_ids"] == reference_ids(dirs, prompt, max_tokens, sampling_flags)
        assert r["mode"] == "remote" and r["finish_reason"] == "max_tokens"
        passes = r["metrics"]["draft_passes"]
        assert set(passes) >= {"controller", "worker"}
        if worker_used:
            assert r["metrics"]["worker_used"] is True
            assert passes["worker"] > 0


def test_tcp_controller_and_worker_processes(workers, dirs):
    """Greedy and seeded sampling, two controllers side by side against one worker, and the
    target-only reference from ``python -m wanspec generate --mode target`` alongside."""
    addr = workers["tcp"].address
    procs = []
    try:
        procs.append(start_controller(addr, "tcp", dirs, "--prompt", PROMPTS[0],
                                      "--max-tokens", "24"))
        procs.append(start_controller(addr, "tcp", dirs,
                                      "--prompts", str(_prompts_file(dirs, PROMPTS)),
                                      "--max-tokens", "24", *SAMPLING_FLAGS))
        procs.append(subprocess.Popen(
            wanspec_cmd("generate", "--mode", "target", "--target", str(dirs["target"]),
                        "--prompt", PROMPTS[0], "--max-tokens", "24", "--ignore-eos", "--json",
                        "--threads", "1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True))
        (rc1, out1, err1), (rc2, out2, err2), (rc3, out3, err3) = [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert rc1 == 0, err1
    assert rc2 == 0, err2
    assert rc3 == 0, err3
    assert "Traceback" not in err1 + err2 + err3
    greedy = results_of(out1)
    assert greedy[0]["token_ids"] == json.loads(out3)["token_ids"]
    _check_results(greedy, dirs, PROMPTS[:1], 24)
    _check_results(results_of(out2), dirs, PROMPTS, 24, SAMPLING_FLAGS)


def test_quic_controller_and_worker_processes(workers, dirs, certdir):
    proc = start_controller(workers["quic"].address, "quic", dirs,
                            "--prompts", str(_prompts_file(dirs, PROMPTS)), "--max-tokens", "24",
                            "--ca", str(certdir / "ca.pem"), *SAMPLING_FLAGS)
    rc, out, err = finish(proc)
    assert rc == 0, err
    _check_results(results_of(out), dirs, PROMPTS, 24, SAMPLING_FLAGS)


def _prompts_file(dirs, prompts) -> Path:
    path = dirs["root"] / f"prompts-{len(prompts)}.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def _established(port: int) -> bool:
    """Whether some TCP connection to local port ``port`` is ESTABLISHED (Linux /proc)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state = parts[1], parts[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def test_worker_process_killed_mid_run(workers, dirs):
    victim = workers["victim"]
    assert victim.port is not None
    # emulated pass costs stretch the run (real time) so the kill lands in the middle of it
    proc = start_controller(victim.address, "tcp", dirs,
                            "--prompts", str(_prompts_file(dirs, KILL_PROMPTS)),
                            "--max-tokens", "48", "--target-ms", "30", "--draft-ms", "5")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not _established(victim.port) and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "controller ended before the worker served it"
        time.sleep(0.4)  # let it serve a little
        assert proc.poll() is None, "controller finished before the kill: make the run longer"
        victim.kill()
    finally:
        rc, out, err = finish(proc)
    assert rc == 0, err
    assert "Traceback" not in err
    results = results_of(out)
    _check_results(results, dirs, KILL_PROMPTS, 48, worker_used=False)
    # the first request used the worker and lost it; later ones ran alone
    assert results[0]["metrics"]["worker_used"] is True
    assert any(r["metrics"]["worker_lost"] for r in results) or not all(
        r["metrics"]["worker_used"] for r in results)
    assert not results[-1]["metrics"]["worker_used"]


@pytest.mark.parametrize("transport,drafter", [("tcp", "identical"), ("quic", "random")])
def test_every_drafter_over_real_sockets(transport, drafter, dirs, certdir, random_draft):
    """The foundation's drafter spectrum over real sockets: the worker serves a draft equal to
    the target (all accepted) or an unrelated one (nothing accepted); output stays identical."""
    root = dirs["root"]
    draft_dir = dirs["target"] if drafter == "identical" else save_tiny_model(
        random_draft, root / "random-draft")
    tls = (("--cert", str(certdir / "server.pem"), "--key", str(certdir / "server.key"))
           if transport == "quic" else ())
    worker = WorkerProcess("--transport", transport, "--draft", str(draft_dir), *tls,
                           log=root / f"{transport}-{drafter}-worker.log")
    try:
        worker.wait_listening()
        ca = ("--ca", str(certdir / "ca.pem")) if transport == "quic" else ()
        proc = start_controller(worker.address, transport, dirs, "--prompt", PROMPTS[0],
                                "--max-tokens", "24", "--policy", "remote", "--no-local-draft",
                                *ca)
        rc, out, err = finish(proc)
    finally:
        worker.stop()
    assert rc == 0, err
    results = results_of(out)
    _check_results(results, dirs, PROMPTS[:1], 24)
    m = results[0]["metrics"]
    if drafter == "identical":
        # real clocks: on a loaded machine the worker can lag behind the target for a whole
        # short request and never be verified; whatever was verified was accepted
        assert m["accepted_tokens"] == m["drafted_tokens"]
    else:  # the worker's chain keeps dying: rollbacks over the wire, output unaffected
        assert m["acceptance_rate"] < 0.5
