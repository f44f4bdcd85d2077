"""The settings UI in a real browser (Debian's Chromium), against real OpenBao and OAuth servers."""

import re
import shutil

import pytest
import requests
from playwright.sync_api import Page, expect

from sidecar import logins, web
from sidecar.models import Provider
from sidecar.store import Store

from .helpers import CLIENT_ID, CLIENT_SECRET, grant_record, listed_grants, narrow_token, seed_grants, vault_tree

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
    # The CLI installed here (the dev extra's `bao`), and what reading takes besides.
    expect(page.get_by_text("bao kv get -field=access_token secret/oauth/production/sheets")).to_be_visible()
    expect(page.locator("#reading-note")).to_contain_text("VAULT_ADDR")
    expect(page.locator("#reading-note")).to_contain_text("oauth-reader-<environment>")
    expect(page.locator("#reading-note")).to_contain_text("vault and bao take the same arguments")
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


def test_a_kept_secret_serves_only_the_client_it_was_typed_for(page: Page, live, tokens, oauth, root, seen):
    log_in(page, live, tokens.admin)
    page.get_by_role("link", name="Add provider").click()
    page.get_by_label("Name").fill("mock")
    page.get_by_label("Client ID").fill("client-a")
    page.get_by_label("Client secret").fill(CLIENT_SECRET)
    page.get_by_label("Authorization URL").fill(f"{oauth.issuer}/authorize")
    page.get_by_label("Token URL").fill("ftp://wrong")
    page.get_by_label("Scopes").fill("openid")
    page.get_by_role("button", name="Save provider").click()
    expect(page.get_by_text("The secret you typed is kept")).to_be_visible()
    page.get_by_label("Client ID").fill("client-b")  # another client: the kept secret is not its
    page.get_by_label("Token URL").fill(f"{oauth.issuer}/token")
    page.get_by_role("button", name="Save provider").click()
    expect(page.locator("#client_secret-error")).to_be_visible()
    expect(page.get_by_text("The secret you typed is kept")).to_have_count(0)
    assert "oauth-sidecar/providers/mock" not in vault_tree(root)
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

    page.goto(f"{live.url}/settings")  # "reconnect it from its row": there, on purpose, it replaces
    page.get_by_role("button", name="Reconnect sheets").click()
    expect(page.get_by_role("status").first).to_contain_text("its old tokens are not revoked at mock")


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


def test_vault_policies_decide_what_the_page_shows(page: Page, live, tokens, oauth, root):
    providers, secrets = page.locator("#providers"), page.locator("#secrets")
    add_provider = page.get_by_role("link", name="Add provider")
    add_secret = page.get_by_role("link", name="Add OAuth 2.0 provider secret")

    # With nothing stored, an operator is told to add a provider, and to add one first for a secret.
    log_in(page, live, tokens.admin)
    expect(providers).to_contain_text("No providers yet. Add one with its client ID")
    expect(add_provider).to_be_visible()
    expect(secrets).to_contain_text("No secrets yet. Add a provider first")
    expect(add_secret).to_have_count(0)
    page.get_by_role("button", name="Log out").click()

    operator = Store(live.settings, tokens.admin)
    operator.put_provider(Provider("mock", CLIENT_ID, CLIENT_SECRET, f"{oauth.issuer}/authorize",
                                   f"{oauth.issuer}/token", ("openid",)))  # fmt: skip
    seed_grants(operator, oauth, ["sheets"])

    # A reader may list neither: each section says so, and claims no emptiness it cannot know.
    log_in(page, live, tokens.reader["production"])
    expect(providers).to_contain_text("Your Vault token may not list providers.")
    expect(secrets).to_contain_text("Your Vault token may not list secrets.")
    expect(page.get_by_text("yet")).to_have_count(0)
    expect(add_provider).to_have_count(0)
    expect(add_secret).to_have_count(0)
    page.get_by_role("button", name="Log out").click()

    # A token that may look but not add sees what there is, and no Add button.
    looker = narrow_token(root, "ui-looker", {
        "secret/metadata/oauth-sidecar/providers/*": ["list"], "secret/data/oauth-sidecar/providers/*": ["read"],
        "secret/metadata/oauth-sidecar/grants/*": ["list"], "secret/data/oauth-sidecar/grants/*": ["read"],
        "secret/data/oauth-sidecar/index/*": ["read"], "secret/metadata/oauth-sidecar/index/*": ["list"],
    })  # fmt: skip
    log_in(page, live, looker["X-Vault-Token"])
    expect(providers.get_by_role("rowheader", name="mock")).to_be_visible()
    expect(secrets.get_by_role("rowheader", name="sheets")).to_be_visible()
    expect(add_provider).to_have_count(0)
    expect(add_secret).to_have_count(0)


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
    expect(page.get_by_role("button", name="Refresh sheets now")).to_be_visible()  # healthy again: Reconnect
    expect(page.get_by_role("button", name="Reconnect sheets")).not_to_have_class(re.compile("primary"))  # no lead


