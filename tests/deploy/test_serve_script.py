"""The README's first command: `scripts/serve` brings both services up on the embedded
defaults, they answer a photo end to end, and Ctrl+C stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from conftest import PHOTOS, REPO, free_port, service_env, wait_until
from helpers import EXPECTED_LABELS, classify, upload

from scripts.bentoml_home import private_bentoml_home

READY_LINE = "Both services are ready"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _default_sigint() -> None:
    # A background job of a non-interactive shell inherits SIGINT ignored, and bash cannot
    # trap a signal ignored on entry: give the script the terminal's default, as Ctrl+C finds it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_serve(
    bentoml_home: Path, tmp_path: Path, ports: dict[str, int], log: Path
) -> subprocess.Popen:
    """`scripts/serve` in a process group of its own (a terminal's foreground job), storage
    and its temporary files under `tmp_path`."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    home = private_bentoml_home(tmp_path / "bentoml-home", bentoml_home)
    env = service_env(home, {"STORAGE_DIR": str(tmp_path / "data")}, TMPDIR=str(scratch))
    env.update({name: str(port) for name, port in ports.items()})
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(REPO / "scripts" / "serve")],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )


def _group_left(pgid: int) -> list[str]:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()


def _kill_group(script: subprocess.Popen) -> None:
    """Whatever a failed test left of the script's group."""
    if script.poll() is None:
        os.killpg(script.pid, signal.SIGKILL)
        script.wait()
    subprocess.run(["pkill", "-KILL", "-g", str(script.pid)], check=False)


def test_serve_answers_a_photo_and_ctrl_c_stops_both_services(
    bentoml_home: Path, tmp_path: Path
) -> None:
    ports = {"CLASSIFY_PORT": free_port(), "PREPROCESS_PORT": free_port()}
    log = tmp_path / "serve.log"
    script = _start_serve(bentoml_home, tmp_path, ports, log)
    scratch = tmp_path / "tmp"
    try:
        wait_until(
            lambda: script.poll() is None and READY_LINE in log.read_text(errors="ignore"),
            240,
            "scripts/serve",
            log,
            interval_s=1,
        )
        preprocess_url = f"http://127.0.0.1:{ports['PREPROCESS_PORT']}"
        classify_url = f"http://127.0.0.1:{ports['CLASSIFY_PORT']}"
        stored = upload(preprocess_url, (PHOTOS / "parrot.jpg").read_bytes())
        assert stored.status_code == 200, stored.text
        gcs_path = stored.json()["gcs_path"]
        assert gcs_path.startswith(f"file://{tmp_path / 'data'}")
        answer = classify(classify_url, gcs_path)
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] == EXPECTED_LABELS["resize"]["parrot"]

        os.killpg(script.pid, signal.SIGINT)  # Ctrl+C: the whole foreground group
        script.wait(timeout=60)  # raises if the script outlives its own trap
        wait_until(lambda: not any(map(_port_open, ports.values())), 30, "ports released", log)
        assert _group_left(script.pid) == []
        assert list(scratch.glob("preprocess-bentoml-*")) == []  # preprocess's home is gone
    finally:
        _kill_group(script)


def test_serve_fails_fast_when_a_port_is_taken(bentoml_home: Path, tmp_path: Path) -> None:
    """A port held by something that never answers HTTP: the script says a service exited
    and stops the other one, instead of waiting minutes on a silent port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        ports = {"CLASSIFY_PORT": squatter.getsockname()[1], "PREPROCESS_PORT": free_port()}
        log = tmp_path / "serve.log"
        script = _start_serve(bentoml_home, tmp_path, ports, log)
        try:
            assert script.wait(timeout=90) != 0
            assert "a service exited while starting" in log.read_text(errors="ignore")
            assert "Could not bind" in log.read_text(errors="ignore")
            assert _group_left(script.pid) == []
            assert not _port_open(ports["PREPROCESS_PORT"])
        finally:
            _kill_group(script)
