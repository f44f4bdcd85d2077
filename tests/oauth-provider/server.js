// A real OAuth 2.0 server for the integration tests: oauth2-mock-server, made strict where a
// real provider is (single-use codes bound to their redirect URI and PKCE challenge, client
// authentication, revocation), plus a protected resource and a small control surface:
//   GET  /api/resource        200 for a live access token, 401 otherwise
//   POST /__control/config    {clients: {id: secret}, sendIss: bool, ttl: seconds, rotate: bool}
//   POST /__control/next      {token: {status, body, omit, set, delayMs}, revoke: [status, ...], authorize: {error}}
// With `rotate`, every refresh returns a new refresh token and spends the old one; presenting a
// spent one again revokes the whole grant (its family), as providers with reuse detection do.
//   GET  /__control/log       what the server saw; POST /__control/reset clears it
// Prints {"issuer": "http://127.0.0.1:PORT"} on its first line of output.
import { randomUUID } from "node:crypto";
import http from "node:http";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const issuer = new OAuth2Issuer();
await issuer.keys.generate("RS256");
const service = new OAuth2Service(issuer);

// Every token unique, as a real provider's are (the mock's JWTs repeat within a second).
service.on("beforeTokenSigning", (token) => { token.payload.jti = randomUUID(); });

let config, codes, accessTokens, refreshTokens, log, next;
function reset() {
  config = { clients: {}, sendIss: false, ttl: 3600, rotate: false };
  codes = new Map();
  accessTokens = new Map();
  refreshTokens = new Map();
  log = { authorize: [], token: [], tokenRequests: 0, revoke: [], revokeRequests: 0, resource: [], reuse: 0 };
  next = { token: [], revoke: [], authorize: [] };
}
reset();

function clientOf(req, body) {
  const header = req.headers.authorization || "";
  if (header.startsWith("Basic ")) {
    const [id, secret] = Buffer.from(header.slice(6), "base64").toString().split(":");
    const decode = (s) => decodeURIComponent((s || "").replace(/\+/g, " "));
    return { id: decode(id), secret: decode(secret), method: "client_secret_basic" };
  }
  if (body.client_secret !== undefined) return { id: body.client_id, secret: body.client_secret, method: "client_secret_post" };
  return { id: body.client_id, secret: undefined, method: "none" };
}

function authenticated(client) {
  return client.id in config.clients && config.clients[client.id] === client.secret;
}

service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const q = req.query;
  log.authorize.push({ ...q });
  const code = redirect.url.searchParams.get("code");
  codes.set(code, { redirectUri: q.redirect_uri, clientId: q.client_id, pkce: Boolean(q.code_challenge), scope: q.scope, used: false });
  const override = next.authorize.shift();
  if (override?.error) {
    redirect.url.searchParams.delete("code");
    redirect.url.searchParams.set("error", override.error);
    if (override.error_description) redirect.url.searchParams.set("error_description", override.error_description);
  }
  if (config.sendIss) redirect.url.searchParams.set("iss", override?.iss ?? issuer.url);
});

