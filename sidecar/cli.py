"""`oauth-sidecar`: dev, serve, and the operator's commands."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
import requests

from . import egress, grants, index, inputs, oauth, presets, processes
from .config import Settings
from .errors import ConfigError, Exists, Invalid, SidecarError, VaultUnavailable
from .inputs import MAX_PAGE, check_name, key_values
from .models import GrantType, Status, TokenAuthMethod, parse_rfc3339
from .oauth import DeviceAuthorization
from .policies import render as render_policies
from .policies import render_reader
from .store import Store


class Group(click.Group):
    """Turns the project's errors into one-line messages and exit codes, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            fail(f"configuration: {exc}", 2)
        except VaultUnavailable as exc:
            fail(exc.message if ctx.invoked_subcommand == "dev" else f"{exc.message}; {_vault_tried()}", 1)
        except SidecarError as exc:
            fail(exc.message, 1)


def _vault_tried() -> str:
    """Where the command looked for Vault, and the variable that says where (dev picks its own)."""
    for variable in ("VAULT_ADDR", "BAO_ADDR"):
        if os.environ.get(variable):
            where = urlsplit(os.environ[variable].strip())
            shown = where._replace(netloc=where.netloc.rpartition("@")[2]).geturl()  # never a user:password@
            return f"tried {shown} ({variable})"
    return f"tried {Settings.vault_addr}, the default: set VAULT_ADDR to your Vault's address"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vault-oauth-sidecar", prog_name="oauth-sidecar")
def main() -> None:
    """Keeps OAuth 2.0 tokens fresh inside Vault or OpenBao."""


@main.command()
@click.option("--verbose", is_flag=True, help="Log every HTTP request too.")
@click.option("--no-demo", "no_demo", is_flag=True, help="Do not run the built-in demo OAuth provider.")
def dev(verbose: bool, no_demo: bool) -> None:
    """Run everything locally: a throwaway OpenBao dev server, the sidecar on SIDECAR_BIND and a demo
    OAuth provider (registered as `demo`) to connect a first secret to."""
    processes.dev(verbose=verbose, demo=not no_demo)


@main.command()
def serve() -> None:
    """Production: gunicorn web workers plus exactly one refresher process, supervised together.

    SIGTERM is passed to both; the refresher finishes the Vault writes of refreshes in flight.
    If either process dies, the other is stopped and serve exits non-zero, so the orchestrator
    restarts the replica whole.
    """
    processes.serve()


@main.command()
@click.option("--once", is_flag=True, help="One pass over every grant, then exit (non-zero if a refresh failed).")
def refresh(once: bool) -> None:
    """Run the refresher: one loop, every SIDECAR_REFRESH_INTERVAL seconds, until SIGTERM."""
    processes.refresh(once)


# -- providers -------------------------------------------------------------------------------


def operator_store() -> Store:
    settings = Settings.from_env()
    store = Store(settings, settings.vault_token)
    store.check_token()
    return store


def provider_client(settings: Settings) -> oauth.Client:
    """The CLI calls providers itself to connect without a browser, and to revoke."""
    return oauth.Client(egress.Egress(settings.egress_allow))


# Saving a provider and starting a browser login are done by the running sidecar: only its own
# token may approve where a provider sends tokens, or record a login in flight.
SIDECAR_OPTION = click.option("--sidecar", help="The running sidecar's URL (default: SIDECAR_PUBLIC_URL).")


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


@main.group()
def providers() -> None:
    """Manage OAuth providers (with your own VAULT_TOKEN)."""


@providers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers_list(as_json: bool) -> None:
    """List providers (never their client secrets)."""
    found = [p.public() for p in operator_store().list_providers()]
    if as_json:
        print_json({"providers": found})
        return
    if not found:
        click.echo("no providers")
        return
    click.echo(f"{'NAME':<24} {'CLIENT ID':<32} SCOPES")
    for p in found:
        click.echo(f"{p['name']:<24} {p['client_id']:<32} {' '.join(p['scopes'])}")


@providers.command("get")
@click.argument("name")
def providers_get(name: str) -> None:
    """Show one provider as JSON (without its client secret)."""
    print_json(operator_store().get_provider(name).public())


