import hvac
import pytest

from sidecar.config import Settings
from sidecar.devvault import DevVault
from sidecar.web import create_app


def test_healthz_needs_nothing(settings):
    client = create_app(Settings.from_env({"VAULT_ADDR": "http://127.0.0.1:9"})).test_client()
    assert client.get("/healthz").json == {"status": "ok"}


def test_the_front_door_leads_to_the_settings_page():
    client = create_app(Settings.from_env({"VAULT_ADDR": "http://127.0.0.1:9"})).test_client()
    answer = client.get("/")
    assert answer.status_code == 302 and answer.headers["Location"] == "/settings"


@pytest.mark.process
def test_readyz_follows_vault_down_and_back():
    first = DevVault().start()
    settings = Settings.from_env({"VAULT_ADDR": first.addr, "VAULT_TOKEN": first.root_token})
    client = create_app(settings).test_client()
    try:
        assert client.get("/readyz").status_code == 200
        first.stop()
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json["error"]["code"] == "vault_unavailable"
        # A new server on the same address, with the same root token, brings readiness back.
        second = DevVault(port=first.port, root_token=first.root_token).start()
        try:
            assert client.get("/readyz").status_code == 200
            hvac.Client(url=second.addr, token=second.root_token).sys.seal()
            sealed = client.get("/readyz")
            assert sealed.status_code == 503 and "sealed" in sealed.json["error"]["message"]
        finally:
            second.stop()
    finally:
        first.stop()


def test_readyz_refuses_an_invalid_sidecar_token(vault):
    settings = Settings.from_env({"VAULT_ADDR": vault.addr, "VAULT_TOKEN": "s.revoked-or-bogus"})
    response = create_app(settings).test_client().get("/readyz")
    assert response.status_code == 503
    assert "token" in response.json["error"]["message"]
    assert "s.revoked-or-bogus" not in response.get_data(as_text=True)