service.on("beforeResponse", (response, req) => {
  const body = req.body || {};
  const client = clientOf(req, body);
  const entry = { grant_type: body.grant_type, code: body.code, redirect_uri: body.redirect_uri,
    code_verifier: Boolean(body.code_verifier), client_id: client.id, auth_method: client.method,
    refresh_token: body.refresh_token, status: 200, at: Date.now() };
  log.token.push(entry);
  const fail = (status, error) => { response.statusCode = entry.status = status; response.body = { error }; };
  if (!authenticated(client)) return fail(401, "invalid_client");
  if (body.grant_type === "authorization_code") {
    const issued = codes.get(body.code);
    if (!issued || issued.used || issued.redirectUri !== body.redirect_uri || issued.clientId !== client.id
        || (issued.pkce && !body.code_verifier)) return fail(400, "invalid_grant");
    issued.used = true;
    response.body.scope = issued.scope;
  } else if (body.grant_type === "refresh_token") {
    const known = refreshTokens.get(body.refresh_token);
    if (known?.spent) {
      log.reuse += 1;
      for (const token of [...refreshTokens.values(), ...accessTokens.values()]) {
        if (token.family === known.family) token.revoked = true;
      }
      return fail(400, "invalid_grant");
    }
    if (!known || known.revoked) return fail(400, "invalid_grant");
    entry.family = known.family;
    response.body.scope = known.scope;
    response.family = known.family;
    if (config.rotate) known.spent = true;
    else delete response.body.refresh_token; // a non-rotating provider keeps the refresh token as it is
  }
  response.body.expires_in = config.ttl;
  const override = req.override;
  if (override) {
    for (const key of override.omit || []) delete response.body[key];
    Object.assign(response.body, override.set || {});
    if (override.status) response.statusCode = entry.status = override.status;
    if (override.body) response.body = override.body;
  }
  if (response.statusCode === 200) {
    const now = Math.floor(Date.now() / 1000);
    const lifetime = typeof response.body.expires_in === "number" && response.body.expires_in > 0 ? response.body.expires_in : 3600;
    const family = response.family ?? randomUUID();
    accessTokens.set(response.body.access_token, { exp: now + lifetime, revoked: false, scope: response.body.scope, family });
    if (response.body.refresh_token) {
      refreshTokens.set(response.body.refresh_token, { revoked: false, spent: false, scope: response.body.scope, family });
    }
  }
});

function readForm(req) {
  return new Promise((resolve) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => resolve(Object.fromEntries(new URLSearchParams(raw))));
  });
}

function readJson(req) {
  return new Promise((resolve) => {
    let raw = "";
    req.on("data", (chunk) => (raw += chunk));
    req.on("end", () => resolve(raw ? JSON.parse(raw) : {}));
  });
}

function send(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(body === undefined ? "" : JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, issuer.url);
  if (url.pathname === "/token" && req.method === "POST") {
    log.tokenRequests += 1;
    req.override = next.token.shift();
    if (req.override?.delayMs) await new Promise((resolve) => setTimeout(resolve, req.override.delayMs));
    if (req.override?.hangUp) return req.socket.destroy();
  }
  if (url.pathname === "/revoke" && req.method === "POST") {
    log.revokeRequests += 1;
    const body = await readForm(req);
    const client = clientOf(req, body);
    const entry = { token: body.token, token_type_hint: body.token_type_hint, client_id: client.id, auth_method: client.method };
    log.revoke.push(entry);
    if (!authenticated(client)) return send(res, (entry.status = 401), { error: "invalid_client" });
    const status = next.revoke.shift() ?? 200;
    entry.status = status;
    if (status === 200) {
      for (const map of [accessTokens, refreshTokens]) if (map.has(body.token)) map.get(body.token).revoked = true;
    }
    return send(res, status, status === 200 ? undefined : { error: "temporarily_unavailable" });
  }
  if (url.pathname === "/api/resource") {
    const token = (req.headers.authorization || "").replace(/^Bearer /, "");
    const known = accessTokens.get(token);
    const live = known && !known.revoked && known.exp > Date.now() / 1000;
    log.resource.push({ live: Boolean(live) });
    return live ? send(res, 200, { sub: "johndoe", scope: known.scope }) : send(res, 401, { error: "invalid_token" });
  }
  if (url.pathname === "/__control/config" && req.method === "POST") {
    Object.assign(config, await readJson(req));
    return send(res, 200, config);
  }
  if (url.pathname === "/__control/next" && req.method === "POST") {
    const body = await readJson(req);
    for (const key of Object.keys(next)) if (body[key] !== undefined) next[key].push(...[].concat(body[key]));
    return send(res, 200, next);
  }
  if (url.pathname === "/__control/log") return send(res, 200, log);
  if (url.pathname === "/__control/reset" && req.method === "POST") {
    reset();
    return send(res, 200, {});
  }
  return service.requestHandler(req, res);
});

server.listen(0, "127.0.0.1", () => {
  issuer.url = `http://127.0.0.1:${server.address().port}`;
  console.log(JSON.stringify({ issuer: issuer.url }));
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