@providers.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def providers_presets(as_json: bool) -> None:
    """List the well-known providers that `put --preset` fills in."""
    found = presets.catalogue()
    if as_json:
        print_json({"presets": found})
        return
    click.echo(f"{'NAME':<12} {'TITLE':<22} PARAMETERS")
    for p in found:
        params = " ".join(f"{k}={v['default'] or '(required)'}" for k, v in p["params"].items())
        click.echo(f"{p['name']:<12} {p['title']:<22} {params}")


@providers.command("put")
@click.argument("name")
@click.option("--preset", help="A well-known provider (see `providers presets`); other options override it.")
@click.option("--preset-param", "preset_params", multiple=True, metavar="KEY=VALUE", help="A preset's parameter.")
@click.option("--issuer", help="The issuer URL: without --authorization-url/--token-url, its metadata fills them in.")
@click.option("--client-id", required=True, help="The client ID the provider gave this app.")
@click.option(
    "--client-secret-file",
    type=click.File("r"),
    help="File holding the client secret ('-' for standard input). Otherwise $OAUTH_CLIENT_SECRET, "
    "or a hidden prompt. Never an argument: arguments show in `ps` and shell history.",
)
@click.option(
    "--previous-client-secret-file",
    type=click.File("r"),
    help="During a rotation: the old client secret, tried when the provider refuses the new one.",
)
@click.option("--private-key-file", type=click.File("r"), help="PEM key for private_key_jwt (RSA or EC P-256).")
@click.option("--key-id", help="The key's kid, as registered at the provider.")
@click.option("--authorization-url", help="Where a person logs in (https; http only on loopback).")
@click.option("--token-url", help="Where codes and refresh tokens are redeemed (https; http only on loopback).")
@click.option("--scopes", help="Scopes separated by spaces, commas or newlines.")
@click.option("--scopes-file", type=click.File("r"), help="File of scopes, one a line ('-' for standard input).")
@click.option("--revocation-url", help="RFC 7009 endpoint; deleting a secret revokes its token there first.")
@click.option("--device-authorization-url", help="RFC 8628 endpoint, for `secrets connect --device`.")
@click.option(
    "--token-auth-method",
    type=click.Choice([m.value for m in TokenAuthMethod]),
    help=f"Default: {TokenAuthMethod.CLIENT_SECRET_BASIC}.",
)
@click.option("--pkce/--no-pkce", default=None, help="Use PKCE (S256) on logins (default: on).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Extra authorization parameter.")
@click.option("--refresh-margin", type=int, help="Seconds before expiry to refresh (default: SIDECAR_REFRESH_MARGIN).")
@click.option("--max-token-lifetime", type=int, help="Seconds; refresh tokens without expiry within this.")
@click.option(
    "--iss-parameter-supported/--no-iss-parameter-supported",
    default=None,
    help="The provider always sends iss with its answers; refuse answers without it.",
)
@click.option("--replace", is_flag=True, help="Replace the provider if it exists (without it, an existing name fails).")
@SIDECAR_OPTION
def providers_put(name: str, **opts: Any) -> None:
    """Create a provider (or with --replace, replace one): from a preset, from its issuer's metadata,
    or from its URLs. Prints the redirect URI to register at the provider."""
    if opts["scopes"] is not None and opts["scopes_file"] is not None:
        raise Invalid("give the scopes with at most one of --scopes or --scopes-file")
    scopes = opts["scopes_file"].read() if opts["scopes_file"] else opts["scopes"]
    jwt_auth = opts["token_auth_method"] == TokenAuthMethod.PRIVATE_KEY_JWT
    body = {
        "preset": opts["preset"],
        "preset_params": key_values(opts["preset_params"], "--preset-param"),
        "issuer": opts["issuer"],
        "client_id": opts["client_id"],
        "client_secret": _read(opts["client_secret_file"]) if jwt_auth else _client_secret(opts["client_secret_file"]),
        "previous_client_secret": _read(opts["previous_client_secret_file"]),
        "private_key": _read(opts["private_key_file"]),
        "key_id": opts["key_id"],
        "authorization_url": opts["authorization_url"],
        "token_url": opts["token_url"],
        "scopes": scopes,
        "revocation_url": opts["revocation_url"],
        "device_authorization_url": opts["device_authorization_url"],
        "token_auth_method": opts["token_auth_method"],
        "pkce": opts["pkce"],
        "extra_authorize_params": key_values(opts["params"], "--param"),
        "refresh_margin": opts["refresh_margin"],
        "max_token_lifetime": opts["max_token_lifetime"],
        "authorization_response_iss_parameter_supported": opts["iss_parameter_supported"],
    }
    # Saved by the running sidecar, which alone may approve where a provider sends tokens.
    settings = Settings.from_env()
    filled = {k: v for k, v in body.items() if v not in (None, "", {})}
    sidecar, checked = opts["sidecar"] or settings.public_url, check_name(name, "provider")
    if opts["replace"]:
        status, shown = _sidecar_call(sidecar, settings, "PUT", f"/v1/providers/{checked}", filled)
    else:
        status, shown = _sidecar_call(sidecar, settings, "POST", "/v1/providers", {"name": checked, **filled})
    click.echo(f"{'created' if status == 201 else 'replaced'} provider {name}", err=True)
    click.echo(f"Register this redirect URI at the provider: {shown.get('redirect_uri')}", err=True)
    print_json(shown)