def test_no_refresh_is_offered_where_none_can_work(page: Page, live, tokens, api, oauth, root):
    oauth.next(token={"omit": ["refresh_token"]})  # the provider gave no refresh token
    assert requests.Session().get(start_link(api), timeout=30).status_code == 200
    log_in(page, live, tokens.admin)
    expect(page.get_by_role("button", name="Reconnect sheets")).to_be_visible()
    expect(page.get_by_role("button", name="Refresh sheets now")).to_have_count(0)
    assert api("GET", "/v1/secrets/sheets").json()["renewable"] is False


def seed_troubled(root, operator: Store, oauth) -> None:
    """Three secrets: `sheets` fine, a long-named one retrying, `drive` refused for good."""
    long_name = "calendar-sync-for-the-production-reporting-team"
    seed_grants(operator, oauth, ["sheets", long_name, "drive"])
    trouble = {
        long_name: {"status": "retrying", "failures": 3, "next_attempt_at": "2026-12-03T12:05:00.000000Z",
                    "last_error": "refresh: the provider could not be reached (connection refused)"},
        "drive": {"status": "reauthorization_required",
                  "last_error": "refresh: invalid_grant (the refresh token was revoked by the user or an admin)"},
    }  # fmt: skip
    for name, fields in trouble.items():
        root.secrets.kv.v2.create_or_update_secret(
            path=f"oauth-sidecar/grants/{name}", secret={**grant_record(root, name), **fields}, mount_point="secret"
        )


