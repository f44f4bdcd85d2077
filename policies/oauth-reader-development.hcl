# Apps of the development environment: read their access tokens, nothing else.
path "secret/data/oauth/development/*" {
  capabilities = ["read"]
}
