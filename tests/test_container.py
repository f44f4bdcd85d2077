"""The image, built for real and run against the test OpenBao (slow: a Debian base is bootstrapped).

There is no Docker engine here: buildah builds the Dockerfile in chroot isolation over a Debian
base made by debootstrap, as ../shared/container-build.md describes. Missing tools fail the test.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
import requests

from sidecar.devvault import free_port

from .helpers import CLIENT_SECRET, provider_body

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/oauth-sidecar:test"
BASE = "localhost/debian-python:bookworm"
BASE_CACHE = Path("/var/tmp/oauth-sidecar-debian-bookworm.tar")  # reused between runs on one machine
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a first build bootstraps Debian


def run(*args: str, env: dict[str, str], timeout: int = 900, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def buildah_env(tmp_path_factory) -> dict[str, str]:
    for tool in ("buildah", "debootstrap"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: apt-get install buildah debootstrap")
    conf = tmp_path_factory.mktemp("containers") / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")  # this sandbox refuses setrlimit
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="module")
def image(buildah_env, tmp_path_factory) -> str:
    if not BASE_CACHE.exists():
        rootfs = tmp_path_factory.mktemp("rootfs")
        run(
            "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(rootfs), env=buildah_env,
        )  # fmt: skip
        run("tar", "-C", str(rootfs), "-cf", str(BASE_CACHE), ".", env=buildah_env)
    base = run("buildah", "from", "scratch", env=buildah_env).stdout.strip()
    run("buildah", "add", base, str(BASE_CACHE), "/", env=buildah_env)
    run("buildah", "commit", "--rm", base, BASE, env=buildah_env)
    build = ["buildah", "bud", "--isolation", "chroot", "--build-arg", f"BASE_IMAGE={BASE}", "-t", IMAGE]
    if os.environ.get("PIP_CERT") and CA_BUNDLE.exists():
        # This machine reaches PyPI through a proxy with its own CA: a flag of the build, not of the image.
        build += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "--env", f"PIP_CERT={CA_BUNDLE}"]
    run(*build, str(ROOT), env=buildah_env)
    return IMAGE


def config(image: str, env: dict[str, str]) -> dict:
    return json.loads(run("buildah", "inspect", "--type", "image", image, env=env).stdout)["OCIv1"]["config"]


def test_the_image_runs_its_own_command_as_a_non_root_user(image, buildah_env, vault, tokens, root):
    cfg = config(image, buildah_env)
    assert cfg["Entrypoint"] + cfg["Cmd"] == ["oauth-sidecar", "serve"]
    assert cfg["User"] == "10001"
    assert not any("TOKEN" in e or "SECRET" in e for e in cfg.get("Env", []))  # nothing baked in
    container = run("buildah", "from", image, env=buildah_env).stdout.strip()
    port = free_port()
    try:
        uid = run("buildah", "run", "--isolation", "chroot", container, "--", "id", "-u", env=buildah_env)
        assert uid.stdout.strip() == "10001"
        serve = subprocess.Popen(
            [
                "buildah", "run", "--isolation", "chroot",
                "--env", f"VAULT_ADDR={vault.addr}", "--env", f"VAULT_TOKEN={tokens.sidecar}",
                "--env", f"SIDECAR_BIND=127.0.0.1:{port}", "--env", "SIDECAR_WORKERS=2",
                container, "--", *cfg["Entrypoint"], *cfg["Cmd"],
            ],
            env=buildah_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # chroot isolation has no PID namespace: stop the whole group below
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert serve.poll() is None and time.monotonic() < deadline, serve.stdout.read()
                time.sleep(0.5)
            admin = {"X-Vault-Token": tokens.admin}
            assert requests.put(f"{base}/v1/providers/google", json=provider_body(), headers=admin).status_code == 201
            got = requests.get(f"{base}/v1/providers/google", headers=admin).json()
            assert got["client_secret_set"] is True and CLIENT_SECRET not in json.dumps(got)
            stored = root.secrets.kv.v2.read_secret_version(
                path="oauth-sidecar/providers/google", mount_point="secret", raise_on_deleted_version=True
            )
            assert stored["data"]["data"]["client_secret"] == CLIENT_SECRET
        finally:
            with suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(serve.pid, signal.SIGKILL)
    finally:
        run("buildah", "rm", container, env=buildah_env, check=False)


@pytest.mark.process
def test_the_dockerfile_is_hadolint_clean():
    linter = str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([linter, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
