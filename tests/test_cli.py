import json
import os
import re
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import hvac
import pytest
import requests
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.devvault import bao_binary, free_port
from sidecar.inputs import MAX_PAGE

from .helpers import CLIENT_SECRET, bao_kv_get, grant_record, listed_grants, provider_body, start, vault_tree, wait_for

PASTED_SCOPES = "openid\nemail\n\nhttps://www.googleapis.com/auth/spreadsheets\n"


@pytest.fixture
def run(vault, tokens, root, live, tmp_path):
    """Invoke the CLI in-process, as an operator holding the oauth-admin token, beside a running
    sidecar (which saves providers and starts browser logins)."""
    env = {
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": tokens.admin,
        "HOME": str(tmp_path),
        "OAUTH_CLIENT_SECRET": "",
        "SIDECAR_PUBLIC_URL": live.url,
    }

    def invoke(*args: str, input: str | None = None, **extra_env: str):
        return CliRunner().invoke(main, list(args), input=input, env={**env, **extra_env}, catch_exceptions=False)

    return invoke


def put_google(run, *extra: str, **env: str):
    return run(
        "providers", "put", "google",
        "--client-id", "1234.apps.example.com",
        "--authorization-url", "https://accounts.example.com/o/oauth2/v2/auth",
        "--token-url", "https://oauth2.example.com/token",
        "--scopes-file", "-",
        *extra,
        input=PASTED_SCOPES,
        **env,
    )  # fmt: skip


def test_put_with_scopes_pasted_on_stdin(run, vault, tokens):
    result = put_google(run, "--param", "access_type=offline", OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["scopes"] == ["openid", "email", "https://www.googleapis.com/auth/spreadsheets"]
    assert shown["extra_authorize_params"] == {"access_type": "offline"}
    assert CLIENT_SECRET not in result.output
    stored = json.loads(bao_kv_get(vault, tokens.admin, "secret/oauth-sidecar/providers/google").stdout)
    assert stored["data"]["data"]["client_secret"] == CLIENT_SECRET


def test_the_token_auth_method_is_named_as_the_docs_name_it(run, root):
    """As the README writes it (click 8.2 would otherwise take only the enum's member names)."""
    put = put_google(run, "--token-auth-method", "client_secret_post", OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert put.exit_code == 0, put.output
    assert json.loads(put.stdout)["token_auth_method"] == "client_secret_post"


def test_client_secret_from_a_file(run, tmp_path, vault, tokens):
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    assert put_google(run, "--client-secret-file", str(secret_file)).exit_code == 0
    stored = json.loads(bao_kv_get(vault, tokens.admin, "secret/oauth-sidecar/providers/google").stdout)
    assert stored["data"]["data"]["client_secret"] == CLIENT_SECRET


def test_list_get_delete(run, root):
    put_google(run, OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    listed = run("providers", "list")
    assert listed.exit_code == 0 and listed.stdout.splitlines()[0].split() == ["NAME", "CLIENT", "ID", "SCOPES"]
    assert listed.stdout.splitlines()[1].startswith("google ")
    as_json = json.loads(run("providers", "list", "--json").stdout)
    assert [p["name"] for p in as_json["providers"]] == ["google"]
    got = run("providers", "get", "google")
    assert json.loads(got.stdout)["client_secret_set"] is True
    assert CLIENT_SECRET not in listed.output + got.output
    assert run("providers", "delete", "google").exit_code == 0
    assert vault_tree(root) == {}
    missing = run("providers", "get", "google")
    assert missing.exit_code == 1 and "not found" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("providers", "get", "../x"), "1 to 64 characters"),
        (("providers", "delete", "a/b"), "1 to 64 characters"),
    ],
)
def test_bad_names_are_refused(run, root, args, message):
    result = run(*args)
    assert result.exit_code == 1 and message in result.stderr
    assert vault_tree(root) == {}


