"""deploy/make-certs.sh and deploy/node-keys.sh on their own: no SuperLink, no Ray.

make-certs.sh runs the real openssl; node-keys.sh runs the real ssh-keygen against a fake ``flwr``
put first on PATH, which answers ``flwr supernode register`` the way a SuperLink would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"

pytestmark = pytest.mark.slow  # every test here runs a deploy/ script in a subprocess

needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs openssl (make-certs.sh makes certificates)"
)
needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (node-keys.sh makes node keys)"
)


def _run(args: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, env=env, timeout=60
    )


def _san(cert: Path) -> str:
    text = _run(["openssl", "x509", "-in", cert, "-noout", "-text"]).stdout
    lines = text.splitlines()
    return next(
        lines[i + 1].strip() for i, line in enumerate(lines) if "Subject Alternative Name" in line
    )


@pytest.mark.parametrize("host", ["superlink.example.org:9091", "192.0.2.7:9091"])
def test_make_certs_refuses_host_with_port(tmp_path: Path, host: str) -> None:
    out = tmp_path / "certs"
    result = _run([DEPLOY / "make-certs.sh", "-o", out, "localhost", host])
    assert result.returncode == 2, result.stderr
    bare = host.rsplit(":", 1)[0]
    assert f"'{host}'" in result.stderr and "without the port" in result.stderr
    assert f"'{bare}'" in result.stderr  # says what to pass instead
    assert not out.exists()


@needs_openssl
def test_make_certs_puts_ipv6_ipv4_and_names_in_the_san(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    result = _run([DEPLOY / "make-certs.sh", "-o", out, "::1", "localhost", "127.0.0.1"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]
    san = _san(out / "server.pem")
    assert san == "IP Address:0:0:0:0:0:0:0:1, DNS:localhost, IP Address:127.0.0.1"
    verify = _run(["openssl", "verify", "-CAfile", out / "ca.crt", out / "server.pem"])
    assert verify.returncode == 0, verify.stdout + verify.stderr


@needs_openssl
@pytest.mark.parametrize("dir_exists", [False, True])
def test_make_certs_openssl_failure_shows_its_error_and_leaves_nothing(
    tmp_path: Path, dir_exists: bool
) -> None:
    out = tmp_path / "certs"
    if dir_exists:
        out.mkdir()
    # Looks like IPv6 to the script, so it goes to openssl, which rejects it as an IP SAN.
    failed = _run([DEPLOY / "make-certs.sh", "-o", out, "localhost", "1:2:3"])
    assert failed.returncode == 1
    assert "bad ip address" in failed.stderr.lower(), failed.stderr  # openssl's own error
    assert "1:2:3" in failed.stderr
    if dir_exists:
        assert list(out.iterdir()) == []  # no partial output, no scratch folder
    else:
        assert not out.exists()
    retry = _run([DEPLOY / "make-certs.sh", "-o", out, "localhost"])
    assert retry.returncode == 0, retry.stderr
    assert (out / "server.pem").is_file() and (out / "server.key").is_file()


FAKE_FLWR = """#!/bin/sh
# Fake `flwr supernode register PUBLIC_KEY CONNECTION --name NAME`: logs its arguments, then
# answers for the key named in FAKE_FLWR_FAIL_KEY with FAKE_FLWR_FAIL_TEXT and status 1.
echo "$*" >> "$FAKE_FLWR_LOG"
if [ "$(basename "$3")" = "$FAKE_FLWR_FAIL_KEY" ]; then
  echo "$FAKE_FLWR_FAIL_TEXT"
  exit 1
fi
echo "SuperNode registered with Node ID 1234"
"""


def _fake_flwr_env(tmp_path: Path, fail_key: str, fail_text: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    flwr = bin_dir / "flwr"
    flwr.write_text(FAKE_FLWR)
    flwr.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_FLWR_LOG": str(tmp_path / "flwr.log"),
        "FAKE_FLWR_FAIL_KEY": fail_key,
        "FAKE_FLWR_FAIL_TEXT": fail_text,
    }


def _register_calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "flwr.log").read_text().splitlines()


@needs_ssh_keygen
def test_node_keys_reports_an_already_registered_key_and_goes_on(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    env = _fake_flwr_env(tmp_path, "node0.pub", "[code: 23] Public key already in use.")
    args = [DEPLOY / "node-keys.sh", "-o", keys, "-c", "fed", "node0", "node1", "node2"]
    result = _run(args, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node0: already registered" in result.stdout
    for name in ("node0", "node1", "node2"):
        assert (keys / name).is_file() and (keys / f"{name}.pub").is_file()
    assert _register_calls(tmp_path) == [
        f"supernode register {keys}/{name}.pub fed --name {name}"
        for name in ("node0", "node1", "node2")
    ]


@needs_ssh_keygen
def test_node_keys_stops_on_any_other_registration_failure(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    message = "[code: 14] Connection refused: is the SuperLink running?"
    env = _fake_flwr_env(tmp_path, "node1.pub", message)
    args = [DEPLOY / "node-keys.sh", "-o", keys, "-c", "fed", "node0", "node1", "node2"]
    result = _run(args, env)
    assert result.returncode != 0
    assert message in result.stderr  # flwr's own message, on stderr
    assert "node1" in result.stderr and "already registered" not in result.stdout
    assert not (keys / "node2").exists()  # stopped at node1
    assert len(_register_calls(tmp_path)) == 2
