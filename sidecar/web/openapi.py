"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from ..models import TOKEN_AUTH_METHODS, GrantType, Status
from ..presets import PRESETS

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
URL = {"type": "string", "format": "uri", "maxLength": 2048}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _status(value: str) -> dict[str, Any]:
    return {"type": "object", "required": ["status"], "properties": {"status": {"const": value}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meanings = {
        400: "invalid input",
        401: "no valid Vault token",
        403: "the token's Vault policies do not allow it",
        404: "not found",
        409: "in use, or changed meanwhile",
        413: "body over 64 KiB",
        502: "the provider refused or failed",
        503: "Vault unavailable",
    }
    return {str(s): _json(_ref("Error"), meanings[s]) for s in statuses}


def _name_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": NAME}


SCOPES: dict[str, Any] = {
    "description": "A list, or one string split on newlines, commas or spaces.",
    "oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
}
OPTIONAL_URL: dict[str, Any] = {**URL, "type": ["string", "null"]}
OPTIONAL_TEXT: dict[str, Any] = {"type": ["string", "null"], "maxLength": 1024}
# Write-only credentials: stored in Vault, never answered; the public view says only `<field>_set`.
CREDENTIALS = ("client_secret", "previous_client_secret", "private_key")
PROVIDER_FIELDS: dict[str, Any] = {
    "name": NAME,
    "preset": {
        "type": ["string", "null"],
        "enum": [*PRESETS, "", None],
        "description": "A well-known provider (GET /v1/presets) that fills in the URLs, default scopes and "
        "quirks; every field given explicitly wins, and extra_authorize_params are merged.",
    },
    "preset_params": {
        "type": ["object", "null"],
        "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$"},
        "description": "The preset's parameters (such as tenant, domain, host or authorization_server).",
    },
    "client_id": {"type": "string", "minLength": 1, "maxLength": 1024},
    "client_secret": {
        "type": "string",
        "maxLength": 1024,
        "writeOnly": True,
        "description": "Required on every PUT unless token_auth_method is private_key_jwt.",
    },
    "previous_client_secret": {
        "type": ["string", "null"],
        "maxLength": 1024,
        "writeOnly": True,
        "description": "During a rotation: sent once more when the provider refuses the client secret "
        "as invalid_client (401, or 400 with invalid_client). Not used with private_key_jwt.",
    },
    "authorization_url": {
        **URL,
        "description": "Required unless a preset or the issuer's metadata (discovery) fills it in.",
    },
    "token_url": {**URL, "description": "Required unless a preset or the issuer's metadata (discovery) fills it in."},
    "scopes": {**SCOPES, "description": f"{SCOPES['description']} Required unless a preset gives them."},
    "scope_separator": {
        "enum": [" ", ","],
        "default": " ",
        "description": "Joins the scopes in requests to the provider (Slack wants commas).",
    },
    "revocation_url": OPTIONAL_URL,
    "device_authorization_url": {**OPTIONAL_URL, "description": "RFC 8628 endpoint, for the device login."},
    "token_auth_method": {
        "enum": list(TOKEN_AUTH_METHODS),
        "default": TOKEN_AUTH_METHODS[0],
        "description": "private_key_jwt (RFC 7523) needs private_key and makes client_secret optional.",
    },
    "private_key": {
        "type": ["string", "null"],
        "maxLength": 16384,
        "writeOnly": True,
        "description": "For private_key_jwt: an unencrypted PEM private key, RSA of 2048 bits or more (RS256) or "
        "EC P-256 (ES256). Stored in Vault; the public view shows public_jwk instead.",
    },
    "key_id": {**OPTIONAL_TEXT, "description": "The kid header of private_key_jwt assertions."},
    "pkce": {
        "type": "boolean",
        "default": True,
        "description": "PKCE S256 on logins. Left out, discovery turns it off when the metadata lists "
        "code_challenge_methods_supported without S256.",
    },
    "extra_authorize_params": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    "refresh_margin": {"type": ["integer", "null"], "minimum": 0, "maximum": 86400},
    "max_token_lifetime": {"type": ["integer", "null"], "minimum": 60, "maximum": 315360000},
    "issuer": {
        **OPTIONAL_URL,
        "description": "The issuer URL. Checked against the iss of login answers (RFC 9207). Without "
        "authorization_url or token_url, its RFC 8414 or OpenID Connect metadata fills them in; a document "
        "that names another issuer, or none found, is a 400.",
    },
    "authorization_response_iss_parameter_supported": {
        "type": "boolean",
        "default": False,
        "description": "The provider always sends iss; true needs issuer.",
    },
    "code_challenge_methods_supported": {
        "type": ["array", "null"],
        "items": {"type": "string", "maxLength": 63},
        "description": "Set by discovery.",
    },
    "discovered_at": {
        **OPTIONAL_TEXT,
        "description": "Set by discovery: the provider's endpoints are then re-read from its issuer's "
        "metadata, in memory, at most once per SIDECAR_DISCOVERY_INTERVAL in each process.",
    },
}
PROVIDER_INPUT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Filled in from its preset, then from its issuer's metadata, then validated. Besides "
    "client_id: client_secret unless private_key_jwt (then private_key); authorization_url and token_url "
    "unless a preset or an issuer fills them in; scopes unless a preset gives them.",
    "required": ["client_id"],
    "properties": PROVIDER_FIELDS,
}
PUBLIC_JWK: dict[str, Any] = {
    "type": "object",
    "description": "The public key to register at the provider for private_key_jwt (a JWK).",
    "required": ["kty", "alg", "use"],
    "properties": {
        "kty": {"enum": ["RSA", "EC"]},
        "alg": {"enum": ["RS256", "ES256"]},
        "use": {"const": "sig"},
        "kid": {"type": "string"},
    },
}
# device_code grants are made by the CLI only, so the API takes the others.
API_GRANT_TYPES = [g.value for g in GrantType if g != GrantType.DEVICE_CODE]
SECRET_INPUT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "provider"],
    "properties": {
        "name": NAME,
        "provider": NAME,
        "environments": {"type": "array", "items": NAME, "minItems": 1},
        "scopes": SCOPES,
        "grant_type": {
            "enum": API_GRANT_TYPES,
            "default": "authorization_code",
            "description": "authorization_code answers a login link for a person to open; client_credentials "
            "gets a token for the client itself; refresh_token imports a refresh token obtained elsewhere. "
            "The last two are stored at once and answered with the secret's status.",
        },
        "refresh_token": {
            "type": "string",
            "minLength": 1,
            "maxLength": 8192,
            "writeOnly": True,
            "description": "Required with grant_type refresh_token, refused otherwise. Redeemed at once to prove "
            "it; if the provider refuses it, the answer is 502 token_refused and nothing is written.",
        },
    },
    "if": {"properties": {"grant_type": {"const": "refresh_token"}}, "required": ["grant_type"]},
    "then": {"required": ["refresh_token"]},
    "else": {"not": {"required": ["refresh_token"]}},
}
LOGIN_LINK: dict[str, Any] = {
    "type": "object",
    "description": "grant_type authorization_code: the sidecar's login link, valid ten minutes.",
    "required": ["name", "authorization_url", "expires_at"],
    "properties": {
        "name": NAME,
        "authorization_url": URL,
        "expires_at": {"type": "string", "format": "date-time"},
    },
}
PRESET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"enum": list(PRESETS)},
        "title": {"type": "string"},
        "docs": {"type": "string", "format": "uri"},
        "params": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"required": {"type": "boolean"}, "default": {"type": ["string", "null"]}},
            },
        },
        "scopes": {"type": "array", "items": {"type": "string"}},
        "notes": {"type": "string"},
    },
}


