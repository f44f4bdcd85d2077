import time

import pytest

from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized, VaultUnavailable
from sidecar.models import Provider
from sidecar.store import Store, retrying

from .conftest import provider_body, vault_tree


def test_check_and_set_writes(store, root):
    assert store.write("grants", "sheets", {"n": 1}, cas=0) == 1
    with pytest.raises(Conflict):
        store.write("grants", "sheets", {"n": 2}, cas=0)  # create-only: it exists
    assert store.write("grants", "sheets", {"n": 2}, cas=1) == 2
    with pytest.raises(Conflict):
        store.write("grants", "sheets", {"n": 3}, cas=1)  # a stale version loses
    current = store.read("grants", "sheets")
    assert (current.data, current.version) == ({"n": 2}, 2)


def test_paths_follow_the_contract(store, root):
    store.put_provider(Provider.from_input("google", provider_body()))
    assert "oauth-sidecar/providers/google" in vault_tree(root)


def test_bad_names_never_reach_vault(store, root):
    for name in ("../x", "a/b", "", "a" * 65):
        with pytest.raises(Invalid):
            store.write("providers", name, {"x": 1})
        with pytest.raises(Invalid):
            store.read("grants", name)
    assert vault_tree(root) == {}


def test_delete_removes_every_version(store, root):
    store.write("providers", "p", {"client_secret": "v1"})
    store.write("providers", "p", {"client_secret": "v2"})
    store.delete("providers", "p")
    assert vault_tree(root) == {}
    with pytest.raises(NotFound):
        store.read("providers", "p")


def test_missing_objects_are_not_found(store):
    with pytest.raises(NotFound, match="provider 'nope' not found"):
        store.get_provider("nope")
    with pytest.raises(NotFound):
        store.delete_provider("nope")
    assert store.names("providers") == []


def test_vault_errors_map_to_our_own(settings, tokens, root):
    reader = Store(settings, tokens.reader["production"])
    reader.check_token()
    with pytest.raises(Forbidden):
        reader.list_providers()
    with pytest.raises(Unauthorized):
        Store(settings, "s.not-a-real-token").check_token()
    with pytest.raises(Unauthorized):
        Store(settings, None).check_token()
    down = Settings.from_env({"VAULT_ADDR": f"http://127.0.0.1:{free_port()}", "VAULT_TOKEN": "x"})
    with pytest.raises(VaultUnavailable):
        Store(down, "x").read("providers", "google")
    with pytest.raises(VaultUnavailable):
        Store(down, "x").check_ready()


def test_repr_shows_no_token(settings, tokens):
    assert tokens.admin not in repr(Store(settings, tokens.admin))
    assert tokens.admin not in repr(tokens)


def test_retrying_rides_out_brief_unavailability():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise VaultUnavailable("down")
        return "written"

    assert retrying(flaky, attempts=5, delay=0) == "written" and len(calls) == 3
    with pytest.raises(VaultUnavailable):
        retrying(lambda: (_ for _ in ()).throw(VaultUnavailable("still down")), attempts=2, delay=0)


@pytest.fixture
def approle(vault, root):
    """An AppRole whose tokens live 2 s and at most 5 s, with the sidecar's policy."""
    if "approle/" not in root.sys.list_auth_methods():
        root.sys.enable_auth_method("approle")
    root.write("auth/approle/role/sidecar", token_policies="oauth-sidecar", token_ttl="2s", token_max_ttl="5s")
    role_id = root.read("auth/approle/role/sidecar/role-id")["data"]["role_id"]
    secret_id = root.write("auth/approle/role/sidecar/secret-id")["data"]["secret_id"]
    return {"SIDECAR_VAULT_AUTH": "approle", "SIDECAR_APPROLE_ROLE_ID": role_id, "SIDECAR_APPROLE_SECRET_ID": secret_id}


def own_store(vault, **env: str) -> Store:
    return Store.own(Settings.from_env({"VAULT_ADDR": vault.addr, **env}))


def test_approle_login_renews_and_logs_in_again_across_many_ttls(vault, approle, root):
    store = own_store(vault, **approle)
    started = time.monotonic()
    while time.monotonic() - started < 12:  # six token TTLs, two maximum TTLs
        assert store.names("grants") == []
        time.sleep(0.25)
    assert store._login.logins >= 3


def test_a_revoked_sidecar_token_is_replaced_by_a_new_login(vault, approle, root):
    store = own_store(vault, **approle)
    store.check_token()
    first = store._client.token
    root.auth.token.revoke(first)
    assert store.names("grants") == []  # Vault refused the old token; a new login took over
    assert store._client.token != first and store._login.logins == 2


def test_a_token_file_is_read_again_when_its_token_stops_working(vault, root, tmp_path):
    token_file = tmp_path / "token"
    make = lambda: root.auth.token.create(policies=["oauth-sidecar"], ttl="1h")["auth"]["client_token"]  # noqa: E731
    token_file.write_text(make())
    store = own_store(vault, VAULT_TOKEN_FILE=str(token_file))
    store.check_token()
    root.auth.token.revoke(token_file.read_text())
    token_file.write_text(make())  # as an agent would
    assert store.names("grants") == []


def test_a_policy_denial_is_not_mistaken_for_an_expired_token(vault, approle, root):
    store = own_store(vault, **approle)
    with pytest.raises(Forbidden):
        store.write("providers", "nope", {"x": 1})  # the sidecar may not write providers
    assert store._login.logins == 1


def test_missing_login_credentials_are_a_clear_error(vault, tmp_path):
    store = own_store(vault, VAULT_TOKEN_FILE=str(tmp_path / "absent"))
    with pytest.raises(Unauthorized, match="cannot read the credential file"):
        store.names("grants")
