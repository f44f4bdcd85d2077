# The sidecar itself: read providers; keep grants, logins in flight, UI sessions and views.
path "secret/data/oauth-sidecar/providers/*" {
  capabilities = ["read"]
}
path "secret/data/oauth-sidecar/pins/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/pins/*" {
  capabilities = ["delete"]
}
path "secret/data/oauth-sidecar/grants/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/grants/*" {
  capabilities = ["list", "create", "update"]
}
path "secret/data/oauth-sidecar/index/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/index/*" {
  capabilities = ["list", "create", "update"]
}
path "secret/data/oauth-sidecar/pending/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/data/oauth-sidecar/sessions/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/pending/*" {
  capabilities = ["list", "delete"]
}
path "secret/metadata/oauth-sidecar/sessions/*" {
  capabilities = ["list", "delete"]
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
