# Operators: manage providers and secrets through the sidecar's API.
path "secret/data/oauth-sidecar/providers/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/oauth-sidecar/providers/*" {
  capabilities = ["read", "list", "create", "update", "delete"]
}
path "secret/data/oauth-sidecar/pins/*" {
  capabilities = ["read"]
}
path "secret/data/oauth-sidecar/grants/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/oauth-sidecar/grants/*" {
  capabilities = ["read", "list", "create", "update", "delete"]
}
path "secret/data/oauth-sidecar/index/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/oauth-sidecar/index/*" {
  capabilities = ["list", "create", "update"]
}
path "secret/data/oauth/*" {
  capabilities = ["create", "read", "update", "delete"]
}
path "secret/metadata/oauth/*" {
  capabilities = ["read", "list", "create", "update", "delete"]
}
