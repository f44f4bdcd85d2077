import pytest

from sidecar.config import Settings
from sidecar.errors import ConfigError


def test_defaults_match_the_contract(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token
    s = Settings.from_env({})
    assert (s.public_url, s.bind, s.kv_mount, s.prefix, s.state_prefix) == (
        "http://127.0.0.1:8080",
        "127.0.0.1:8080",
        "secret",
        "oauth",
        "oauth-sidecar",
    )
    assert s.environments == ("development", "production")
    assert (s.refresh_interval, s.refresh_margin, s.vault_auth) == (10.0, 300, "token")
    assert s.redirect_uri == "http://127.0.0.1:8080/callback"
    assert s.vault_token is None


def test_reads_every_variable():
    s = Settings.from_env(
        {
            "VAULT_ADDR": "https://vault.example.com:8200/",
            "VAULT_TOKEN": "hvs.secret-token",
            "VAULT_NAMESPACE": "team-a",
            "VAULT_SKIP_VERIFY": "true",
            "SIDECAR_PUBLIC_URL": "https://sidecar.example.com/",
            "SIDECAR_BIND": "[::1]:9090",
            "SIDECAR_KV_MOUNT": "kv/team",
            "SIDECAR_PREFIX": "tokens",
            "SIDECAR_STATE_PREFIX": "sidecar-state",
            "SIDECAR_ENVIRONMENTS": "staging, production,staging",
            "SIDECAR_REFRESH_INTERVAL": "2.5",
            "SIDECAR_REFRESH_MARGIN": "60",
            "SIDECAR_WORKERS": "4",
        }
    )
    assert s.vault_addr == "https://vault.example.com:8200"
    assert (s.vault_token, s.vault_namespace, s.vault_skip_verify) == ("hvs.secret-token", "team-a", True)
    assert s.redirect_uri == "https://sidecar.example.com/callback"
    assert s.bind_host_port == ("::1", 9090)
    assert (s.kv_mount, s.prefix, s.state_prefix) == ("kv/team", "tokens", "sidecar-state")
    assert s.environments == ("staging", "production")
    assert (s.refresh_interval, s.refresh_margin, s.workers) == (2.5, 60, 4)
    assert "hvs.secret-token" not in repr(s)


def test_bao_variables_are_fallbacks():
    s = Settings.from_env({"BAO_ADDR": "http://127.0.0.1:8200", "BAO_TOKEN": "b", "VAULT_TOKEN": "v"})
    assert (s.vault_addr, s.vault_token) == ("http://127.0.0.1:8200", "v")


def test_token_helper_file_like_the_vault_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vault-token").write_text("s.from-file\n")
    assert Settings.from_env({}).vault_token == "s.from-file"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VAULT_ADDR", "vault:8200"),
        ("VAULT_SKIP_VERIFY", "maybe"),
        ("VAULT_CACERT", "/nonexistent/ca.pem"),
        ("SIDECAR_PUBLIC_URL", "http://sidecar.example.com"),
        ("SIDECAR_PUBLIC_URL", "https://sidecar.example.com/?x=1"),
        ("SIDECAR_BIND", "8080"),
        ("SIDECAR_BIND", "127.0.0.1:70000"),
        ("SIDECAR_KV_MOUNT", "../secret"),
        ("SIDECAR_PREFIX", "a b"),
        ("SIDECAR_STATE_PREFIX", "x//y"),
        ("SIDECAR_ENVIRONMENTS", "prod/../dev"),
        ("SIDECAR_ENVIRONMENTS", " , "),
        ("SIDECAR_REFRESH_INTERVAL", "0"),
        ("SIDECAR_REFRESH_INTERVAL", "soon"),
        ("SIDECAR_REFRESH_INTERVAL", "nan"),
        ("SIDECAR_REFRESH_MARGIN", "-5"),
        ("SIDECAR_WORKERS", "0"),
        ("SIDECAR_VAULT_AUTH", "password"),
        ("SIDECAR_VAULT_AUTH", "approle"),
        ("SIDECAR_VAULT_AUTH", "kubernetes"),
    ],
)
def test_bad_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        Settings.from_env({variable: value})


def test_each_vault_login_method_reads_its_credentials(tmp_path):
    approle = Settings.from_env(
        {
            "SIDECAR_VAULT_AUTH": "approle",
            "SIDECAR_APPROLE_ROLE_ID": "role-1",
            "SIDECAR_APPROLE_SECRET_ID_FILE": str(tmp_path / "secret-id"),
        }
    )
    assert (approle.approle_role_id, approle.approle_secret_id_file, approle.approle_mount) == (
        "role-1",
        str(tmp_path / "secret-id"),
        "approle",
    )
    assert "role-1" not in repr(approle)
    kubernetes = Settings.from_env({"SIDECAR_VAULT_AUTH": "kubernetes", "SIDECAR_KUBERNETES_ROLE": "oauth-sidecar"})
    assert kubernetes.kubernetes_token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert Settings.from_env({"VAULT_TOKEN_FILE": "/run/vault/token"}).vault_token_file == "/run/vault/token"


@pytest.mark.parametrize(
    ("bind", "public_url"),
    [
        ("127.0.0.1:18181", "http://127.0.0.1:18181"),
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),  # a wildcard bind answers on loopback too
        ("[::1]:9000", "http://[::1]:9000"),
        ("localhost:5000", "http://localhost:5000"),
    ],
)
def test_the_public_url_follows_the_bind_unless_set(bind, public_url):
    assert Settings.from_env({"SIDECAR_BIND": bind}).public_url == public_url
    assert Settings.from_env({"SIDECAR_BIND": bind}).redirect_uri == f"{public_url}/callback"
    set_ = Settings.from_env({"SIDECAR_BIND": bind, "SIDECAR_PUBLIC_URL": "https://oauth.example.com/"})
    assert set_.public_url == "https://oauth.example.com"


def test_a_bind_no_browser_reaches_by_http_needs_a_public_url():
    with pytest.raises(ConfigError, match=r"SIDECAR_PUBLIC_URL: unset, and http://10\.1\.2\.3:80"):
        Settings.from_env({"SIDECAR_BIND": "10.1.2.3:80"})