def _read(source: Any) -> str | None:
    return source.read().strip() if source is not None else None


def _client_secret(source: Any) -> str:
    if source is not None:
        return source.read().strip()
    if os.environ.get("OAUTH_CLIENT_SECRET"):
        return os.environ["OAUTH_CLIENT_SECRET"]
    if sys.stdin.isatty():
        return click.prompt("Client secret", hide_input=True)
    raise Invalid("give the client secret with --client-secret-file or $OAUTH_CLIENT_SECRET")


@providers.command("delete")
@click.argument("name")
@SIDECAR_OPTION
def providers_delete(name: str, sidecar: str | None) -> None:
    """Delete a provider and every stored version of its client secret (through the running sidecar)."""
    settings = Settings.from_env()
    _sidecar_call(sidecar or settings.public_url, settings, "DELETE", f"/v1/providers/{check_name(name, 'provider')}")
    click.echo(f"deleted provider {name}", err=True)


# -- secrets ---------------------------------------------------------------------------------


@main.group("secrets")
def secrets_group() -> None:
    """Connect, inspect and delete OAuth secrets (with your own VAULT_TOKEN)."""


@secrets_group.command("connect")
@click.argument("name")
@click.option("--provider", "provider_name", required=True, help="A registered provider.")
@click.option("--env", "environments", multiple=True, help="An environment (repeatable; default: all).")
@click.option("--scopes", help="Scopes to ask for instead of the provider's, separated by spaces, commas or newlines.")
@click.option("--open", "open_browser", is_flag=True, help="Open the login link in a browser.")
@click.option("--device", is_flag=True, help="No browser here: show a code to enter on another device (RFC 8628).")
@click.option("--client-credentials", is_flag=True, help="A token for the client itself: no user, no login.")
@click.option(
    "--refresh-token-file",
    type=click.File("r"),
    help="Import a refresh token obtained elsewhere ('-' for standard input); it is redeemed at once.",
)
@click.option("--replace", is_flag=True, help="Replace the secret if it exists (its old tokens are not revoked).")
@SIDECAR_OPTION
@click.option("--poll", default=1.0, show_default=True, help="Seconds between checks.", hidden=True)
def secrets_connect(
    name: str, provider_name: str, environments: tuple[str, ...], scopes: str | None, **opts: Any
) -> None:
    """Get tokens for a secret: by a browser login (the default), a device code, the client's own
    credentials, or a refresh token you already have."""
    modes = [m for m in ("device", "client_credentials", "refresh_token_file") if opts[m]]
    if len(modes) > 1:
        raise Invalid("choose at most one of --device, --client-credentials and --refresh-token-file")
    settings, store, envs = Settings.from_env(), operator_store(), list(environments) or None
    client = provider_client(settings)
    replace = opts["replace"] or None
    if opts["device"]:
        grant, replaced = grants.device_login(
            store, settings, client, name, provider_name, envs, scopes, _show_device_code, store, opts["replace"]
        )
        click.echo("login completed" + (f"; this {replaced}" if replaced else ""), err=True)
        print_json(grant.public())
        return
    body = {"name": name, "provider": provider_name, "environments": envs, "scopes": scopes, "replace": replace}
    if opts["client_credentials"] or opts["refresh_token_file"]:
        if opts["client_credentials"]:
            body["grant_type"] = GrantType.CLIENT_CREDENTIALS
        else:
            body.update(grant_type=GrantType.REFRESH_TOKEN, refresh_token=opts["refresh_token_file"].read().strip())
        secret = inputs.secret({k: v for k, v in body.items() if v is not None}, settings.environments)
        grant, replaced = grants.create(store, settings, client, secret, store)
        if replaced:
            click.echo(f"this {replaced}", err=True)
        print_json(grant.public())
        return
    # A browser login is started by the sidecar itself: only its own token may write logins in
    # flight, and its /callback finishes them.
    sidecar = opts["sidecar"] or settings.public_url
    _, started = _sidecar_call(
        sidecar, settings, "POST", "/v1/secrets", {k: v for k, v in body.items() if v is not None}
    )
    if started.get("replaces"):
        click.echo(f"this {started['replaces']}", err=True)
    url = started["authorization_url"]
    click.echo(url)
    if opts["open_browser"]:
        click.launch(url)
    expires_at = parse_rfc3339(started["expires_at"]) or datetime.now(UTC)
    outcome = _wait_for_login(sidecar, settings, name, url.rsplit("/", 1)[-1], expires_at, opts["poll"])
    if outcome != "connected":
        fail(outcome)
    print_json(store.get_grant(name).public())


