import threading
import time

import pytest

from sidecar import inputs
from sidecar.config import Settings
from sidecar.devvault import free_port
from sidecar.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized, VaultUnavailable
from sidecar.refresher import Refresher
from sidecar.store import Store

from .helpers import fast_settings, grant_record, provider_body, running, vault_tree, wait_for
from .kubernetes import AUDIENCE, Review, ServiceAccount, TokenReviewAPI, fingerprint, service_account_jwt


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
    store.put_provider(inputs.provider("google", provider_body()))
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
        Store(down, "x", patience=0.5).read("providers", "google")
    with pytest.raises(VaultUnavailable):
        Store(down, "x").check_ready()


def test_a_call_rides_out_unavailability_for_its_patience(vault, tokens, store, fault_proxies):
    """An election or a restart: the call waits and succeeds; past its patience it says so."""
    store.write("grants", "sheets", {"n": 1})
    proxy = fault_proxies(vault.addr)
    via = Settings.from_env({"VAULT_ADDR": proxy.addr})
    proxy.refuse()
    threading.Timer(2.0, proxy.restore).start()
    started = time.monotonic()
    assert Store(via, tokens.sidecar).read("grants", "sheets").data == {"n": 1}
    assert time.monotonic() - started >= 1.5
    proxy.add("answer", times=None, status=503, body=b'{"errors":["Vault is sealed"]}')
    started = time.monotonic()
    with pytest.raises(VaultUnavailable):
        Store(via, tokens.sidecar, patience=1.0).read("grants", "sheets")
    assert 0.5 <= time.monotonic() - started < 5
    assert len(proxy.faults_seen("answer")) >= 3  # retried with backoff, not once
    # A store made `until` a deadline keeps it over several calls: past it, one attempt each.
    bounded = Store(via, tokens.sidecar).until(time.monotonic() + 1.0)
    with pytest.raises(VaultUnavailable):
        bounded.read("grants", "sheets")
    started = time.monotonic()
    with pytest.raises(VaultUnavailable):
        bounded.read("grants", "sheets")
    assert time.monotonic() - started < 0.5


def test_a_write_whose_answer_was_lost_is_recognised_as_our_own(vault, settings, tokens, fault_proxies):
    """Vault applied the write, the answer never came: the retry meets our own version, not a rival's."""
    store = Store(settings, tokens.sidecar)
    proxy = fault_proxies(vault.addr)
    mine = Store(Settings.from_env({"VAULT_ADDR": proxy.addr}), tokens.sidecar)
    proxy.add("drop", method="POST", path="pending/created")
    assert mine.write("pending", "created", {"n": 1}, cas=0) == 1
    proxy.add("drop", method="POST", path="pending/created")
    assert mine.write("pending", "created", {"n": 2}, cas=1) == 2
    assert len(proxy.faults_seen("drop")) == 2
    assert store.read("pending", "created").data == {"n": 2}
    # A conflict with someone else's write is still a conflict.
    store.write("pending", "created", {"n": 3})
    with pytest.raises(Conflict):
        mine.write("pending", "created", {"n": 4}, cas=2)


def test_repr_shows_no_token(settings, tokens):
    assert tokens.admin not in repr(Store(settings, tokens.admin))
    assert tokens.admin not in repr(tokens)


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
    assert store._vault.login.logins >= 3


def test_a_revoked_sidecar_token_is_replaced_by_a_new_login(vault, approle, root):
    store = own_store(vault, **approle)
    store.check_token()
    first = store._client.token
    root.auth.token.revoke(first)
    assert store.names("grants") == []  # Vault refused the old token; a new login took over
    assert store._client.token != first and store._vault.login.logins == 2


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
    assert store._vault.login.logins == 1


def test_missing_login_credentials_are_a_clear_error(vault, tmp_path):
    store = own_store(vault, VAULT_TOKEN_FILE=str(tmp_path / "absent"))
    with pytest.raises(Unauthorized, match="cannot read the credential file"):
        store.names("grants")


# -- the sidecar's Kubernetes login, against OpenBao's kubernetes auth and a TokenReview stand-in ---------

SIDECAR_ACCOUNT = ServiceAccount(namespace="oauth", name="oauth-sidecar")


