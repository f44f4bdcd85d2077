"""The settings UI in a real browser (Debian's Chromium), against real OpenBao and OAuth servers."""

import shutil

import pytest
import requests
from playwright.sync_api import Page, expect

from .helpers import CLIENT_ID, CLIENT_SECRET, grant_record, vault_tree

SHOTS = "/tmp/oauth-sidecar-ui-shots"  # a copy for people to look at; the tests' own go to tmp_path


@pytest.fixture
def seen(page: Page):
    """Every HTML page the browser received, to check that none holds a secret."""
    pages: list[str] = []

    def keep(response) -> None:
        if "text/html" in response.headers.get("content-type", "") and not 300 <= response.status < 400:
            pages.append(response.text())

    page.on("response", keep)
    return pages


def sessions(root) -> list[str]:
    """The UI sessions in Vault, by their record names (hashes of the cookie's id)."""
    return [path for path in vault_tree(root) if path.startswith("oauth-sidecar/sessions/")]


def log_in(page: Page, live, token: str) -> None:
    page.goto(f"{live.url}/settings")
    expect(page).to_have_url(f"{live.url}/settings/login")
    page.get_by_label("Vault token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="OAuth 2.0 providers")).to_be_visible()


def shoot(page: Page, tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    shutil.copy(path, f"{SHOTS}-{name}.png")


def add_provider(page: Page, oauth, scopes: str = "openid\nprofile\nemail\n") -> None:
    page.get_by_role("link", name="Add provider").click()
    page.get_by_label("Name").fill("mock")
    page.get_by_label("Client ID").fill(CLIENT_ID)
    page.get_by_label("Client secret").fill(CLIENT_SECRET)
    page.get_by_label("Authorization URL").fill(f"{oauth.issuer}/authorize")
    page.get_by_label("Token URL").fill(f"{oauth.issuer}/token")
    page.get_by_label("Scopes").fill(scopes)
    page.get_by_text("Advanced").click()
    page.get_by_label("Revocation URL").fill(f"{oauth.issuer}/revoke")
    page.get_by_role("button", name="Save provider").click()


def test_the_whole_journey(page: Page, live, tokens, oauth, root, tmp_path, seen):
    log_in(page, live, tokens.admin)
    add_provider(page, oauth, scopes="openid\nprofile\n\nemail\n")  # a pasted list, blank line and all
    expect(page.get_by_role("status")).to_have_text("Provider mock saved.")
    row = page.get_by_role("row", name="mock")
    for scope in ("openid", "profile", "email"):
        expect(row.get_by_text(scope, exact=True)).to_be_visible()
    shoot(page, tmp_path, "providers")

    page.get_by_role("link", name="Add OAuth 2.0 provider secret").click()
    page.get_by_label("Provider").select_option("mock")
    page.get_by_label("Name").fill("sheets")
    expect(page.get_by_label("development")).to_be_checked()
    expect(page.get_by_label("production")).to_be_checked()
    shoot(page, tmp_path, "add-secret")
    page.get_by_role("button", name="Continue").click()  # to the provider's login and back

    expect(page).to_have_url(f"{live.url}/settings")
    expect(page.get_by_role("status")).to_have_text("sheets is connected to mock.")
    secret_row = page.get_by_role("row", name="sheets")
    expect(secret_row.get_by_text("active")).to_be_visible()
    expect(secret_row.locator("td").nth(3)).to_contain_text("UTC")  # expires at
    expect(page.get_by_text("vault kv get -field=access_token secret/oauth/production/sheets")).to_be_visible()
    shoot(page, tmp_path, "secrets")

    first = grant_record(root, "sheets")["access_token"]
    assert oauth.accepts(first)
    page.get_by_role("button", name="Refresh sheets now").click()
    expect(page.get_by_role("status")).to_have_text("sheets refreshed.")
    second = grant_record(root, "sheets")
    assert second["access_token"] != first

    page.get_by_role("link", name="Delete sheets").click()
    expect(page.get_by_role("heading", name="Delete secret sheets?")).to_be_visible()
    shoot(page, tmp_path, "confirm-delete")
    page.get_by_role("button", name="Delete secret").click()
    expect(page.get_by_role("status")).to_have_text("sheets deleted and revoked at the provider.")
    assert oauth.log()["revoke"][0]["status"] == 200
    assert not any(k.startswith("oauth/") for k in vault_tree(root))

    assert len(seen) >= 8
    for html in seen:
        for secret in (CLIENT_SECRET, tokens.admin, first, second["access_token"], second["refresh_token"]):
            assert secret not in html


def test_a_validation_error_is_shown_next_to_its_field(page: Page, live, tokens, oauth, root, tmp_path, seen):
    log_in(page, live, tokens.admin)
    page.get_by_role("link", name="Add provider").click()
    page.get_by_label("Name").fill("mock")
    page.get_by_label("Client ID").fill("typed-client-id")
    page.get_by_label("Client secret").fill(CLIENT_SECRET)
    page.get_by_label("Authorization URL").fill("ftp://accounts.example.com/authorize")
    page.get_by_label("Token URL").fill("http://tokens.example.com/token")
    page.get_by_label("Scopes").fill("openid\nemail")
    page.get_by_role("button", name="Save provider").click()

    token_url = page.get_by_label("Token URL")  # every bad field at once, each with its own message
    expect(token_url).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#token_url-error")).to_have_text("Must use https (http is allowed only for a loopback host)")
    expect(page.get_by_label("Authorization URL")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#authorization_url-error")).to_have_text("Must be an absolute https URL")
    expect(page.get_by_label("Client ID")).to_have_value("typed-client-id")  # what was typed is kept
    expect(page.get_by_label("Scopes")).to_have_value("openid\nemail")
    expect(page.get_by_label("Client secret")).to_have_value("")  # never the secret in the page,
    expect(page.get_by_text("The secret you typed is kept")).to_be_visible()  # but it is kept server-side
    shoot(page, tmp_path, "validation")
    assert set(vault_tree(root)) == set(sessions(root))  # nothing but the person's own UI session

    page.get_by_label("Authorization URL").fill(f"{oauth.issuer}/authorize")
    page.get_by_label("Token URL").fill(f"{oauth.issuer}/token")
    page.get_by_role("button", name="Save provider").click()  # the secret field left empty
    expect(page.get_by_role("status")).to_have_text("Provider mock saved.")
    assert read_provider(root)["client_secret"] == CLIENT_SECRET
    page.get_by_role("link", name="Add provider").click()  # a new form starts without it
    expect(page.get_by_text("The secret you typed is kept")).to_have_count(0)
    assert all(CLIENT_SECRET not in html for html in seen)


def read_provider(root, name: str = "mock") -> dict:
    return root.secrets.kv.v2.read_secret_version(
        path=f"oauth-sidecar/providers/{name}", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]


def test_add_never_replaces_what_exists(page: Page, live, tokens, api, oauth, root, tmp_path):
    """A typo in a name must not cost a working connection: "Add" creates only; edit and Reconnect replace."""
    assert requests.Session().get(start_link(api), timeout=30).status_code == 200  # provider mock, secret sheets
    before = read_provider(root)
    log_in(page, live, tokens.admin)
    page.get_by_role("link", name="Add provider").click()
    expect(page.get_by_label("Redirect URI")).to_have_value(f"{live.url}/callback")
    page.get_by_label("Name").fill("mock")
    page.get_by_label("Client ID").fill("someone-else")
    page.get_by_label("Client secret").fill("another-secret")
    page.get_by_label("Authorization URL").fill(f"{oauth.issuer}/authorize")
    page.get_by_label("Token URL").fill(f"{oauth.issuer}/token")
    page.get_by_label("Scopes").fill("openid")
    page.get_by_role("button", name="Save provider").click()
    expect(page.locator("#name-error")).to_have_text("Already exists: edit it instead.")
    assert read_provider(root) == before

    page.goto(f"{live.url}/settings/secrets/new")
    page.get_by_label("Name").fill("sheets")
    page.get_by_label("development").uncheck()
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("#name-error")).to_have_text("Already exists: reconnect it from its row instead.")
    assert grant_record(root)["environments"] == ["development", "production"]
    shoot(page, tmp_path, "exists")


def test_editing_keeps_the_secret_unless_a_new_one_is_typed(page: Page, live, tokens, oauth, root, seen):
    log_in(page, live, tokens.admin)
    add_provider(page, oauth)
    page.get_by_role("link", name="Edit mock").click()
    expect(page.get_by_label("Client secret")).to_have_value("")
    expect(page.get_by_label("Scopes")).to_have_value("openid\nprofile\nemail")
    page.get_by_label("Client ID").fill("renamed-client")
    page.get_by_role("button", name="Save provider").click()
    expect(page.get_by_role("status")).to_have_text("Provider mock saved.")
    stored = read_provider(root)
    assert (stored["client_id"], stored["client_secret"]) == ("renamed-client", CLIENT_SECRET)
    assert all(CLIENT_SECRET not in html for html in seen)


def test_a_post_without_the_csrf_token_is_refused(page: Page, live, tokens, oauth, root):
    log_in(page, live, tokens.admin)
    add_provider(page, oauth)
    for form in ({}, {"csrf_token": "forged"}):
        refused = page.request.post(f"{live.url}/settings/providers/mock/delete", form=form)
        assert refused.status == 403 and "did not come from this page" in refused.text()
    assert "oauth-sidecar/providers/mock" in vault_tree(root)
    # The same post from the page itself works.
    page.get_by_role("link", name="Delete mock").click()
    page.get_by_role("button", name="Delete provider").click()
    expect(page.get_by_role("status")).to_have_text("Provider mock deleted.")


def test_a_logged_out_browser_is_sent_to_the_login_form(page: Page, live, tokens, root):
    for path in ("/settings", "/settings/providers/new", "/settings/secrets/new"):
        page.goto(f"{live.url}{path}")
        expect(page).to_have_url(f"{live.url}/settings/login")
        expect(page.get_by_label("Vault token")).to_be_visible()
    page.get_by_label("Vault token").fill("s.not-a-real-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_have_text("That Vault token is not valid.")
    log_in(page, live, tokens.admin)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{live.url}/settings/login?notice=logged_out")
    expect(page.get_by_role("status")).to_have_text("You are logged out.")
    page.goto(f"{live.url}/settings")
    expect(page).to_have_url(f"{live.url}/settings/login")


def test_vault_policies_decide_what_the_page_shows(page: Page, live, tokens, root):
    log_in(page, live, tokens.reader["production"])
    expect(page.get_by_role("alert").first).to_contain_text("may not list providers")


def test_readable_on_a_phone(chromium, live, tokens, api, oauth, tmp_path):
    assert requests.Session().get(start_link(api), timeout=30).status_code == 200
    context = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone = context.new_page()
    log_in(phone, live, tokens.admin)
    expect(phone.get_by_role("heading", name="Secrets")).to_be_visible()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # the page itself never scrolls sideways; wide tables scroll inside their card
    shoot(phone, tmp_path, "phone")
    context.close()


def start_link(api) -> str:
    response = api("POST", "/v1/secrets", json={"name": "sheets", "provider": "mock"})
    assert response.status_code == 201
    return response.json()["authorization_url"]


def test_reconnect_is_offered_when_a_login_is_needed(page: Page, live, tokens, api, oauth, root):
    assert requests.Session().get(start_link(api), timeout=30).status_code == 200
    record = grant_record(root, "sheets")
    root.secrets.kv.v2.create_or_update_secret(
        path="oauth-sidecar/grants/sheets",
        secret={**record, "status": "reauthorization_required", "last_error": "refresh: invalid_grant"},
        mount_point="secret",
    )
    log_in(page, live, tokens.admin)
    row = page.get_by_role("row", name="sheets")
    expect(row.get_by_text("reauthorization required")).to_be_visible()
    expect(row.get_by_text("refresh: invalid_grant")).to_be_visible()
    page.get_by_role("button", name="Reconnect sheets").click()  # the provider's login, and back
    expect(page.get_by_role("status").last).to_have_text("sheets is connected to mock.")
    expect(page.get_by_role("status").first).to_contain_text("its old tokens are not revoked at mock")
    expect(page.get_by_role("row", name="sheets").get_by_text("active")).to_be_visible()
    expect(page.get_by_role("button", name="Reconnect sheets")).to_have_count(0)


def test_a_preset_is_chosen_in_the_form(page: Page, live, tokens, root, tmp_path, seen):
    log_in(page, live, tokens.admin)
    page.get_by_role("link", name="Add provider").click()
    page.get_by_label("Name").fill("entra")
    page.get_by_label("Start from").select_option(label="Microsoft Entra ID (tenant)")
    page.get_by_label("Preset parameters").fill("tenant=contoso.onmicrosoft.com")
    page.get_by_label("Client ID").fill("app-id")
    page.get_by_label("Client secret").fill(CLIENT_SECRET)
    shoot(page, tmp_path, "preset")
    page.get_by_role("button", name="Save provider").click()
    expect(page.get_by_role("status")).to_have_text("Provider entra saved.")
    stored = root.secrets.kv.v2.read_secret_version(
        path="oauth-sidecar/providers/entra", mount_point="secret", raise_on_deleted_version=True
    )["data"]["data"]
    tenant = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0"
    assert (stored["preset"], stored["token_url"]) == ("microsoft", f"{tenant}/token")
    assert "offline_access" in stored["scopes"]
    # Editing shows what the preset filled in, and keeps it.
    page.get_by_role("link", name="Edit entra").click()
    expect(page.get_by_label("Authorization URL")).to_have_value(f"{tenant}/authorize")
    expect(page.get_by_label("Start from")).to_have_value("microsoft")
    page.get_by_role("button", name="Save provider").click()
    expect(page.get_by_role("status")).to_have_text("Provider entra saved.")
    assert all(CLIENT_SECRET not in html for html in seen)


def test_a_bad_preset_parameter_is_shown_next_to_its_field(page: Page, live, tokens, root):
    log_in(page, live, tokens.admin)
    page.get_by_role("link", name="Add provider").click()
    page.get_by_label("Name").fill("okta")
    page.get_by_label("Start from").select_option("okta")
    page.get_by_label("Preset parameters").fill("domain=evil.example/steal")
    page.get_by_label("Client ID").fill("app-id")
    page.get_by_label("Client secret").fill(CLIENT_SECRET)
    page.get_by_role("button", name="Save provider").click()
    expect(page.get_by_label("Preset parameters")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#preset_params-error")).to_contain_text("domain")
    expect(page.get_by_label("Start from")).to_have_value("okta")
    assert set(vault_tree(root)) == set(sessions(root))  # nothing but the person's own UI session
