"""A login link's id stays out of the access logs: werkzeug's (`dev`) and gunicorn's (`serve`) show
`/login/#<first 8 hex of sha256(id)>` instead, and neither shows a query string."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest
import requests
from gunicorn.config import Config

from sidecar.accesslog import loggable_path, login_hash
from sidecar.devvault import free_port

from .helpers import sidecar_log, start, wait_for


def short(lid: str) -> str:
    return hashlib.sha256(lid.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/login/abc", f"/login/#{short('abc')}"),
        ("/login/abc?x=1", f"/login/#{short('abc')}"),
        ("/%6Cogin/abc", f"/login/#{short('abc')}"),  # routing decodes it to the same login
        ("//login//abc", f"//login//#{short('abc')}"),
        ("http://sidecar.example/login/abc?x", f"http://sidecar.example/login/#{short('abc')}"),
        ("/callback?code=secret&state=s", "/callback"),
        ("/settings/login", "/settings/login"),
        ("/v1/secrets/login", "/v1/secrets/login"),
        ("/loginx/abc", "/loginx/abc"),
        # gunicorn hands the decoded path over: a %0A must not start a forged line (an audit line, say)
        ('/v1/x\n{"action": "secret.deleted"}', '/v1/x\\x0a{"action": "secret.deleted"}'),
        ("/login/abc\r\nx", f"/login/#{short('abc' + chr(13) + chr(10) + 'x')}"),
    ],
)
def test_loggable_path(target, shown):
    assert loggable_path(target) == shown
    assert login_hash("abc") == short("abc")


def test_the_dev_server_logs_a_login_link_as_a_hash(live, api, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    link = start(api)
    lid = urlsplit(link).path.rsplit("/", 1)[1]
    assert requests.get(link, allow_redirects=False, timeout=10).status_code == 302
    unknown = "f" * 32
    assert requests.get(f"{live.url}/%6Cogin/{unknown}?x=leak", timeout=10).status_code >= 400
    log = sidecar_log(caplog)
    assert f'"GET /login/#{short(lid)}" 302' in log
    assert f'"GET /login/#{short(unknown)}" 4' in log
    assert lid not in log and unknown not in log and "leak" not in log


def gunicorn_logger(tmp_path, fmt: str):
    from sidecar import gunicorn_conf

    cfg = Config()
    cfg.set("logger_class", gunicorn_conf.logger_class)
    cfg.set("accesslog", str(tmp_path / "access.log"))
    cfg.set("access_log_format", fmt)
    return cfg.logger_class(cfg)


def test_gunicorns_access_log_shows_a_login_link_as_a_hash(tmp_path):
    from sidecar import gunicorn_conf

    lid = "0123456789abcdef0123456789abcdef"
    fmt = gunicorn_conf.access_log_format + ' "%(r)s" %({raw_uri}e)s %({path_info}e)s %(f)s'
    logger = gunicorn_logger(tmp_path, fmt)
    assert type(logger) is gunicorn_conf.AccessLogger
    environ = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": f"/login/{lid}?x=leak",
        "PATH_INFO": f"/login/{lid}",
        "QUERY_STRING": "x=leak",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_REFERER": f"https://sidecar.example/login/{lid}",
    }
    request = SimpleNamespace(headers=[("HOST", "sidecar.example"), ("REFERER", environ["HTTP_REFERER"])])
    response = SimpleNamespace(status="302 FOUND", sent=0, headers=[("Location", "https://provider.example/")])
    atoms = logger.atoms(response, request, environ, timedelta(milliseconds=3))
    assert atoms["U"] == f"/login/#{short(lid)}"
    assert atoms["r"] == f"GET /login/#{short(lid)} HTTP/1.1"
    logger.access(response, request, environ, timedelta(milliseconds=3))
    for handler in logger.access_log.handlers:
        handler.flush()
    line = (tmp_path / "access.log").read_text()
    assert f'"GET /login/#{short(lid)} HTTP/1.1" 302' in line
    assert lid not in line and "leak" not in line


def test_gunicorn_serving_the_sidecar_logs_a_login_link_as_a_hash(vault, tokens, tmp_path):
    """The real `serve` configuration: gunicorn loads the logger class from sidecar.gunicorn_conf."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": tokens.sidecar,
        "SIDECAR_BIND": f"127.0.0.1:{port}",
        "SIDECAR_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "SIDECAR_WORKERS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "HOME": str(tmp_path),
    }
    out = tmp_path / "gunicorn.log"
    with out.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "python:sidecar.gunicorn_conf", "sidecar.web:create_app()"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def up() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return server.poll() is not None  # died: stop waiting, the assertion below says so

        wait_for(up, timeout=30)
        assert server.poll() is None, out.read_text()
        lid = "9" * 32
        assert requests.get(f"http://127.0.0.1:{port}/login/{lid}?x=leak", timeout=10).status_code >= 400
    finally:
        server.terminate()
        server.wait(timeout=30)
    log = out.read_text()
    assert f'"GET /login/#{short(lid)} HTTP/1.1" 4' in log, log
    assert lid not in log and "leak" not in log
