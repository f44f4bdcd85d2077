// A real OAuth 2.0 server for the integration tests: oauth2-mock-server, made strict where a
// real provider is (single-use codes bound to their redirect URI and PKCE challenge, client
// authentication, revocation), plus a protected resource, a device flow and a small control surface:
//   GET  /api/resource        200 for a live access token, 401 otherwise
//   GET  /.well-known/openid-configuration, /.well-known/oauth-authorization-server
//                             the metadata, with `discovery` applied (null deletes a key, anything
//                             else replaces it); `discoveryStatus` other than 200 answers {error: server_error};
//                             `rfc8414: false` serves only the OpenID Connect document
//   POST /device_authorization RFC 8628: {device_code, user_code "ABCD-EFGH", verification_uri(_complete),
//                             expires_in: deviceTtl, interval: deviceInterval}; the code is polled at /token
//   POST /__control/config    {clients: {id: secret | [secret, ...]}, jwks: {id: public JWK}, sendIss: bool,
//                             ttl: seconds, rotate: bool, discovery: {key: value | null}, discoveryStatus,
//                             deviceTtl: seconds, deviceInterval: seconds, deviceEnforceInterval: bool}
//   POST /__control/next      {token: {status, body, omit, set, delayMs, hangUp}, revoke: [status, ...], authorize: {error}}
//   GET  /__control/device    the pending device codes (not yet approved, denied or expired): [{user_code, scope, status}]
//   POST /__control/device    {user_code, action: "approve" | "deny"}; 404 for an unknown user code
// Clients authenticate at /token, /revoke and /device_authorization with Basic, client_secret_post
// (any of a client's secrets) or private_key_jwt (RFC 7523: RS256/ES256, iss = sub = client id,
// aud = the endpoint's URL or the issuer, exp at most 10 min ahead, a jti never seen before); a
// refused client gets 401 invalid_client and its log entry an `auth_error`.
// With `rotate`, every refresh returns a new refresh token and spends the old one; presenting a
// spent one again revokes the whole grant (its family), as providers with reuse detection do.
// A device code polled before 80% of its interval answers slow_down and grows that interval by 5 s.
//   POST /__control/mint      {count, scope}: that many fresh grants (access and refresh token, expires_in: ttl),
//                             as if each had just logged in; for seeding many grants at once
//   GET  /__control/log       what the server saw (token, revoke, device, discovery: [pathname], ...);
//                             POST /__control/reset clears it, every device code and jti, and restores the defaults
// Prints {"issuer": "http://127.0.0.1:PORT"} on its first line of output.
import { randomBytes, randomInt, randomUUID } from "node:crypto";
import http from "node:http";
import { decodeJwt, importJWK, jwtVerify } from "jose";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
const DISCOVERY = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"];

const issuer = new OAuth2Issuer();
await issuer.keys.generate("RS256");
const service = new OAuth2Service(issuer);

// Every token unique, as a real provider's are (the mock's JWTs repeat within a second).
service.on("beforeTokenSigning", (token) => { token.payload.jti = randomUUID(); });

let config, codes, accessTokens, refreshTokens, devices, jtis, log, next;
function reset() {
  config = { clients: {}, jwks: {}, sendIss: false, ttl: 3600, rotate: false, discovery: {}, discoveryStatus: 200, rfc8414: true,
    deviceTtl: 600, deviceInterval: 5, deviceEnforceInterval: true };
  codes = new Map();
  accessTokens = new Map();
  refreshTokens = new Map();
  devices = new Map(); // device_code -> {userCode, clientId, scope, status, expiresAt, interval, lastPoll}
  jtis = new Set(); // of the client assertions accepted
  log = { authorize: [], token: [], tokenRequests: 0, revoke: [], revokeRequests: 0, resource: [], reuse: 0,
    device: [], discovery: [] };
  next = { token: [], revoke: [], authorize: [] };
}
reset();

// The credentials a request carries, unchecked.
function clientOf(req, body) {
  const header = req.headers.authorization || "";
  if (header.startsWith("Basic ")) {
    const [id, secret] = Buffer.from(header.slice(6), "base64").toString().split(":");
    const decode = (s) => decodeURIComponent((s || "").replace(/\+/g, " "));
    return { id: decode(id), secret: decode(secret), method: "client_secret_basic" };
  }
  if (body.client_assertion_type === JWT_BEARER) return { id: body.client_id, assertion: body.client_assertion, method: "private_key_jwt" };
  if (body.client_secret !== undefined) return { id: body.client_id, secret: body.client_secret, method: "client_secret_post" };
  return { id: body.client_id, secret: undefined, method: "none" };
}

// {id, method, ok, error}: who the client says it is, and whether it proved it (error says why not).
async function authenticate(req, body, pathname) {
  const { id, method, secret, assertion } = clientOf(req, body);
  const client = { id, method };
  if (method === "private_key_jwt") client.error = await assertionError(client, assertion, `${issuer.url}${pathname}`);
  else if (method === "none") client.error = "no credentials";
  else if (!Object.hasOwn(config.clients, id)) client.error = "unknown client";
  else if (![].concat(config.clients[id]).includes(secret)) client.error = "bad secret";
  client.ok = !client.error;
  return client;
}

