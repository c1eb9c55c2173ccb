// Account: API keys (shown once), password, sign out.

import { html, useState, useSession, useLoad, ErrorNote, PageHeader, Field, Action, CopyButton, when, canWrite } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Account() {
  const { user, signOut } = useSession();
  return html`<section class="page">
    <${PageHeader} title="Account"><button type="button" onClick=${signOut}>Sign out</button></${PageHeader}>
    <div class="card"><h2>${user.display_name || user.email}</h2>
      <p class="muted">${user.email} · ${user.role}${user.last_login_at ? ' · last sign-in ' + when(user.last_login_at) : ''}</p></div>
    <${ApiKeys} />
    <${ConnectedApps} />
    <${Password} />
  </section>`;
}

function ApiKeys() {
  const { user } = useSession();
  const list = useLoad(() => api.get('/api/v1/api-keys?page_size=100'), []);
  const [name, setName] = useState('');
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try { setCreated(await api.post('/api/v1/api-keys', { name })); setName(''); list.reload(); } catch (err) { setError(err); }
  };
  return html`<section class="card">
    <h2>API keys</h2>
    <p class="muted">For scripts, OpenAI-compatible clients and MCP clients: send one as <code>Authorization: Bearer …</code>.</p>
    ${canWrite(user) ? html`<form class="row wrap" onSubmit=${create}>
      <${Field} label="Name of a new key"><input required maxlength="100" value=${name} onInput=${(e) => setName(e.target.value)} /></${Field}>
      <button type="submit" class="primary">Create key</button>
    </form>` : null}
    ${created ? html`<div class="note ok" role="status">
      <p><strong>Copy this key now: it is not shown again.</strong></p>
      <p><code class="secret" data-testid="new-api-key">${created.key}</code> <${CopyButton} text=${created.key} /></p>
      <button type="button" class="small" onClick=${() => setCreated(null)}>Done</button>
    </div>` : null}
    <${ErrorNote} error=${error || list.error} />
    <table class="table"><thead><tr><th>Name</th><th>Key</th><th>Created</th><th>Last used</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
      ${(list.data?.items || []).map((k) => html`<tr key=${k.id}>
        <td>${k.name}</td><td class="mono">${k.prefix}…</td><td>${when(k.created_at)}</td><td>${k.last_used_at ? when(k.last_used_at) : 'never'}</td>
        <td>${canWrite(user) ? html`<${Action} kind="small danger" label=${'Revoke ' + k.name} confirm=${`Revoke the key ${k.name}? Clients that use it stop working at once.`} run=${async () => { await api.del('/api/v1/api-keys/' + k.id); list.reload(); }}>Revoke</${Action}>` : null}</td>
      </tr>`)}
    </tbody></table>
    ${list.data && !list.data.items.length ? html`<p class="muted">No key yet.</p>` : null}
  </section>`;
}

function ConnectedApps() {
  const list = useLoad(() => api.get('/api/v1/oauth/grants'), []);
  return html`<section class="card" data-testid="connected-apps">
    <h2>Connected applications</h2>
    <p class="muted">MCP clients you approved to use <code>${location.origin}/mcp</code> as you. Revoking one stops it at once.</p>
    <${ErrorNote} error=${list.error} />
    <table class="table"><thead><tr><th>Application</th><th>May</th><th>Approved</th><th>Last used</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
      ${(list.data || []).map((g) => html`<tr key=${g.id}>
        <td>${g.client.name}${g.client.client_uri ? html`<br /><small class="muted mono">${g.client.client_uri}</small>` : null}</td>
        <td>${g.scopes.map((s) => html`<code key=${s}>${s}</code> `)}</td>
        <td>${when(g.created_at)}</td><td>${g.last_used_at ? when(g.last_used_at) : 'never'}</td>
        <td><${Action} kind="small danger" label=${'Revoke ' + g.client.name} confirm=${`Revoke ${g.client.name}? It stops working at once and must be approved again.`} run=${async () => { await api.del('/api/v1/oauth/grants/' + g.id); list.reload(); }}>Revoke</${Action}></td>
      </tr>`)}
    </tbody></table>
    ${list.data && !list.data.length ? html`<p class="muted">No application yet. MCP clients that support sign-in ask for your approval here when they connect.</p>` : null}
  </section>`;
}

function Password() {
  const { signOut } = useSession();
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [error, setError] = useState(null);
  const [done, setDone] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      await api.post('/api/v1/users/me/password', { current_password: current, new_password: next });
      setDone(true);
      setTimeout(signOut, 1500);
    } catch (err) { setError(err); }
  };
  return html`<section class="card">
    <h2>Password</h2>
    <form onSubmit=${submit}>
      <${Field} label="Current password"><input type="password" required autocomplete="current-password" value=${current} onInput=${(e) => setCurrent(e.target.value)} /></${Field}>
      <${Field} label="New password" hint="8 characters or more. Every session signs out."><input type="password" required minlength="8" autocomplete="new-password" value=${next} onInput=${(e) => setNext(e.target.value)} /></${Field}>
      <${ErrorNote} error=${error} />
      ${done ? html`<div class="note ok" role="status">Password changed. Signing out…</div>` : null}
      <button type="submit" class="primary">Change password</button>
    </form>
  </section>`;
}