def document() -> dict[str, Any]:
    secret_name, provider_name = _name_param("secret"), _name_param("provider")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vault-oauth-sidecar",
            "version": "0.1.0",
            "description": "Keeps OAuth 2.0 tokens fresh in Vault. Every call acts with the caller's own Vault token.",
        },
        "security": [{"VaultToken": []}, {"Bearer": []}],
        "paths": {
            "/v1/providers": {
                "get": {
                    "summary": "List providers (never their client secrets)",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"providers": {"type": "array", "items": _ref("Provider")}},
                            },
                            "the providers",
                        ),
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/v1/providers/{provider}": {
                "parameters": [provider_name],
                "get": {
                    "summary": "Read a provider",
                    "responses": {"200": _json(_ref("Provider"), "the provider"), **_errors(400, 401, 403, 404, 503)},
                },
                "put": {
                    "summary": "Create or replace a provider: from a preset, from its issuer's metadata, or from "
                    "its URLs",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": PROVIDER_INPUT}}},
                    "responses": {
                        "200": _json(_ref("Provider"), "replaced"),
                        "201": _json(_ref("Provider"), "created"),
                        **_errors(400, 401, 403, 413, 503),
                    },
                },
                "delete": {
                    "summary": "Delete a provider and every stored version",
                    "responses": {"204": {"description": "deleted"}, **_errors(400, 401, 403, 404, 409, 503)},
                },
            },
            "/v1/presets": {
                "get": {
                    "summary": "The well-known providers a PUT can start from",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"presets": {"type": "array", "items": _ref("Preset")}}},
                            "the presets",
                        ),
                        **_errors(401, 503),
                    },
                }
            },
            "/v1/secrets": {
                "get": {
                    "summary": "List secrets with their status (never token values)",
                    "responses": {
                        "200": _json(
                            {"type": "object", "properties": {"secrets": {"type": "array", "items": _ref("Secret")}}},
                            "the secrets",
                        ),
                        **_errors(401, 403, 503),
                    },
                },
                "post": {
                    "summary": "Connect a secret: start a browser login, or get a token at once with the client's "
                    "credentials or an imported refresh token",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SecretInput")}},
                    },
                    "responses": {
                        "201": _json(
                            {"oneOf": [_ref("LoginLink"), _ref("Secret")]},
                            "authorization_code: the login link; client_credentials and refresh_token: the stored "
                            "secret's status",
                        ),
                        **_errors(400, 401, 403, 413, 503),
                        "502": _json(
                            _ref("Error"),
                            "token_refused: the provider issued no token (client_credentials, refresh_token); "
                            "nothing was written",
                        ),
                    },
                },
            },
            "/v1/secrets/{secret}": {
                "parameters": [secret_name],
                "get": {
                    "summary": "A secret's status (never token values)",
                    "responses": {"200": _json(_ref("Secret"), "the status"), **_errors(400, 401, 403, 404, 503)},
                },
                "delete": {
                    "summary": "Revoke at the provider, then delete the secret everywhere",
                    "parameters": [{"name": "force", "in": "query", "schema": {"type": "boolean"}}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"name": NAME, "deleted": {}, "revoked": {"type": "boolean"}},
                            },
                            "deleted",
                        ),
                        **_errors(400, 401, 403, 404, 502, 503),
                    },
                },
            },
            "/v1/secrets/{secret}/token": {
                "parameters": [secret_name],
                "get": {
                    "summary": "The current access token of one environment",
                    "parameters": [{"name": "environment", "in": "query", "schema": NAME}],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    k: {"type": "string"}
                                    for k in (
                                        "name",
                                        "environment",
                                        "access_token",
                                        "token_type",
                                        "expires_at",
                                        "scope",
                                    )
                                },
                            },
                            "the token",
                        ),
                        **_errors(400, 401, 403, 404, 503),
                    },
                },
            },
            "/v1/secrets/{secret}/refresh": {
                "parameters": [secret_name],
                "post": {
                    "summary": "Refresh now, through the same claim as the refresher",
                    "responses": {
                        "200": _json(_ref("Secret"), "refreshed"),
                        **_errors(400, 401, 403, 404, 409, 502, 503),
                    },
                },
            },
            "/v1/secrets/{secret}/logins/{login}": {
                "parameters": [secret_name, {"name": "login", "in": "path", "required": True, "schema": NAME}],
                "get": {
                    "summary": "How a browser login started by POST /v1/secrets stands (needs read on the secret)",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["state"],
                                "properties": {"state": {"enum": ["waiting", "connected", "ended"]}},
                            },
                            "waiting, connected, or ended without tokens",
                        ),
                        **_errors(400, 401, 403, 503),
                    },
                },
            },
            "/v1/policies/reader": {
                "get": {
                    "summary": "The Vault policy oauth-reader-<environment>-<secret>: read on that one secret's view "
                    "in that one environment, nothing else. Rendered only; load it with `vault policy write` or "
                    "`oauth-sidecar policies write reader`",
                    "parameters": [
                        {"name": "secret", "in": "query", "required": True, "schema": NAME},
                        {"name": "environment", "in": "query", "required": True, "schema": NAME},
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["name", "policy"],
                                "properties": {
                                    "name": NAME,
                                    "policy": {"type": "string", "description": "the policy's HCL"},
                                },
                            },
                            "the policy",
                        ),
                        **_errors(400, 401, 503),
                    },
                }
            },
            "/healthz": {"get": {"security": [], "responses": {"200": _json(_status("ok"), "alive")}}},
            "/readyz": {
                "get": {"security": [], "responses": {"200": _json(_status("ready"), "ready"), **_errors(503)}},
            },
        },
        "components": {
            "securitySchemes": {
                "VaultToken": {"type": "apiKey", "in": "header", "name": "X-Vault-Token"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        }
                    },
                },
                "Provider": {
                    "type": "object",
                    "properties": {
                        **{k: v for k, v in PROVIDER_FIELDS.items() if k not in CREDENTIALS},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        **{f"{k}_set": {"type": "boolean"} for k in CREDENTIALS},
                        "public_jwk": PUBLIC_JWK,
                    },
                },
                "Preset": PRESET,
                "SecretInput": SECRET_INPUT,
                "LoginLink": LOGIN_LINK,
                "Secret": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "provider": NAME,
                        "grant_type": {"enum": [g.value for g in GrantType]},
                        "environments": {"type": "array", "items": NAME},
                        "status": {"enum": [s.value for s in Status]},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "expires_at": {"type": "string"},
                        "has_refresh_token": {"type": "boolean"},
                        "connected_at": {"type": "string"},
                        "last_refreshed_at": {"type": "string"},
                        "last_error": {"type": "string"},
                        "failures": {"type": "integer"},
                        "next_attempt_at": {"type": "string"},
                        "failing_since": {
                            "type": "string",
                            "description": "When it last left active; empty while it is healthy.",
                        },
                    },
                    # Always all there: so a login link (name, authorization_url, expires_at) is no Secret.
                    "required": ["name", "provider", "grant_type", "environments", "status", "scopes"],
                    "additionalProperties": False,
                },
            },
        },
    }
