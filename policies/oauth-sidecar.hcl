# The sidecar itself: read providers, keep grants, pending logins and environment views.
path "secret/data/oauth-sidecar/providers/*" {
  capabilities = ["read"]
}
path "secret/data/oauth-sidecar/grants/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/grants/*" {
  capabilities = ["list", "create", "update"]
}
path "secret/data/oauth-sidecar/pending/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/pending/*" {
  capabilities = ["delete"]
}
path "secret/data/oauth/development/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/oauth/production/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth/development/*" {
  capabilities = ["create", "update", "delete"]
}
path "secret/metadata/oauth/production/*" {
  capabilities = ["create", "update", "delete"]
}