def test_bad_put_input_is_refused_and_writes_nothing(run, root):
    no_secret = put_google(run)
    assert no_secret.exit_code == 1 and "client secret" in no_secret.stderr
    bad_scope = put_google(run, "--scopes", 'a"b', OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert bad_scope.exit_code == 1 and "scopes" in bad_scope.stderr
    http_url = run(
        "providers", "put", "google", "--client-id", "x", "--authorization-url", "http://example.com/a",
        "--token-url", "https://example.com/t", "--scopes", "openid", OAUTH_CLIENT_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    assert http_url.exit_code == 1 and "https" in http_url.stderr
    bad_param = put_google(run, "--param", "noequals", OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert bad_param.exit_code == 1 and "KEY=VALUE" in bad_param.stderr
    assert vault_tree(root) == {}


def test_put_without_a_running_sidecar_says_so_and_writes_nothing(run, root):
    """Only the sidecar may approve where a provider sends tokens, so the CLI saves through it."""
    result = put_google(run, OAUTH_CLIENT_SECRET=CLIENT_SECRET, SIDECAR_PUBLIC_URL="http://127.0.0.1:9")
    assert result.exit_code == 1 and "the sidecar at http://127.0.0.1:9 could not be reached" in result.stderr
    assert vault_tree(root) == {}


def test_put_cannot_repoint_a_provider_whose_secrets_are_not_yours(run, api, root, vault, oauth, tmp_path):
    assert requests.Session().get(start(api), timeout=30).status_code == 200  # sheets uses mock
    root.sys.create_or_update_policy(
        name="providers-only",
        policy='path "secret/data/oauth-sidecar/providers/*" { capabilities = ["create", "read", "update"] }\n'
        'path "secret/metadata/oauth-sidecar/*" { capabilities = ["list", "read"] }\n'
        'path "secret/data/oauth-sidecar/grants/*" { capabilities = ["read"] }\n',
    )
    token = root.auth.token.create(policies=["providers-only"], ttl="10m")["auth"]["client_token"]
    moved = run(
        "providers", "put", "mock", "--client-id", oauth.registration()["client_id"],
        "--authorization-url", f"{oauth.issuer}/authorize", "--token-url", "http://127.0.0.1:9/steal",
        "--scopes", "openid", "--replace", VAULT_TOKEN=token, OAUTH_CLIENT_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    assert moved.exit_code == 1 and "1 of 1 are not yours" in moved.stderr
    stored = root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/providers/mock", mount_point="secret", raise_on_deleted_version=True
    )
    assert stored["data"]["data"]["token_url"] == f"{oauth.issuer}/token"


def test_put_creates_and_replaces_only_when_told(run, root, live):
    created = put_google(run, OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert created.exit_code == 0 and "created provider google" in created.stderr
    assert f"Register this redirect URI at the provider: {live.url}/callback" in created.stderr
    before = vault_tree(root)
    again = put_google(run, OAUTH_CLIENT_SECRET="a-typo")
    assert again.exit_code == 1 and "already exists" in again.stderr and "--replace" in again.stderr
    assert vault_tree(root) == before
    replaced = put_google(run, "--replace", OAUTH_CLIENT_SECRET="the-new-secret")
    assert replaced.exit_code == 0 and "replaced provider google" in replaced.stderr
    stored = root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/providers/google", mount_point="secret", raise_on_deleted_version=True
    )
    assert stored["data"]["data"]["client_secret"] == "the-new-secret"


def test_every_option_is_described():
    def commands(group, path=()):
        for name, command in group.commands.items():
            yield (*path, name), command
            if hasattr(command, "commands"):
                yield from commands(command, (*path, name))

    undescribed = [
        (" ".join(path), param.name)
        for path, command in commands(main)
        for param in command.params
        if param.param_type_name == "option" and not param.hidden and not param.help
    ]
    assert undescribed == []


def test_version_and_list_headers(run):
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"oauth-sidecar, version \d+\.\d+\.\d+\n", version.output)
    presets = run("providers", "presets")
    assert presets.stdout.splitlines()[0].split() == ["NAME", "TITLE", "PARAMETERS"]


def test_an_unreachable_vault_names_the_address_and_the_variable(tmp_path):
    port = free_port()  # nothing listens there
    env = {"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "s.any", "HOME": str(tmp_path)}
    told = CliRunner().invoke(main, ["providers", "list"], env=env)
    assert told.exit_code == 1 and f"tried http://127.0.0.1:{port} (VAULT_ADDR)" in told.stderr
    with_password = CliRunner().invoke(
        main, ["providers", "list"], env={**env, "VAULT_ADDR": f"http://u:pw@127.0.0.1:{port}"}
    )
    assert f"tried http://127.0.0.1:{port} (VAULT_ADDR)" in with_password.stderr and "pw" not in with_password.stderr
    unset = CliRunner().invoke(main, ["secrets", "list"], env={**env, "VAULT_ADDR": "", "BAO_ADDR": ""})
    assert unset.exit_code == 1 and "the default: set VAULT_ADDR" in unset.stderr, unset.stderr


def test_secrets_refresh_through_the_sidecar(api, run, oauth, root):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    before = grant_record(root)["access_token"]
    refreshed = run("secrets", "refresh", "sheets")
    assert refreshed.exit_code == 0 and "refreshed secret sheets" in refreshed.stderr, refreshed.output
    assert grant_record(root)["access_token"] != before
    assert before not in refreshed.output and grant_record(root)["access_token"] not in refreshed.output
    missing = run("secrets", "refresh", "nope")
    assert missing.exit_code == 1 and "not found" in missing.stderr


def test_connect_refuses_an_existing_name_unless_it_replaces(api, run, oauth, root):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    before = grant_record(root)
    taken = run("secrets", "connect", "sheets", "--provider", "mock", "--client-credentials")
    assert taken.exit_code == 1 and "already exists" in taken.stderr
    assert grant_record(root) == before
    replaced = run("secrets", "connect", "sheets", "--provider", "mock", "--client-credentials", "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert "not revoked at mock" in replaced.stderr and grant_record(root)["grant_type"] == "client_credentials"


def test_token_problems_are_clear(run):
    bogus = run("providers", "list", VAULT_TOKEN="s.not-a-real-token")
    assert bogus.exit_code == 1 and "not valid" in bogus.stderr
    unset = run("providers", "list", VAULT_TOKEN="")
    assert unset.exit_code == 1 and "token is required" in unset.stderr
    bad_config = run("providers", "list", SIDECAR_ENVIRONMENTS="a/b")
    assert bad_config.exit_code == 2 and "SIDECAR_ENVIRONMENTS" in bad_config.stderr


@pytest.mark.process
def test_dev_runs_everything_and_stops_cleanly(tmp_path):
    """The README's run command without the demo provider: OpenBao plus the sidecar on the port of
    SIDECAR_BIND (its links too), a provider round trip, Ctrl-C."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "SIDECAR_BIND": f"127.0.0.1:{port}",
        "HOME": str(tmp_path),
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oauth-sidecar"), "dev", "--no-demo"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = ""
        while "Press Ctrl-C" not in banner:
            line = proc.stdout.readline()
            assert line, f"dev exited early: {proc.stderr.read()}"
            banner += line
        token = re.search(r"Login token\s+(\S+)", banner).group(1)
        vault_addr = re.search(r"OpenBao dev server\s+(\S+)", banner).group(1)
        base = f"http://127.0.0.1:{port}"
        assert f"Open {base}/settings" in banner and "Demo provider" not in banner
        assert requests.get(f"{base}/v1/providers", headers={"X-Vault-Token": token}).json() == {"providers": []}
        put = requests.put(f"{base}/v1/providers/google", json=provider_body(), headers={"X-Vault-Token": token})
        assert put.status_code == 201
        got = requests.get(f"{base}/v1/providers/google", headers={"X-Vault-Token": token}).json()
        assert got["client_secret_set"] is True and "client_secret" not in got
        stored = subprocess.run(
            [bao_binary(), "kv", "get", "-field=client_secret",
             "secret/oauth-sidecar/providers/google"],
            env={**env, "VAULT_ADDR": vault_addr, "VAULT_TOKEN": token}, capture_output=True, text=True,
        )  # fmt: skip
        assert stored.stdout.strip() == CLIENT_SECRET, stored.stderr
        assert requests.get(f"{base}/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert CLIENT_SECRET not in out + err
    assert "GET /readyz" not in err  # no request log under the tokens unless --verbose
    time.sleep(0.2)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{vault_addr}/v1/sys/health", timeout=2)


def start_serve(vault, token: str, tmp_path, **extra: str) -> tuple[subprocess.Popen, str]:
    """`oauth-sidecar serve` as a process, once it answers /readyz with 200."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": token,
        "SIDECAR_BIND": f"127.0.0.1:{port}",
        "SIDECAR_WORKERS": "2",
        "HOME": str(tmp_path),
        **extra,
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oauth-sidecar"), "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:  # not up yet, or slow on a loaded machine: ask again
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"serve did not become ready: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)


def test_serve_runs_gunicorn_from_the_environment(vault, tokens, root, tmp_path):
    proc, base = start_serve(vault, tokens.sidecar, tmp_path)
    try:
        put = requests.put(
            f"{base}/v1/providers/google?note=query-not-logged", json=provider_body(),
            headers={"X-Vault-Token": tokens.admin},
        )  # fmt: skip
        assert put.status_code == 201
        # Exactly one refresher beside the web workers, and its metrics reach /metrics.
        assert sum("sidecar refresh" in cmd for cmd in descendants(proc.pid)) == 1
        metrics = wait_for(
            lambda: (m := requests.get(f"{base}/metrics", timeout=5).text) and "oauth_sidecar_grants{" in m and m
        )
        assert 'oauth_sidecar_grants{status="active"}' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "refresher" in err and "stopped" in err
    assert '"PUT /v1/providers/google HTTP/1.1" 201' in out + err
    assert "query-not-logged" not in out + err and CLIENT_SECRET not in out + err


def descendants(pid: int) -> list[str]:
    """Command lines of every process below `pid`."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current:
                found.append(commands[child])
                frontier.append(child)
    return found


def test_serve_refuses_bad_configuration():
    result = CliRunner().invoke(main, ["serve"], env={"SIDECAR_BIND": "nowhere"})
    assert result.exit_code == 2 and "SIDECAR_BIND" in result.stderr


def cli_env(vault, token, tmp_path, **extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": token,
        "HOME": str(tmp_path),
        **extra,
    }


def test_secrets_connect_waits_for_the_browser(api, live, vault, tokens, root, oauth, tmp_path):
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oauth-sidecar"), "secrets", "connect", "sheets", "--provider", "mock",
         "--env", "production"],
        env=cli_env(vault, tokens.admin, tmp_path, SIDECAR_PUBLIC_URL=live.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    link = proc.stdout.readline().strip()
    assert link.startswith(f"{live.url}/login/")
    time.sleep(1.5)  # the command is now waiting, and says so
    assert requests.Session().get(link, timeout=30).status_code == 200
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "waiting for the login" in err and "login completed" in err
    status = json.loads(out)
    assert (status["name"], status["status"], status["environments"]) == ("sheets", "active", ["production"])


def test_secrets_connect_reports_a_failed_login(api, live, vault, tokens, oauth, tmp_path):
    oauth.next(authorize={"error": "access_denied"})
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oauth-sidecar"), "secrets", "connect", "sheets", "--provider", "mock"],
        env=cli_env(vault, tokens.admin, tmp_path, SIDECAR_PUBLIC_URL=live.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    link = proc.stdout.readline().strip()
    assert requests.Session().get(link, timeout=30).status_code == 400
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "ended without tokens" in err


def test_secrets_list_get_delete(api, run, oauth, root):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    listed = run("secrets", "list")
    assert listed.exit_code == 0 and listed.stdout.split()[:3] == ["NAME", "PROVIDER", "STATUS"]
    assert listed.stdout.splitlines()[1].split()[:3] == ["sheets", "mock", "active"]
    got = json.loads(run("secrets", "get", "sheets").stdout)
    assert got["has_refresh_token"] is True and "access_token" not in got
    assert grant_record(root)["refresh_token"] not in listed.output + json.dumps(got)
    deleted = run("secrets", "delete", "sheets")
    assert deleted.exit_code == 0 and "revoked at the provider" in deleted.stderr
    assert oauth.log()["revoke"][0]["token_type_hint"] == "refresh_token"
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/mock", "oauth-sidecar/providers/mock"]
    assert run("secrets", "get", "sheets").exit_code == 1


def test_put_takes_the_optional_fields(run):
    result = put_google(
        run,
        "--issuer", "https://accounts.example.com",
        "--iss-parameter-supported",
        "--max-token-lifetime", "3600",
        OAUTH_CLIENT_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    shown = json.loads(result.stdout)
    assert shown["max_token_lifetime"] == 3600
    assert shown["issuer"] == "https://accounts.example.com"
    assert shown["authorization_response_iss_parameter_supported"] is True
    refused = put_google(run, "--iss-parameter-supported", OAUTH_CLIENT_SECRET=CLIENT_SECRET)
    assert refused.exit_code == 1 and "issuer" in refused.stderr


def test_policies_render_and_write(vault, tokens, root, tmp_path):
    env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.root_token, "HOME": str(tmp_path)}
    custom = {**env, "SIDECAR_KV_MOUNT": "kv", "SIDECAR_ENVIRONMENTS": "staging,production"}
    shown = CliRunner().invoke(main, ["policies", "render"], env=custom)
    assert shown.exit_code == 0 and 'path "kv/data/oauth/staging/*"' in shown.stdout
    written = CliRunner().invoke(main, ["policies", "render", "--dir", str(tmp_path / "out")], env=env)
    assert written.exit_code == 0
    committed = Path(__file__).parent.parent / "policies"
    assert {p.name for p in (tmp_path / "out").iterdir()} == {p.name for p in committed.iterdir()}
    loaded = CliRunner().invoke(main, ["policies", "write"], env=custom)
    assert loaded.exit_code == 0 and "wrote policy oauth-reader-staging" in loaded.stderr
    stored = hvac.Client(url=vault.addr, token=vault.root_token).sys.read_acl_policy("oauth-reader-staging")
    assert 'path "kv/data/oauth/staging/*"' in stored["data"]["policy"]
    denied = CliRunner().invoke(main, ["policies", "write"], env={**env, "VAULT_TOKEN": tokens.admin})
    assert denied.exit_code == 1 and "permission denied" in denied.stderr
    # Put the default policies back for the other tests.
    assert CliRunner().invoke(main, ["policies", "write"], env=env).exit_code == 0


def test_four_workers_run_one_refresh_loop(connect, vault, tokens, oauth, root, tmp_path):
    connect(ttl=4, rotate=True)
    proc, _ = start_serve(
        vault,
        tokens.sidecar,
        tmp_path,
        SIDECAR_WORKERS="4",
        SIDECAR_REFRESH_INTERVAL="0.2",
        SIDECAR_RESYNC_INTERVAL="1",
    )
    try:
        time.sleep(9)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    times = [t["at"] for t in oauth.log()["token"] if t["grant_type"] == "refresh_token"]
    # A 4 s token refreshed at half its life: about four refreshes in 9 s, never two at once.
    assert 3 <= len(times) <= 6, times
    assert min(b - a for a, b in pairwise(times)) >= 1000
    assert oauth.log()["reuse"] == 0


def test_sigterm_to_serve_during_a_refresh_stores_the_new_tokens(connect, vault, tokens, oauth, root, tmp_path):
    before = connect(ttl=3, rotate=True)
    oauth.next(token={"delayMs": 2500})
    proc, _ = start_serve(vault, tokens.sidecar, tmp_path, SIDECAR_REFRESH_INTERVAL="0.2")
    wait_for(lambda: oauth.log()["tokenRequests"] == 2, every=0.02)  # the refresh is at the provider
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    after = grant_record(root, "sheets")
    assert after["refresh_token"] != before["refresh_token"] and oauth.accepts(after["access_token"])


# -- secrets with no browser here: a device code, client credentials, an imported refresh token ----

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def connect_with_device_code(api, oauth, vault, tokens, tmp_path) -> tuple[subprocess.Popen, str]:
    """`secrets connect --device` as a process, once it shows its user code (returned)."""
    api.register(device_authorization_url=f"{oauth.issuer}/device_authorization")
    oauth.configure(deviceInterval=1)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "oauth-sidecar"), "secrets", "connect", "tv", "--provider", "mock",
         "--device"],
        env=cli_env(vault, tokens.admin, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    shown = ""
    while not (found := re.search(r"open (\S+) and enter the code ([A-Z]{4}-[A-Z]{4})$", shown, re.M)):
        line = proc.stderr.readline()
        assert line, f"connect --device exited early: {shown}{proc.communicate()[1]}"
        shown += line
    assert found.group(1) == f"{oauth.issuer}/device"
    return proc, found.group(2)


def device_polls(oauth) -> list[dict]:
    return [t for t in oauth.log()["token"] if t["grant_type"] == DEVICE_GRANT]


def decide(oauth, user_code: str, action: str) -> None:
    response = requests.post(
        f"{oauth.issuer}/__control/device", json={"user_code": user_code, "action": action}, timeout=5
    )
    assert response.status_code == 200, response.text


def test_secrets_connect_with_a_device_code(api, oauth, vault, tokens, root, tmp_path):
    proc, user_code = connect_with_device_code(api, oauth, vault, tokens, tmp_path)
    try:
        pending = requests.get(f"{oauth.issuer}/__control/device", timeout=5).json()
        assert [d["user_code"] for d in pending] == [user_code]
        wait_for(lambda: device_polls(oauth))  # the command polls: the user has not approved yet
        decide(oauth, user_code, "approve")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "login completed" in err
    shown = json.loads(out)
    assert (shown["name"], shown["grant_type"], shown["status"]) == ("tv", "device_code", "active")
    view = json.loads(bao_kv_get(vault, tokens.admin, "secret/oauth/production/tv").stdout)["data"]["data"]
    assert oauth.accepts(view["access_token"]) and view["access_token"] not in out + err
    polls = device_polls(oauth)
    answers = [p.get("error") or p["status"] for p in polls]
    assert answers[0] == "authorization_pending" and answers[-1] == 200
    assert set(answers[:-1]) == {"authorization_pending"}  # never slow_down: the interval is kept
    assert min(b["at"] - a["at"] for a, b in pairwise(polls)) >= 800


def test_a_denied_device_code_ends_with_a_one_line_error(api, oauth, vault, tokens, root, tmp_path):
    proc, user_code = connect_with_device_code(api, oauth, vault, tokens, tmp_path)
    before = vault_tree(root)
    try:
        decide(oauth, user_code, "deny")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and out == ""
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "access_denied" in error and err.rstrip().endswith(error)
    assert "Traceback" not in err
    assert vault_tree(root) == before


def test_secrets_connect_with_client_credentials(api, run, oauth, root):
    result = run("secrets", "connect", "robot", "--provider", "mock", "--client-credentials", "--env", "production")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["grant_type"], shown["status"], shown["environments"]) == (
        "client_credentials",
        "active",
        ["production"],
    )
    assert oauth.accepts(grant_record(root, "robot")["access_token"])
    assert grant_record(root, "robot")["access_token"] not in result.output


def test_secrets_connect_with_a_bad_refresh_token_on_stdin(api, run, oauth, root):
    before = vault_tree(root)
    result = run(
        "secrets", "connect", "imported", "--provider", "mock", "--refresh-token-file", "-", input="not-a-token\n"
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "invalid_grant" in result.stderr and "not-a-token" not in result.output
    (redeemed,) = oauth.log()["token"]
    assert redeemed["refresh_token"] == "not-a-token"
    assert vault_tree(root) == before


def test_secrets_connect_takes_one_mode_at_most(api, run, oauth, root):
    result = run("secrets", "connect", "robot", "--provider", "mock", "--device", "--client-credentials")
    assert result.exit_code != 0 and "at most one of --device, --client-credentials" in result.stderr
    assert oauth.log()["tokenRequests"] == 0 and oauth.log()["device"] == []
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/mock", "oauth-sidecar/providers/mock"]


# -- providers from a preset, or from the issuer's metadata ---------------------------------------


def test_put_from_a_preset(run, vault, tokens, root):
    result = run(
        "providers", "put", "okta", "--preset", "okta", "--preset-param", "domain=dev-1.okta.com",
        "--client-id", "x", OAUTH_CLIENT_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads(bao_kv_get(vault, tokens.admin, "secret/oauth-sidecar/providers/okta").stdout)["data"]["data"]
    assert stored["token_url"] == "https://dev-1.okta.com/oauth2/default/v1/token"
    assert stored["client_secret"] == CLIENT_SECRET and CLIENT_SECRET not in result.output
    missing = run("providers", "put", "okta2", "--preset", "okta", "--client-id", "x", OAUTH_CLIENT_SECRET="s")
    assert missing.exit_code == 1 and "preset_params" in missing.stderr and "domain" in missing.stderr
    assert list(vault_tree(root)) == ["oauth-sidecar/pins/okta", "oauth-sidecar/providers/okta"]


def test_put_from_the_issuer_metadata(run, oauth, root):
    result = run(
        "providers", "put", "discovered", "--issuer", oauth.issuer, "--client-id", "sidecar-test-client",
        "--scopes", "openid", OAUTH_CLIENT_SECRET=CLIENT_SECRET,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["authorization_url"], shown["token_url"], shown["device_authorization_url"]) == (
        f"{oauth.issuer}/authorize",
        f"{oauth.issuer}/token",
        f"{oauth.issuer}/device_authorization",
    )
    assert oauth.log()["discovery"]


def test_presets_are_listed(run):
    result = run("providers", "presets")
    assert result.exit_code == 0
    assert {"google", "okta"} <= {line.split()[0] for line in result.stdout.splitlines()}


def test_secrets_list_reads_page_after_page_and_filters(run, store):
    names = listed_grants(store, 2 * MAX_PAGE + 500)  # three pages
    listed = run("secrets", "list")
    rows = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert listed.exit_code == 0 and rows == names
    assert "625 retrying, 1875 active" in listed.stderr or "1875 active, 625 retrying" in listed.stderr
    retrying = run("secrets", "list", "--status", "retrying", "--provider", "other", "--json")
    assert retrying.exit_code == 0, retrying.output
    shown = json.loads(retrying.stdout)["secrets"]
    assert [s["name"] for s in shown] == [n for i, n in enumerate(names) if i % 12 == 0]
    bad = run("secrets", "list", "--env", "staging")
    assert bad.exit_code == 1 and "environment must be one of" in bad.stderr