// RFC 7523 sections 2.2 and 3: why an assertion does not authenticate its client (undefined if it does).
async function assertionError(client, assertion, endpoint) {
  let claims;
  try { claims = decodeJwt(assertion); } catch { return "malformed assertion"; }
  if (client.id !== undefined && client.id !== claims.iss) return "client_id is not iss";
  client.id = claims.iss;
  if (!Object.hasOwn(config.jwks, String(claims.iss))) return "unknown client";
  try {
    const { payload } = await jwtVerify(assertion, (header) => importJWK(config.jwks[claims.iss], header.alg), {
      algorithms: ["RS256", "ES256"], issuer: claims.iss, subject: claims.iss, audience: [endpoint, issuer.url],
      requiredClaims: ["exp", "jti"] });
    if (payload.exp > Date.now() / 1000 + 600) return "exp too far";
    if (jtis.has(payload.jti)) return "replayed jti";
    jtis.add(payload.jti);
  } catch (err) {
    if (err.code === "ERR_JWT_CLAIM_VALIDATION_FAILED") return `bad ${err.claim}`;
    return { ERR_JWT_EXPIRED: "expired", ERR_JOSE_ALG_NOT_ALLOWED: "bad alg", ERR_JOSE_NOT_SUPPORTED: "bad key",
      ERR_JWK_INVALID: "bad key", ERR_JWS_SIGNATURE_VERIFICATION_FAILED: "bad signature" }[err.code] ?? "bad assertion";
  }
}

