"""The Kubernetes example is consistent with what the sidecar and its image really read and serve."""

import re
from pathlib import Path

import yaml

from sidecar.config import Settings
from sidecar.policies import render, render_reader
from sidecar.web import create_app

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"


def documents() -> list[dict]:
    docs = [d for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert docs and all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    return docs


def kind(name: str) -> list[dict]:
    return [d for d in documents() if d["kind"] == name]


def sidecar_container() -> dict:
    (deployment,) = [d for d in kind("Deployment") if d["metadata"]["name"] == "sheets-app"]
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "oauth-sidecar"]
    return container


def sidecar_env() -> dict[str, str]:
    """The container's variables; a value from a Secret stands in as a valid placeholder."""
    return {e["name"]: e.get("value", "x" * 48) for e in sidecar_container()["env"]}


def test_every_variable_is_one_the_sidecar_reads_and_the_settings_are_valid():
    known = set(re.findall(r'"((?:VAULT|BAO|SIDECAR)_[A-Z_]+)"', (ROOT / "sidecar" / "config.py").read_text()))
    env = sidecar_env()
    assert set(env) <= known, set(env) - known
    settings = Settings.from_env(env)
    assert (settings.vault_auth, settings.kubernetes_role) == ("kubernetes", "oauth-sidecar")


def test_ports_and_probes_match_what_the_sidecar_serves():
    container = sidecar_container()
    (port,) = container["ports"]
    assert Settings.from_env(sidecar_env()).bind_host_port == ("0.0.0.0", port["containerPort"])
    routes = {rule.rule for rule in create_app(Settings.from_env(sidecar_env())).url_map.iter_rules()}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]} and path in routes
    assert container["args"] == ["serve"]
    assert container["securityContext"]["runAsUser"] == int(
        re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M).group(1)
    )


def test_the_service_and_ingress_reach_the_callback_at_the_public_url():
    (service,) = kind("Service")
    (ingress,) = kind("Ingress")
    assert service["spec"]["ports"][0]["targetPort"] == sidecar_container()["ports"][0]["name"]
    (rule,) = ingress["spec"]["rules"]
    public = Settings.from_env(sidecar_env()).public_url
    assert public == f"https://{rule['host']}"
    paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert {"/callback", "/login", "/settings"} <= set(paths)
    assert all(b == {"name": service["metadata"]["name"], "port": {"name": "http"}} for b in paths.values())


def test_the_app_reads_the_view_path_and_the_roles_name_real_policies():
    (reader,) = [d for d in kind("Deployment") if d["metadata"]["name"] == "sheets-report"]
    annotations = reader["spec"]["template"]["metadata"]["annotations"]
    settings = Settings()
    view = f"{settings.kv_mount}/data/{settings.prefix}/production/sheets"
    assert annotations["vault.hashicorp.com/agent-inject-secret-sheets-token"] == view
    assert f'secret "{view}"' in annotations["vault.hashicorp.com/agent-inject-template-sheets-token"]
    setup = (DEPLOY / "vault-setup.sh").read_text()
    written = re.findall(r"oauth-sidecar policies write reader --secret ([\w.-]+) --environment ([\w.-]+)", setup)
    readers = dict(render_reader(settings, secret, env) for secret, env in written)
    assert set(re.findall(r"token_policies=([\w-]+)", setup)) <= set(render(settings)) | set(readers)
    # The app's role carries only the reader policy of the one view it reads, not a whole environment's.
    role = re.search(r"auth/kubernetes/role/sheets-app\b.*?token_policies=([\w,-]+)", setup, re.S)
    assert role and role[1] in readers and f'path "{view}"' in readers[role[1]]
    roles = re.findall(r"auth/kubernetes/role/([\w-]+)", setup)
    assert {sidecar_env()["SIDECAR_KUBERNETES_ROLE"], annotations["vault.hashicorp.com/role"]} <= set(roles)


def test_the_agent_renders_well_within_the_refresh_margin():
    """Left at its default (5 minutes), the agent could keep a token in the file past its expiry."""
    (reader,) = [d for d in kind("Deployment") if d["metadata"]["name"] == "sheets-report"]
    interval = reader["spec"]["template"]["metadata"]["annotations"][
        "vault.hashicorp.com/template-static-secret-render-interval"
    ]
    number, unit = re.fullmatch(r"(\d+)([sm])", interval).groups()
    margin = Settings.from_env(sidecar_env()).refresh_margin
    assert int(number) * {"s": 1, "m": 60}[unit] <= margin / 2
