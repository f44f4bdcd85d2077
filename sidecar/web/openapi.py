"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..inputs import NAME_RE, ProviderDraft, SecretInput, SecretQuery
from ..models import SECRET_FIELDS, GrantType, Status
from ..presets import PRESETS

NAME = {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}
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
        409: "exists (a create), in use, or changed meanwhile",
        413: "body over 64 KiB",
        502: "the provider refused or failed",
        503: "Vault unavailable",
    }
    return {str(s): _json(_ref("Error"), meanings[s]) for s in statuses}


def _name_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": NAME}


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The request bodies' schemas, generated from the models that validate them."""
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found |= schema.pop("$defs", {})
        found[model.__name__] = schema
    return found


INPUTS = _schemas(ProviderDraft, SecretInput)
_QUERY = SecretQuery.model_json_schema(ref_template="#/components/schemas/{model}")
INPUTS |= _QUERY.pop("$defs", {})
QUERY = [{"name": name, "in": "query", "schema": schema} for name, schema in _QUERY["properties"].items()]
PROVIDER_FIELDS: dict[str, Any] = INPUTS["ProviderDraft"]["properties"]
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
REPLACES: dict[str, Any] = {
    "type": "string",
    "description": 'With "replace": true over a secret that exists: what happens to it (its old tokens are '
    "not revoked).",
}
LOGIN_LINK: dict[str, Any] = {
    "type": "object",
    "description": "grant_type authorization_code: the sidecar's login link, valid ten minutes.",
    "required": ["name", "authorization_url", "expires_at"],
    "properties": {
        "name": NAME,
        "authorization_url": URL,
        "expires_at": {"type": "string", "format": "date-time"},
        "replaces": REPLACES,
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
                },
                "post": {
                    "summary": "Create a provider; a name that exists is 409 exists (PUT replaces)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("NewProvider")}},
                    },
                    "responses": {
                        "201": _json(_ref("Provider"), "created"),
                        **_errors(400, 401, 403, 409, 413, 503),
                    },
                },
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
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ProviderDraft")}},
                    },
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
                    "summary": "A page of secrets with their status (never token values), in name order, filtered",
                    "parameters": QUERY,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["secrets", "next", "counts"],
                                "properties": {
                                    "secrets": {"type": "array", "items": _ref("Secret")},
                                    "next": {
                                        "type": ["string", "null"],
                                        "description": "The cursor of the next page; null on the last.",
                                    },
                                    "counts": {
                                        "type": ["object", "null"],
                                        "description": "On the first page (no cursor): secrets by status among "
                                        "all that the other filters match; null on later pages.",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                            },
                            "the page",
                        ),
                        **_errors(400, 401, 403, 503),
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
                        **_errors(400, 401, 403, 409, 413, 503),
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
                        **{k: v for k, v in PROVIDER_FIELDS.items() if k not in SECRET_FIELDS},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        **{f"{k}_set": {"type": "boolean"} for k in SECRET_FIELDS},
                        "public_jwk": PUBLIC_JWK,
                        "redirect_uri": {
                            **URL,
                            "description": "The sidecar's callback, to register at the provider as a redirect URI.",
                        },
                    },
                },
                "NewProvider": {
                    **INPUTS["ProviderDraft"],
                    "required": ["name", *INPUTS["ProviderDraft"].get("required", ())],
                    "properties": {"name": NAME, **PROVIDER_FIELDS},
                },
                "Preset": PRESET,
                **INPUTS,
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
                        "renewable": {
                            "type": "boolean",
                            "description": "A refresh can work: a refresh token, or client credentials.",
                        },
                        "connected_at": {"type": "string"},
                        "last_refreshed_at": {"type": "string"},
                        "last_error": {"type": "string"},
                        "failures": {"type": "integer"},
                        "next_attempt_at": {"type": "string"},
                        "failing_since": {
                            "type": "string",
                            "description": "When it last left active; empty while it is healthy.",
                        },
                        "replaces": REPLACES,
                    },
                    # Always all there: so a login link (name, authorization_url, expires_at) is no Secret.
                    "required": ["name", "provider", "grant_type", "environments", "status", "scopes"],
                    "additionalProperties": False,
                },
            },
        },
    }
