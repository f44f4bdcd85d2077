"""The OpenAPI document (`/openapi.json`): valid OpenAPI 3.1, and what the API really answers fits it.
The guard for any later change to how the document is made."""

import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from sidecar.web.openapi import document

from .helpers import start


def test_the_document_is_valid_openapi_3_1():
    validate(document())


def fits(spec: dict, method: str, path: str, answer: requests.Response) -> None:
    """`answer` is one of the statuses documented for `method path`, and its JSON body fits that schema."""
    responses = spec["paths"][path][method.lower()]["responses"]
    documented = responses.get(str(answer.status_code))
    assert documented is not None, f"{method} {path} answered {answer.status_code}, which is not documented"
    content = documented.get("content", {}).get("application/json")
    if content is None:
        assert not answer.content, f"{method} {path} {answer.status_code} has an undocumented body"
        return
    schema = {**content["schema"], "components": spec["components"]}  # so that its $refs resolve
    errors = sorted(Draft202012Validator(schema).iter_errors(answer.json()), key=str)
    assert not errors, f"{method} {path} {answer.status_code}: {errors[0].message} at {list(errors[0].path)}"


def test_real_answers_fit_the_document(api, live, oauth, tokens):
    spec = requests.get(f"{live.url}/openapi.json", timeout=10).json()
    assert requests.Session().get(start(api), timeout=30).status_code == 200  # `sheets`, connected
    reader = {"X-Vault-Token": tokens.reader["production"]}
    calls = [
        ("GET", "/v1/providers", "/v1/providers", {}),
        ("GET", "/v1/providers/{provider}", "/v1/providers/mock", {}),
        ("GET", "/v1/providers/{provider}", "/v1/providers/nowhere", {}),
        ("PUT", "/v1/providers/{provider}", "/v1/providers/mock", {"json": oauth.registration()}),
        ("PUT", "/v1/providers/{provider}", "/v1/providers/bad", {"json": {"client_id": ""}}),
        ("GET", "/v1/presets", "/v1/presets", {}),
        ("GET", "/v1/secrets", "/v1/secrets", {}),
        ("GET", "/v1/secrets/{secret}", "/v1/secrets/sheets", {}),
        ("GET", "/v1/secrets/{secret}", "/v1/secrets/nothing", {}),
        ("GET", "/v1/secrets/{secret}/token", "/v1/secrets/sheets/token?environment=production", {"headers": reader}),
        ("POST", "/v1/secrets/{secret}/refresh", "/v1/secrets/sheets/refresh", {}),
        ("POST", "/v1/secrets", "/v1/secrets", {"json": {"name": "second", "provider": "mock"}}),
        ("POST", "/v1/secrets", "/v1/secrets", {"json": {"name": "../up", "provider": "mock"}}),
        ("GET", "/v1/policies/reader", "/v1/policies/reader?secret=sheets&environment=production", {}),
        ("GET", "/v1/providers", "/v1/providers", {"headers": {"X-Vault-Token": "not-a-token"}}),
        ("DELETE", "/v1/secrets/{secret}", "/v1/secrets/sheets", {}),
        ("GET", "/healthz", "/healthz", {}),
        ("GET", "/readyz", "/readyz", {}),
    ]
    for method, template, path, kwargs in calls:
        fits(spec, method, template, api(method, path, **kwargs))