// The authorization server metadata: the mock's, what this server adds, then config.discovery.
function metadata() {
  const at = (path) => `${issuer.url}${path}`;
  const doc = {
    issuer: issuer.url, authorization_endpoint: at("/authorize"), token_endpoint: at("/token"),
    userinfo_endpoint: at("/userinfo"), jwks_uri: at("/jwks"), revocation_endpoint: at("/revoke"),
    end_session_endpoint: at("/endsession"), introspection_endpoint: at("/introspect"),
    device_authorization_endpoint: at("/device_authorization"),
    response_types_supported: ["code"], response_modes_supported: ["query"],
    grant_types_supported: ["authorization_code", "refresh_token", "client_credentials", DEVICE_GRANT],
    token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post", "private_key_jwt"],
    token_endpoint_auth_signing_alg_values_supported: ["RS256", "ES256"],
    id_token_signing_alg_values_supported: ["RS256"], subject_types_supported: ["public"],
    code_challenge_methods_supported: ["plain", "S256"],
    authorization_response_iss_parameter_supported: config.sendIss,
  };
  for (const [key, value] of Object.entries(config.discovery ?? {})) {
    if (value === null) delete doc[key];
    else doc[key] = value;
  }
  return doc;
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

// A queued next.token behaviour, applied to a token response before it is sent.
function applyOverride(response, entry, override) {
  if (!override) return;
  for (const key of override.omit || []) delete response.body[key];
  Object.assign(response.body, override.set || {});
  if (override.status) response.statusCode = entry.status = override.status;
  if (override.body) response.body = override.body;
}

// Remembers the tokens of a successful token response, for /api/resource and later refreshes.
function register(body, family = randomUUID()) {
  const now = Math.floor(Date.now() / 1000);
  const lifetime = typeof body.expires_in === "number" && body.expires_in > 0 ? body.expires_in : 3600;
  accessTokens.set(body.access_token, { exp: now + lifetime, revoked: false, scope: body.scope, family });
  if (body.refresh_token) refreshTokens.set(body.refresh_token, { revoked: false, spent: false, scope: body.scope, family });
}

service.on("beforeResponse", (response, req) => {
  const body = req.body;
  const client = req.clientAuth; // authenticated before the mock saw the request
  const entry = { grant_type: body.grant_type, code: body.code, redirect_uri: body.redirect_uri, scope: body.scope,
    code_verifier: Boolean(body.code_verifier), client_id: client.id, auth_method: client.method,
    auth_error: client.error, refresh_token: body.refresh_token, status: 200, at: Date.now() };
  log.token.push(entry);
  const fail = (status, error) => { response.statusCode = entry.status = status; response.body = { error }; };
  if (!client.ok) return fail(401, "invalid_client");
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
  applyOverride(response, entry, req.override);
  if (response.statusCode === 200) register(response.body, response.family);
});

// RFC 8628 section 3.5: why a device code poll gets no tokens (undefined when it does).
function deviceError(client, device, now) {
  if (!client.ok) return "invalid_client";
  if (!device || device.status === "redeemed" || device.clientId !== client.id) return "invalid_grant";
  if (now > device.expiresAt) return "expired_token";
  if (device.status === "denied") return "access_denied";
  if (device.status === "approved") return undefined;
  const early = device.lastPoll !== undefined && now - device.lastPoll < device.interval * 1000 * 0.8;
  device.lastPoll = now;
  if (early && config.deviceEnforceInterval) {
    device.interval += 5;
    return "slow_down";
  }
  return "authorization_pending";
}

// A device code grant at /token, answered here: the mock has no device flow.
function pollDevice(req, res) {
  const { body, clientAuth: client } = req;
  const entry = { grant_type: body.grant_type, client_id: client.id, auth_method: client.method,
    auth_error: client.error, status: 200, error: undefined, at: Date.now() };
  log.token.push(entry);
  const device = devices.get(body.device_code);
  const error = deviceError(client, device, entry.at);
  const response = error ? { statusCode: error === "invalid_client" ? 401 : 400, body: { error } }
    : { statusCode: 200, body: { access_token: randomToken(), token_type: "Bearer", expires_in: config.ttl,
      scope: device.scope, refresh_token: randomToken() } };
  entry.status = response.statusCode;
  applyOverride(response, entry, req.override);
  entry.error = response.body.error;
  if (response.statusCode === 200) {
    if (device?.status === "approved") device.status = "redeemed";
    register(response.body);
  }
  return send(res, response.statusCode, response.body);
}

const randomToken = () => randomBytes(32).toString("base64url");

function userCode() {
  const letters = "BCDFGHJKLMNPQRSTVWXZ"; // RFC 8628 section 6.1: no vowels, nothing to misread
  const four = () => Array.from({ length: 4 }, () => letters[randomInt(letters.length)]).join("");
  return `${four()}-${four()}`;
}

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
    // Read here, as client authentication may be async. The mock's body-parser (2.x) then leaves
    // req.body alone: it skips any request whose stream is already finished (on-finished).
    req.body = await readForm(req);
    req.clientAuth = await authenticate(req, req.body, url.pathname);
    if (req.body.grant_type === DEVICE_GRANT) return pollDevice(req, res);
  }
  if (url.pathname === "/revoke" && req.method === "POST") {
    log.revokeRequests += 1;
    const body = await readForm(req);
    const client = await authenticate(req, body, url.pathname);
    const entry = { token: body.token, token_type_hint: body.token_type_hint, client_id: client.id,
      auth_method: client.method, auth_error: client.error };
    log.revoke.push(entry);
    if (!client.ok) return send(res, (entry.status = 401), { error: "invalid_client" });
    const status = next.revoke.shift() ?? 200;
    entry.status = status;
    if (status === 200) {
      for (const map of [accessTokens, refreshTokens]) if (map.has(body.token)) map.get(body.token).revoked = true;
    }
    return send(res, status, status === 200 ? undefined : { error: "temporarily_unavailable" });
  }
  if (url.pathname === "/device_authorization" && req.method === "POST") {
    const body = await readForm(req);
    const client = await authenticate(req, body, url.pathname);
    const entry = { client_id: client.id, auth_method: client.method, auth_error: client.error, scope: body.scope };
    log.device.push(entry);
    if (!client.ok) return send(res, (entry.status = 401), { error: "invalid_client" });
    entry.status = 200;
    const device = { userCode: userCode(), clientId: client.id, scope: body.scope, status: "pending",
      expiresAt: Date.now() + config.deviceTtl * 1000, interval: config.deviceInterval, lastPoll: undefined };
    const deviceCode = randomToken();
    devices.set(deviceCode, device);
    const verification = `${issuer.url}/device`;
    return send(res, 200, { device_code: deviceCode, user_code: device.userCode, verification_uri: verification,
      verification_uri_complete: `${verification}?user_code=${device.userCode}`,
      expires_in: config.deviceTtl, interval: config.deviceInterval });
  }
  if (DISCOVERY.includes(url.pathname) && req.method === "GET") {
    log.discovery.push(url.pathname);
    if (config.discoveryStatus !== 200) return send(res, config.discoveryStatus, { error: "server_error" });
    if (!config.rfc8414 && url.pathname.endsWith("oauth-authorization-server")) return send(res, 404, { error: "not_found" });
    return send(res, 200, metadata());
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
  if (url.pathname === "/__control/device") {
    const view = (d) => ({ user_code: d.userCode, scope: d.scope, status: d.status });
    if (req.method === "GET") {
      const pending = [...devices.values()].filter((d) => d.status === "pending" && d.expiresAt >= Date.now());
      return send(res, 200, pending.map(view));
    }
    const { user_code: code, action } = await readJson(req);
    const device = [...devices.values()].find((d) => d.userCode === code && d.status !== "redeemed");
    if (!device) return send(res, 404, { error: "unknown user_code" });
    if (action !== "approve" && action !== "deny") return send(res, 400, { error: "action is approve or deny" });
    device.status = action === "approve" ? "approved" : "denied";
    return send(res, 200, view(device));
  }
  if (url.pathname === "/__control/mint" && req.method === "POST") {
    const { count = 1, scope = "openid" } = await readJson(req);
    const minted = [];
    for (let i = 0; i < count; i += 1) {
      const body = { access_token: randomBytes(24).toString("base64url"), token_type: "Bearer",
        refresh_token: randomBytes(24).toString("base64url"), expires_in: config.ttl, scope };
      register(body);
      minted.push(body);
    }
    return send(res, 200, minted);
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
