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
