// The console's only way to the server: the public API under /api/v1.
//
// The access token lives in this module's memory, never in storage. The
// refresh token is an HttpOnly cookie the page cannot read: when the access
// token is missing or expired, `refresh()` asks /api/v1/auth/session/refresh
// for a new one (one request at a time, however many calls wait for it).

const CSRF = { 'X-Orchestra-Csrf': '1' };
let access = null; // { token, expiresAt }
let refreshing = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.error) || 'http_' + status;
    this.details = body && body.details;
  }
}

export function whenSignedOut(fn) { onSignedOut = fn; }

async function parse(response) {
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json().catch(() => null) : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function accept(session) {
  access = { token: session.access_token, expiresAt: Date.now() + (session.expires_in - 15) * 1000 };
  return session;
}

/** Signs in; the answer carries the user. */
export async function signIn(email, password) {
  const r = await fetch('/api/v1/auth/session', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', ...CSRF },
    body: JSON.stringify({ email, password }),
  });
  return accept(await parse(r));
}

/** Creates an account (the first one is the admin) and signs in. */
export async function register(email, password, display_name) {
  const r = await fetch('/api/v1/auth/session/register', {
    method: 'POST', credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', ...CSRF },
    body: JSON.stringify({ email, password, display_name: display_name || undefined }),
  });
  return accept(await parse(r));
}

/** A fresh access token from the session cookie, or null without a session. */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const r = await fetch('/api/v1/auth/session/refresh', {
          method: 'POST', credentials: 'same-origin', headers: CSRF,
        });
        if (r.status === 401) { access = null; return null; }
        return accept(await parse(r));
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

export async function signOut() {
  access = null;
  await fetch('/api/v1/auth/session', { method: 'DELETE', credentials: 'same-origin', headers: CSRF }).catch(() => {});
}

async function token() {
  if (access && Date.now() < access.expiresAt) return access.token;
  const session = await refresh();
  if (!session) { onSignedOut(); throw new ApiError(401, { error: 'unauthorized', message: 'Signed out' }); }
  return access.token;
}

/** Calls the API. `body` is sent as JSON unless it is FormData or a Blob. */
export async function api(method, path, body, extra = {}) {
  const send = async () => {
    const headers = { Authorization: 'Bearer ' + (await token()), ...(extra.headers || {}) };
    let payload;
    if (body instanceof Blob || body instanceof ArrayBuffer) payload = body;
    else if (body !== undefined) { headers['Content-Type'] = 'application/json'; payload = JSON.stringify(body); }
    return fetch(path, { method, headers, body: payload, signal: extra.signal });
  };
  let r = await send();
  if (r.status === 401) {
    access = null;
    r = await send();
  }
  if (extra.raw) return r;
  return parse(r);
}

export const get = (path, extra) => api('GET', path, undefined, extra);
export const post = (path, body, extra) => api('POST', path, body, extra);
export const patch = (path, body, extra) => api('PATCH', path, body, extra);
export const put = (path, body, extra) => api('PUT', path, body, extra);
export const del = (path, extra) => api('DELETE', path, undefined, extra);

/** Query string from an object, leaving out empty values. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}

/**
 * Follows a run's events (Server-Sent Events over fetch, so that the
 * access token goes in a header). Resumes after a dropped connection from
 * the last event seen; `onEvent({seq, type, data})` is called once per
 * event. Resolves when the run's `done` event arrived (or the server says
 * every event was sent), or when `signal` aborts.
 */
export async function followRun(runId, after, onEvent, signal) {
  let last = after || 0;
  let failures = 0;
  while (!signal.aborted) {
    let r;
    try {
      r = await api('GET', `/api/v1/runs/${runId}/events`, undefined, {
        raw: true, signal, headers: { Accept: 'text/event-stream', 'Last-Event-ID': String(last) },
      });
    } catch (e) {
      if (signal.aborted) return last;
      if (e instanceof ApiError) throw e;
      await sleep(Math.min(8000, 500 * 2 ** failures++));
      continue;
    }
    if (r.status === 204) return last;
    if (!r.ok) {
      const body = await r.json().catch(() => null);
      if (r.status === 429 || r.status >= 500) { await sleep(Math.min(8000, 1000 * 2 ** failures++)); continue; }
      throw new ApiError(r.status, body);
    }
    failures = 0;
    let done = false;
    try {
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseBlock(block);
          if (!event) continue;
          last = event.seq;
          onEvent(event);
          if (event.type === 'done') done = true;
        }
      }
    } catch (e) {
      if (signal.aborted) return last;
    }
    if (done) return last;
    await sleep(300);
  }
  return last;
}

function parseBlock(block) {
  let id = null, type = 'message', data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'id') id = Number(value);
    else if (field === 'event') type = value;
    else if (field === 'data') data += (data ? '\n' : '') + value;
  }
  if (id === null || !data) return null;
  let parsed;
  try { parsed = JSON.parse(data); } catch { return null; }
  return { seq: id, type, data: parsed };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
