"""The OpenAPI 3.1 description of the JSON API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
URL = {"type": "string", "format": "uri", "maxLength": 2048}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


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
PROVIDER_FIELDS: dict[str, Any] = {
    "name": NAME,
    "client_id": {"type": "string", "minLength": 1, "maxLength": 1024},
    "client_secret": {"type": "string", "minLength": 1, "maxLength": 1024, "writeOnly": True},
    "authorization_url": URL,
    "token_url": URL,
    "scopes": SCOPES,
    "revocation_url": {**URL, "type": ["string", "null"]},
    "token_auth_method": {"enum": ["client_secret_basic", "client_secret_post"]},
    "pkce": {"type": "boolean", "default": True},
    "extra_authorize_params": {"type": "object", "additionalProperties": {"type": "string"}},
    "refresh_margin": {"type": ["integer", "null"], "minimum": 0, "maximum": 86400},
    "max_token_lifetime": {"type": ["integer", "null"], "minimum": 60},
    "issuer": {**URL, "type": ["string", "null"]},
    "authorization_response_iss_parameter_supported": {"type": "boolean", "default": False},
}
PROVIDER_INPUT: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["client_id", "client_secret", "authorization_url", "token_url", "scopes"],
    "properties": PROVIDER_FIELDS,
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
                    "summary": "Create or replace a provider",
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
                    "summary": "Start connecting a secret: answers the link a person opens to log in",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["name", "provider"],
                                    "properties": {
                                        "name": NAME,
                                        "provider": NAME,
                                        "environments": {"type": "array", "items": NAME, "minItems": 1},
                                        "scopes": SCOPES,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "name": NAME,
                                    "authorization_url": URL,
                                    "expires_at": {"type": "string", "format": "date-time"},
                                },
                            },
                            "the login link, valid ten minutes",
                        ),
                        **_errors(400, 401, 403, 413, 503),
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
            "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {"security": [], "responses": {"200": {"description": "ready"}, **_errors(503)}},
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
                        **{k: v for k, v in PROVIDER_FIELDS.items() if k != "client_secret"},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "client_secret_set": {"type": "boolean"},
                    },
                },
                "Secret": {
                    "type": "object",
                    "properties": {
                        "name": NAME,
                        "provider": NAME,
                        "environments": {"type": "array", "items": NAME},
                        "status": {"enum": ["active", "retrying", "reauthorization_required"]},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "expires_at": {"type": "string"},
                        "has_refresh_token": {"type": "boolean"},
                        "connected_at": {"type": "string"},
                        "last_refreshed_at": {"type": "string"},
                        "last_error": {"type": "string"},
                        "failures": {"type": "integer"},
                        "next_attempt_at": {"type": "string"},
                    },
                },
            },
        },
    }
