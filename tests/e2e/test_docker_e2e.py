"""The Dockerfile without Docker (no Docker engine runs here): its instructions are checked,
and its CMD and HEALTHCHECK are run as written, against loopback and a free port."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apphelpers import REPO, free_port

pytestmark = pytest.mark.e2e


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def env_of(instrs) -> dict[str, str]:
    env = {}
    for word, rest in instrs:
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_instructions():
    instrs = instructions()
    words = [w for w, _ in instrs]
    base = dict(instrs)["FROM"]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", base), base
    user = [rest for w, rest in instrs if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert dict(instrs)["EXPOSE"] == "8501"
    env = env_of(instrs)
    assert env["TMPDIR"] == "/dev/shm"  # temporary files in memory, never on the disk
    health = dict(instrs)["HEALTHCHECK"]
    assert "/_stcore/health" in health
    cmd = json.loads(dict(instrs)["CMD"])
    assert cmd[:3] == ["streamlit", "run", "app.py"]
    assert "--server.address=0.0.0.0" in cmd and "--server.port=8501" in cmd
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "**/secrets.toml" in ignored and ".git" in ignored


def test_image_command_serves_and_health_check_passes(tmp_path):
    instrs = instructions()
    port = str(free_port())
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ}
    for key, value in env_of(instrs).items():
        env[key] = value.replace("/home/app", str(home))
    env["TMPDIR"] = str(tmp_path) if not Path("/dev/shm").is_dir() else "/dev/shm"
    # The image's PATH has pip's scripts (streamlit) on it; so does an activated venv. A venv used
    # without activating it (`.venv/bin/python -m pytest`) has them next to its python only.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [a.replace("0.0.0.0", "127.0.0.1").replace("8501", port)
           for a in json.loads(dict(instrs)["CMD"])]
    health_args = dict(instrs)["HEALTHCHECK"].split(" CMD ", 1)[1]
    health = [a.replace("8501", port) for a in json.loads(health_args)]
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        code = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            code = subprocess.run(health, env=env, capture_output=True, timeout=30).returncode
            if code == 0:
                break
            time.sleep(0.5)
        assert code == 0, (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_image_keeps_the_examples():
    """.dockerignore keeps the example adapters the audit page opens (explicitly: a later
    pattern for adapter files must not drop them)."""
    lines = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert "*.safetensors" in lines and "!examples/" in lines
    assert lines.index("!examples/") > lines.index("*.safetensors")  # the exception comes last
