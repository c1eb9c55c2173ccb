// The consent page of the OAuth flow: a remote MCP client asks to act for
// the signed-in user. The user sees who asks, where the browser goes next
// and what it may do, and approves (possibly fewer scopes) or denies.

import { html, useState, useEffect, useLoad, ErrorNote, when } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Consent({ user, signOut }) {
  const id = new URLSearchParams(location.search).get('request') || '';
  const request = useLoad(() => api.get('/api/v1/oauth/requests/' + encodeURIComponent(id)), [id]);
  const [chosen, setChosen] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => { document.title = 'Authorize an application · Orchestra'; }, []);
  useEffect(() => {
    if (request.data) setChosen(Object.fromEntries(request.data.scopes.map((s) => [s.name, true])));
  }, [request.data]);

  const decide = async (approve) => {
    setBusy(true);
    setError(null);
    try {
      const scopes = approve ? Object.entries(chosen).filter(([, on]) => on).map(([name]) => name) : undefined;
      const outcome = await api.post('/api/v1/oauth/requests/' + encodeURIComponent(id), { approve, scopes });
      location.assign(outcome.redirect_to);
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  const r = request.data;
  let body;
  if (request.error) {
    body = html`<h1 id="consent-title">This request is no longer valid</h1>
      <${ErrorNote} error=${request.error} />
      <p class="muted">It was already answered, or it lapsed. Start connecting again from the application.</p>
      <p><a href="/">Open Orchestra</a></p>`;
  } else if (!r || !chosen) {
    body = html`<p class="muted">Loading the request…</p>`;
  } else {
    const target = (() => { try { const u = new URL(r.redirect_uri); return u.protocol.startsWith('http') ? u.host : u.protocol + '//' + u.host; } catch { return r.redirect_uri; } })();
    const none = !Object.values(chosen).some(Boolean);
    body = html`<h1 id="consent-title"><span data-testid="consent-client">${r.client.name}</span> wants to use Orchestra as you</h1>
      <p>Signed in as <strong>${user.email}</strong>. <button type="button" class="link" onClick=${signOut}>Not you?</button></p>
      ${r.client.kind === 'registered'
        ? html`<p class="note">The application named itself; this server cannot verify the name. Approve only if you started this connection, and check where it sends you back:</p>`
        : html`<p class="note ok">The application is identified by its own web address, <strong class="mono">${(() => { try { return new URL(r.client.id).host; } catch { return r.client.id; } })()}</strong>.</p>`}
      <dl class="facts">
        <dt>Sends you back to</dt><dd class="mono" data-testid="consent-redirect">${target}</dd>
        ${r.client.client_uri ? html`<dt>Its home page</dt><dd class="mono">${r.client.client_uri}</dd>` : null}
        <dt>For</dt><dd class="mono">${r.resource}</dd>
      </dl>
      <fieldset class="scopes"><legend>It may</legend>
        ${r.scopes.map((s) => html`<label class="check" key=${s.name}>
          <input type="checkbox" name=${s.name} checked=${chosen[s.name]} onChange=${(e) => setChosen({ ...chosen, [s.name]: e.target.checked })} />
          <span>${s.description} <code>${s.name}</code></span>
        </label>`)}
      </fieldset>
      <${ErrorNote} error=${error} />
      <div class="row">
        <button type="button" class="primary" disabled=${busy || none} onClick=${() => decide(true)}>Approve</button>
        <button type="button" disabled=${busy} onClick=${() => decide(false)}>Deny</button>
      </div>
      <p class="muted small">You can revoke it at any time under Account, Connected applications. This request lapses ${when(r.expires_at)}.</p>`;
  }
  return html`<main class="signin consent" id="main">
    <section class="card" aria-labelledby="consent-title">
      <p class="brand"><img src="/assets/icon.svg" alt="" width="24" height="24" /> Orchestra</p>
      ${body}
    </section>
  </main>`;
}