def kubernetes_role(root, api: TokenReviewAPI, tmp_path, **token: str) -> dict[str, str]:
    """The sidecar's role, bound to its service account, and its projected token file: the sidecar's env."""
    root.write(
        "auth/kubernetes/role/oauth-sidecar",
        bound_service_account_names=SIDECAR_ACCOUNT.name,
        bound_service_account_namespaces=SIDECAR_ACCOUNT.namespace,
        audience=AUDIENCE,
        token_policies="oauth-sidecar",
        **token,
    )
    token_file = tmp_path / "token"
    token_file.write_text(api.issue(SIDECAR_ACCOUNT))
    return {
        "SIDECAR_VAULT_AUTH": "kubernetes",
        "SIDECAR_KUBERNETES_ROLE": "oauth-sidecar",
        "SIDECAR_KUBERNETES_TOKEN_FILE": str(token_file),
    }


def test_a_kubernetes_sidecar_logs_in_with_its_service_account_token(vault, root, kubernetes_api, tmp_path):
    env = kubernetes_role(root, kubernetes_api, tmp_path)
    store = own_store(vault, **env)
    assert store.write("grants", "sheets", {"n": 1}) == 1
    assert store.read("grants", "sheets").data == {"n": 1}
    with pytest.raises(Forbidden):
        store.write("providers", "nope", {"x": 1})  # the sidecar's policy, not root's
    jwt = (tmp_path / "token").read_text()
    assert kubernetes_api.reviews == [Review(fingerprint(jwt), (AUDIENCE,), True)]
    meta = root.auth.token.lookup(store._client.token)["data"]["meta"]
    assert (meta["service_account_namespace"], meta["service_account_name"]) == ("oauth", "oauth-sidecar")


def test_a_service_account_token_kubernetes_rejects_is_unauthorized(vault, root, kubernetes_api, tmp_path, caplog):
    env = kubernetes_role(root, kubernetes_api, tmp_path)
    forged = service_account_jwt(SIDECAR_ACCOUNT)  # well formed, but Kubernetes never issued it
    (tmp_path / "token").write_text(forged)
    with pytest.raises(Unauthorized, match="kubernetes login") as refused:
        own_store(vault, **env).names("grants")
    assert kubernetes_api.reviews == [Review(fingerprint(forged), (AUDIENCE,), False)]
    assert forged not in str(refused.value) and forged not in caplog.text


def test_a_kubernetes_sidecar_keeps_refreshing_across_its_token_ttls(
    connect, vault, root, oauth, kubernetes_api, tmp_path
):
    env = kubernetes_role(root, kubernetes_api, tmp_path, token_ttl="2s", token_max_ttl="4s")
    settings = fast_settings(vault, "", **env)
    store = Store.own(settings)
    refresher = Refresher(settings, store)
    seen = [connect(ttl=3)["last_refreshed_at"]]

    def refreshed() -> str | None:
        record = grant_record(root, "sheets")
        return record["last_refreshed_at"] if record["last_refreshed_at"] != seen[-1] else None

    with running(refresher):
        for _ in range(4):  # four refreshes: about six seconds, several of the sidecar's token TTLs
            seen.append(wait_for(refreshed, timeout=15))
    refresher.shutdown()
    assert store._vault.login.logins >= 2
    # Every login and every renewal (OpenBao reviews the JWT again then) showed the projected token, accepted.
    assert set(kubernetes_api.reviews) == {Review(fingerprint((tmp_path / "token").read_text()), (AUDIENCE,), True)}
    assert oauth.accepts(grant_record(root, "sheets")["access_token"])


def test_a_rotated_service_account_token_is_used_at_the_next_login(vault, root, kubernetes_api, tmp_path):
    env = kubernetes_role(root, kubernetes_api, tmp_path, token_ttl="2s", token_max_ttl="1h")
    store = own_store(vault, **env)
    store.check_token()
    token_file = tmp_path / "token"
    old = token_file.read_text()
    token_file.write_text(new := kubernetes_api.issue(SIDECAR_ACCOUNT))  # the kubelet rotates the projected token
    kubernetes_api.revoke(old)
    # OpenBao reviews the JWT again when the sidecar renews its token: refused, so the sidecar logs in again.
    wait_for(lambda: store.names("grants") == [] and store._vault.login.logins == 2, timeout=10)
    old_review, new_review = Review(fingerprint(old), (AUDIENCE,), False), Review(fingerprint(new), (AUDIENCE,), True)
    assert kubernetes_api.reviews[-2:] == [old_review, new_review]
