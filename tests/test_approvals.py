"""Where a provider may send tokens is approved through the sidecar (pins), and checked before any
token, code or client secret leaves: real OpenBao, the real OAuth server, a loopback thief."""

import requests

from sidecar.refresher import Refresher
from sidecar.store import Store

from .helpers import callback_url, fast_settings, grant_record, narrow_token, start, vault_tree


def provider(root) -> dict:
    return root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/providers/mock", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]


def write_provider(root, **changes: str) -> None:
    """A change made in Vault directly, as any token with write on providers/* could make it."""
    record = {**provider(root), **changes}
    root.secrets.kv.v2.create_or_update_secret(path="oauth-sidecar/providers/mock", secret=record, mount_point="secret")


def refresh(vault, tokens) -> str:
    settings = fast_settings(vault, tokens.sidecar)
    refresher = Refresher(settings, Store.own(settings))
    try:
        return refresher.refresh_one("sheets", force=True).result
    finally:
        refresher.shutdown()


def test_a_provider_saved_through_the_sidecar_is_pinned(api, root):
    assert "oauth-sidecar/pins/mock" in vault_tree(root)
    pin = root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/pins/mock", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    assert len(pin["pin"]) == 64 and pin["approved_at"].endswith("Z")
    assert api("DELETE", "/v1/providers/mock").status_code == 204
    assert not any("/pins/" in path for path in vault_tree(root))  # the pin goes with its provider


def test_a_token_url_changed_in_vault_directly_gets_nothing_until_saved_again(
    api, vault, tokens, root, oauth, token_thief
):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    thief_url, stolen = token_thief
    write_provider(root, token_url=thief_url)
    assert refresh(vault, tokens) == "retrying"
    assert stolen == []
    grant = grant_record(root)
    assert grant["status"] == "retrying" and "changed outside the sidecar" in grant["last_error"]
    # An operator saves the provider through the sidecar (its own URL again): refreshes resume.
    assert api.register().status_code == 200
    assert refresh(vault, tokens) == "refreshed" and stolen == []


def test_an_edit_that_changes_no_destination_keeps_refreshing(api, vault, tokens, root, oauth):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    write_provider(root, scopes=["openid"], refresh_margin=60)
    assert refresh(vault, tokens) == "refreshed"


def test_a_provider_without_a_pin_is_pinned_when_the_refresher_first_loads_it(
    api, vault, tokens, root, oauth, token_thief
):
    """Providers from before pins, or made by hand, are trusted as they stand at first sight, then held."""
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    root.secrets.kv.v2.delete_metadata_and_all_versions(path="oauth-sidecar/pins/mock", mount_point="secret")
    assert refresh(vault, tokens) == "refreshed"
    assert "oauth-sidecar/pins/mock" in vault_tree(root)
    thief_url, stolen = token_thief
    write_provider(root, token_url=thief_url)
    assert refresh(vault, tokens) == "retrying" and stolen == []


def test_a_revocation_is_not_sent_to_a_changed_provider(api, root, oauth, token_thief):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    thief_url, stolen = token_thief
    write_provider(root, revocation_url=thief_url)
    refused = api("DELETE", "/v1/secrets/sheets")
    assert refused.status_code == 502 and "changed outside the sidecar" in refused.json()["error"]["message"]
    assert stolen == [] and grant_record(root)["refresh_token"]
    forced = api("DELETE", "/v1/secrets/sheets?force=true")  # deleted, never revoked there
    assert forced.status_code == 200 and forced.json()["revoked"] is False and stolen == []


def test_a_login_code_is_not_sent_to_a_provider_changed_meanwhile(api, root, oauth, token_thief):
    browser = requests.Session()
    back = callback_url(browser, start(api))  # the person logged in at the provider
    thief_url, stolen = token_thief
    write_provider(root, token_url=thief_url)
    page = browser.get(back, timeout=30)
    assert page.status_code == 400 and "changed outside the sidecar" in page.text
    assert stolen == [] and oauth.log()["tokenRequests"] == 0
    assert not any(path.startswith(("oauth-sidecar/grants/", "oauth/")) for path in vault_tree(root))


def test_starting_a_login_or_an_import_for_a_changed_provider_is_a_409(api, root, oauth, token_thief):
    thief_url, stolen = token_thief
    write_provider(root, token_url=thief_url)
    login = api("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock"})
    imported = api(
        "POST",
        "/v1/secrets",
        json={"name": "sheets", "provider": "mock", "grant_type": "refresh_token", "refresh_token": "rt"},
    )
    for answer in (login, imported):
        assert answer.status_code == 409 and "changed outside the sidecar" in answer.json()["error"]["message"]
    assert stolen == []


# A token that may write providers in Vault, and nothing else: what the review's attacker held.
PROVIDER_WRITER = {
    "secret/data/oauth-sidecar/providers/*": ["create", "read", "update"],
    "secret/metadata/oauth-sidecar/providers/*": ["read", "list", "create", "update", "delete"],
}


def test_a_change_made_in_vault_cannot_be_approved_by_saving_it_again(api, vault, tokens, root, oauth, token_thief):
    """Written into Vault first, then saved through the sidecar as it now stands: the save is
    measured against the pin, not against the record, so it still needs rights on the secret."""
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    thief_url, stolen = token_thief
    write_provider(root, token_url=thief_url)
    resaved = api("PUT", "/v1/providers/mock", json=oauth.registration(token_url=thief_url), headers=writer)
    assert resaved.status_code == 403 and "1 of 1 are not yours" in resaved.json()["error"]["message"]
    assert refresh(vault, tokens) == "retrying" and stolen == []


def test_a_provider_deleted_in_vault_and_made_again_is_held_to_its_pin(api, vault, tokens, root, oauth, token_thief):
    assert requests.Session().get(start(api), timeout=30).status_code == 200
    writer = narrow_token(root, "test-provider-writer", PROVIDER_WRITER)
    thief_url, stolen = token_thief
    root.secrets.kv.v2.delete_metadata_and_all_versions(path="oauth-sidecar/providers/mock", mount_point="secret")
    again = api("PUT", "/v1/providers/mock", json=oauth.registration(token_url=thief_url), headers=writer)
    assert again.status_code == 403 and "1 of 1 are not yours" in again.json()["error"]["message"]
    assert stolen == []


def test_a_login_in_flight_is_refused_when_its_provider_changed_meanwhile(api, root, oauth, token_thief):
    """No secret uses the provider yet, so saving it anew needs no rights on secrets; but the login
    started before it is finished only with the provider it started with."""
    browser = requests.Session()
    back = callback_url(browser, start(api))
    thief_url, stolen = token_thief
    assert api.register(token_url=thief_url).status_code == 200
    page = browser.get(back, timeout=30)
    assert page.status_code == 400 and "provider was changed since this login started" in page.text
    assert stolen == [] and oauth.log()["tokenRequests"] == 0