def test_each_row_says_what_to_do_and_shows_all_its_buttons(chromium, live, tokens, api, oauth, root, tmp_path):
    seed_troubled(root, Store(live.settings, tokens.admin), oauth)
    for width, height in ((1280, 900), (390, 844)):
        context = chromium.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        log_in(page, live, tokens.admin)
        drive = page.locator("tr", has=page.get_by_role("rowheader", name="drive"))
        # Refused for good: Reconnect comes first, and the Refresh now that cannot succeed is not offered.
        expect(drive.get_by_role("button").first).to_have_text("Reconnect")
        expect(page.get_by_role("button", name="Refresh drive now")).to_have_count(0)
        expect(page.locator("#note-drive")).to_contain_text("Reconnect to log in at mock again")
        # Retrying: how often it failed, and when the next attempt comes.
        expect(page.locator("#note-calendar-sync-for-the-production-reporting-team")).to_contain_text(
            "Refreshing failed 3 times in a row; the next attempt is at 2026-12-03 12:05:00 UTC."
        )
        expect(page.get_by_role("button", name="Refresh sheets now")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for card in page.locator("section.card").all():
            box = card.bounding_box()
            buttons = card.locator(".row-actions .button").all()
            assert buttons
            for button in buttons:
                inner = button.bounding_box()
                assert box and inner, button
                assert box["x"] <= inner["x"] and inner["x"] + inner["width"] <= box["x"] + box["width"], (
                    width, button.text_content(), inner, box,
                )  # fmt: skip
        shoot(page, tmp_path, f"rows-{width}")
        context.close()


def test_refresh_of_a_refused_secret_says_to_reconnect(page: Page, live, tokens, api, oauth, root):
    seed_troubled(root, Store(live.settings, tokens.admin), oauth)
    log_in(page, live, tokens.admin)
    # A page loaded before the provider refused it still offers Refresh now: its answer leads to Reconnect.
    csrf = page.locator("input[name=csrf_token]").first.input_value()
    answer = page.request.post(f"{live.url}/settings/secrets/drive/refresh", form={"csrf_token": csrf})
    assert answer.ok
    assert "drive was not refreshed: the provider refused it for good. Reconnect to log in again." in answer.text()


def styled(page: Page) -> None:
    """The page wears the settings UI's stylesheet (its background and card), which its CSP allowed."""
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(245, 247, 250)"
    expect(page.locator("section.card")).to_be_visible()


def test_the_login_pages_say_what_happened_and_what_next(page: Page, live, api, oauth, tmp_path, monkeypatch):
    refused: list[str] = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )
    back = page.get_by_role("link", name="Go to settings")

    page.goto(f"{live.url}/login/{'0' * 32}")
    expect(page.get_by_role("heading", name="Login link not valid")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text(
        "This login link is unknown or has expired. Start the connection again."
    )
    expect(page.get_by_text("start the connection again there (Reconnect")).to_be_visible()
    styled(page)
    shoot(page, tmp_path, "login-refused")

    # The callback answers before the save ends: the "being saved" page, which reloads itself until
    # the secret is stored.
    monkeypatch.setattr(logins, "LOGIN_WAIT", 0.0)
    page.goto(start_link(api))  # the provider's login, and back to the callback
    expect(page.get_by_role("heading", name="Saving sheets…")).to_be_visible()
    expect(page.get_by_text("You can close this window: the saving goes on without it.")).to_be_visible()
    styled(page)
    shoot(page, tmp_path, "login-saving")
    expect(page.get_by_role("heading", name="Connected")).to_be_visible(timeout=15_000)
    expect(page.get_by_role("status")).to_have_text("sheets is connected to mock.")
    expect(page.get_by_text("Apps of each environment read its access token with the command below.")).to_be_visible()
    expect(page.get_by_text("bao kv get -field=access_token secret/oauth/production/sheets")).to_be_visible()
    expect(page.locator(".reading")).to_contain_text("reader policy of that environment (oauth-reader-<environment>)")
    expect(page.locator(".reading")).to_contain_text("vault and bao take the same arguments")
    styled(page)
    shoot(page, tmp_path, "login-connected")

    back.click()  # no UI session in this browser: the way in
    expect(page).to_have_url(f"{live.url}/settings/login")
    assert refused == []


def test_the_commands_name_vault_where_bao_is_not_installed(settings, monkeypatch):
    monkeypatch.setattr(web, "find_bao", lambda: None)
    command = web.runtime(web.create_app(settings)).read_command("production", "sheets")
    assert command == "vault kv get -field=access_token secret/oauth/production/sheets"


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


def test_secrets_come_in_pages_with_counts_and_filters(chromium, page: Page, live, tokens, store, tmp_path):
    names = listed_grants(store, 2500)  # every fourth retrying
    log_in(page, live, tokens.admin)
    rows = page.locator("#secrets tbody th[scope=row]")
    expect(rows).to_have_count(50)
    expect(page.get_by_role("link", name="625 retrying")).to_be_visible()
    expect(page.get_by_role("link", name="1875 active")).to_be_visible()
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_text(names[50])
    page.get_by_role("link", name="First page").click()
    expect(rows.first).to_have_text(names[0])
    page.get_by_label("Name contains").fill("s-24")  # s-2400 to s-2499: two pages
    page.get_by_role("button", name="Filter").click()
    expect(rows.first).to_have_text("s-2400")
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(50)
    expect(rows.last).to_have_text("s-2499")
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="Clear").click()

    page.get_by_label("Status", exact=True).select_option("retrying")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(50)
    expect(rows.nth(1)).to_have_text("s-0004")
    page.get_by_label("Name contains").fill("s-011")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(2)  # retrying and named s-011x: s-0112 and s-0116
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Name contains").fill("no-such")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No secrets match.")).to_be_visible()
    shoot(page, tmp_path, "paged")

    phone = chromium.new_context(viewport={"width": 390, "height": 844}).new_page()
    log_in(phone, live, tokens.admin)
    expect(phone.get_by_role("link", name="Next page")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(phone, tmp_path, "paged-phone")
    phone.context.close()
