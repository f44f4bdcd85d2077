#!/usr/bin/env sh
# Run once, by a Vault operator, from a machine with the vault CLI logged in with rights to
# write policies and configure auth methods. Adjust the namespace and service account names.
set -eu

# The sidecar's least-privilege policies (oauth-sidecar, oauth-admin, oauth-reader-<env>).
oauth-sidecar policies write
# The example app's own: read secret/oauth/production/sheets and nothing else (oauth-reader-production-sheets).
oauth-sidecar policies write reader --secret sheets --environment production

# Kubernetes auth: pods log in with their service account token.
vault auth enable kubernetes 2>/dev/null || true
vault write auth/kubernetes/config kubernetes_host="https://kubernetes.default.svc"

# The sidecar: its own policy only; short-lived tokens it renews and replaces by itself.
vault write auth/kubernetes/role/oauth-sidecar \
    bound_service_account_names=oauth-sidecar \
    bound_service_account_namespaces=integrations \
    token_policies=oauth-sidecar token_ttl=1h token_max_ttl=24h

# An app of the production environment: read its one token, nothing else. (oauth-reader-production
# would let it read every production token: keep that for apps that really need them all.)
vault write auth/kubernetes/role/sheets-app \
    bound_service_account_names=sheets-app \
    bound_service_account_namespaces=integrations \
    token_policies=oauth-reader-production-sheets token_ttl=1h
