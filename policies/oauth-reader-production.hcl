# Apps of the production environment: read their access tokens, nothing else.
path "secret/data/oauth/production/*" {
  capabilities = ["read"]
}