def _show_device_code(authorization: DeviceAuthorization) -> None:
    left = int((authorization.expires_at - datetime.now(UTC)).total_seconds())
    click.echo(
        f"On any device, open {authorization.verification_uri} and enter the code {authorization.user_code}\n"
        + (f"(or open {authorization.verification_uri_complete})\n" if authorization.verification_uri_complete else "")
        + f"Waiting for approval; the code expires in {left // 60}:{left % 60:02d}.",
        err=True,
    )


def _sidecar_call(
    sidecar: str, settings: Settings, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """A call to the running sidecar's API with your own VAULT_TOKEN: (status, JSON answer); its
    errors become CLI errors (a name that exists names --replace)."""
    try:
        resp = requests.request(
            method, f"{sidecar}{path}", json=body, headers={"X-Vault-Token": settings.vault_token or ""}, timeout=60
        )
    except requests.RequestException:
        fail(f"the sidecar at {sidecar} could not be reached; start it, or name it with --sidecar")
    if resp.status_code == 204:
        return 204, {}
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        fail(f"the sidecar at {sidecar} answered HTTP {resp.status_code} without a JSON body")
    if resp.status_code >= 400:
        error = answer.get("error") or {}
        message = str(error.get("message") or f"HTTP {resp.status_code}")
        fail(f"{message} (or add --replace)" if error.get("code") == Exists.code else message)
    return resp.status_code, answer


def _wait_for_login(sidecar: str, settings: Settings, name: str, lid: str, expires_at: datetime, poll: float) -> str:
    """Poll the sidecar until the callback stored this login's tokens; show the time left meanwhile."""
    interactive, reported = sys.stderr.isatty(), -1
    while (left := int((expires_at - datetime.now(UTC)).total_seconds())) > 0:
        state = _sidecar_call(sidecar, settings, "GET", f"/v1/secrets/{name}/logins/{lid}")[1]["state"]
        if state == "connected":
            click.echo("\nlogin completed" if interactive else "login completed", err=True)
            return "connected"
        if state != "waiting":
            return "the login ended without tokens; the browser page says why"
        if interactive:
            click.echo(
                f"\rwaiting for the login in the browser… {left // 60}:{left % 60:02d} left ", nl=False, err=True
            )
        elif reported < 0 or reported - left >= 60:  # a line a minute when stderr is a log
            click.echo(f"waiting for the login in the browser ({left}s left)", err=True)
            reported = left
        time.sleep(poll)
    return "the login link expired before the login completed"


@secrets_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in Status]), help="Only secrets in this status.")
@click.option("--provider", help="Only secrets of this provider.")
@click.option("--env", "environment", help="Only secrets with a view in this environment.")
@click.option("--search", "q", help="Only secrets whose name contains this text.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def secrets_list(as_json: bool, **filters: str | None) -> None:
    """List connected secrets with their status (never token values), read a page at a time."""
    store, settings = operator_store(), Settings.from_env()
    query = inputs.secret_query({"limit": str(MAX_PAGE), **{k: v for k, v in filters.items() if v is not None}})
    mirror = index.Mirror()
    page = grants.page(store, settings, query, mirror)
    found, counts = page.secrets, page.counts or {}
    while page.next is not None:
        page = grants.page(store, settings, query.model_copy(update={"cursor": page.next}), mirror)
        found += page.secrets
    if as_json:
        print_json({"secrets": found, "counts": counts})
        return
    if not found:
        click.echo("no secrets")
        return
    click.echo(f"{'NAME':<24} {'PROVIDER':<16} {'STATUS':<26} {'ENVIRONMENTS':<24} EXPIRES")
    for s in found:
        envs = ",".join(s["environments"])
        click.echo(f"{s['name']:<24} {s['provider']:<16} {s['status']:<26} {envs:<24} {s['expires_at'] or '-'}")
    click.echo(", ".join(f"{n} {status}" for status, n in sorted(counts.items())), err=True)


@secrets_group.command("get")
@click.argument("name")
def secrets_get(name: str) -> None:
    """Show one secret's status as JSON (never token values)."""
    print_json(operator_store().get_grant(name).public())


@secrets_group.command("refresh")
@click.argument("name")
@SIDECAR_OPTION
def secrets_refresh(name: str, sidecar: str | None) -> None:
    """Refresh one secret now, through the running sidecar (the same claim as its refresher)."""
    settings, path = Settings.from_env(), f"/v1/secrets/{check_name(name, 'secret')}/refresh"
    _, shown = _sidecar_call(sidecar or settings.public_url, settings, "POST", path)
    click.echo(f"refreshed secret {name}; it expires at {shown.get('expires_at') or '(no expiry)'}", err=True)
    print_json(shown)


@secrets_group.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even if the provider cannot revoke the token.")
def secrets_delete(name: str, force: bool) -> None:
    """Revoke the token at the provider, then delete the secret from every environment."""
    store, settings = operator_store(), Settings.from_env()
    revoked = grants.delete(store, settings, provider_client(settings), name, store, force=force)
    click.echo(f"deleted secret {name}" + (" (revoked at the provider)" if revoked else ""), err=True)


# -- policies --------------------------------------------------------------------------------


@main.group("policies")
def policies_group() -> None:
    """Least-privilege Vault policies for the configured mount, prefixes and environments."""


def _one_secret(func: Any) -> Any:
    """`[reader --secret NAME --environment ENV]`: every policy, or the reader policy of one secret."""
    func = click.option("--environment", metavar="ENV", help="With `reader`: the secret's environment.")(func)
    func = click.option("--secret", metavar="NAME", help="With `reader`: the one secret the policy may read.")(func)
    return click.argument("kind", required=False, type=click.Choice(["reader"]))(func)


def _selected_policies(kind: str | None, secret: str | None, environment: str | None) -> dict[str, str]:
    settings = Settings.from_env()
    if kind is None:
        if secret is not None or environment is not None:
            raise click.UsageError("--secret and --environment go with `reader --secret NAME --environment ENV`")
        return render_policies(settings)
    if secret is None or environment is None:
        raise click.UsageError("reader needs --secret NAME and --environment ENV")
    name, hcl = render_reader(settings, secret, environment)
    return {name: hcl}


@policies_group.command("render")
@_one_secret
@click.option("--dir", "directory", type=click.Path(file_okay=False), help="Write NAME.hcl files here instead.")
def policies_render(kind: str | None, secret: str | None, environment: str | None, directory: str | None) -> None:
    """Print the policies (or write them as files), rendered from the SIDECAR_* settings.

    `reader --secret NAME --environment ENV` prints only the policy oauth-reader-ENV-NAME, which reads that
    one secret in that one environment."""
    rendered = _selected_policies(kind, secret, environment)
    if directory is None:
        if kind is not None:
            click.echo("".join(rendered.values()), nl=False)
            return
        for name, hcl in rendered.items():
            click.echo(f"# ---- {name}\n{hcl}")
        return
    os.makedirs(directory, exist_ok=True)
    for name, hcl in rendered.items():
        with open(os.path.join(directory, f"{name}.hcl"), "w") as out:
            out.write(hcl)
        click.echo(os.path.join(directory, f"{name}.hcl"), err=True)


@policies_group.command("write")
@_one_secret
def policies_write(kind: str | None, secret: str | None, environment: str | None) -> None:
    """Load the policies into Vault with your own VAULT_TOKEN (it needs create/update on sys/policy/oauth-*).

    `reader --secret NAME --environment ENV` loads only the policy oauth-reader-ENV-NAME."""
    rendered = _selected_policies(kind, secret, environment)
    store = operator_store()
    for name, hcl in rendered.items():
        store.write_policy(name, hcl)
        click.echo(f"wrote policy {name}", err=True)
