// MCP servers: live status, add, edit, restart, delete; and how to reach
// this server's own /mcp endpoint from Claude Desktop or Cursor.

import { html, useState, useEffect, useSession, useLoad, ErrorNote, PageHeader, Field, Action, Modal, pretty, isAdmin, canWrite, when, CopyButton, Link, navigate } from '../lib/ui.js';
import * as api from '../lib/api.js';

/** Sends the browser to a server's sign-in page (it comes back to `OAuthCallback`). */
async function connectServer(id) {
  const started = await api.post(`/api/v1/mcp-servers/${id}/oauth`);
  location.assign(started.authorization_url);
}

/**
 * Where an MCP server's authorization server sends the browser back: the
 * code and state go to the API with this user's session, then back to the
 * list.
 */
export function OAuthCallback() {
  const [error, setError] = useState(null);
  useEffect(() => {
    const q = new URLSearchParams(location.search);
    if (q.get('error')) {
      setError({ message: 'The server refused: ' + (q.get('error_description') || q.get('error')), code: q.get('error') });
      return;
    }
    api.post('/api/v1/mcp-servers/oauth/callback', { state: q.get('state') || '', code: q.get('code') || '', iss: q.get('iss') || undefined })
      .then((server) => navigate('/mcp-servers?connected=' + encodeURIComponent(server.name), true), setError);
  }, []);
  return html`<section class="page">
    <${PageHeader} title="Connecting an MCP server" />
    ${error ? html`<${ErrorNote} error=${error} /><p><${Link} href="/mcp-servers">Back to MCP servers</${Link}></p>` : html`<p class="muted">Finishing the connection…</p>`}
  </section>`;
}

export function McpServers() {
  const { user } = useSession();
  const list = useLoad(() => api.get('/api/v1/mcp-servers'), []);
  const connected = new URLSearchParams(location.search).get('connected');
  const [connectError, setConnectError] = useState(null);
  const [editing, setEditing] = useState(null);
  // Status changes on its own (starts, crashes, retries): refresh it.
  useEffect(() => { const t = setInterval(() => list.reload(), 5000); return () => clearInterval(t); }, [list.reload]);
  const servers = list.data || [];
  return html`<section class="page">
    <${PageHeader} title="MCP servers">
      ${canWrite(user) ? html`<button type="button" class="primary" onClick=${() => setEditing({})}>Add a server</button>` : null}
    </${PageHeader}>
    <${ErrorNote} error=${list.error || connectError} onRetry=${list.error ? list.reload : undefined} />
    ${connected ? html`<div class="note ok" role="status">Connected <strong>${connected}</strong>.</div>` : null}
    <table class="table mcp-table">
      <thead><tr><th>Name</th><th>State</th><th>Tools</th><th>Transport</th><th>Scope</th><th><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>
      ${servers.map((s) => html`<tr key=${s.id}>
        <td><strong>${s.name}</strong>${!s.enabled ? html` <span class="badge">disabled</span>` : null}</td>
        <td><span class=${'badge state-' + s.status.state}>${s.status.state}</span>
          ${s.status.last_error ? html`<br /><small class="bad">${s.status.last_error}</small>` : null}
          ${s.status.retry_at ? html`<br /><small class="muted">retry ${when(s.status.retry_at)}</small>` : null}
          ${s.status.restarts ? html`<br /><small class="muted">${s.status.restarts} restart${s.status.restarts === 1 ? '' : 's'}</small>` : null}
          ${s.oauth_connection ? html`<br /><span class=${'badge oauth-' + s.oauth_connection.state} data-testid="oauth-state">${{ connected: 'signed in', expired: 'sign-in expired', not_connected: 'not signed in' }[s.oauth_connection.state] || s.oauth_connection.state}</span>` : null}</td>
        <td>${s.status.tool_count}</td>
        <td><small class="mono">${s.transport === 'stdio' ? [s.command, ...s.args].join(' ') : s.url}</small></td>
        <td>${s.owner_id ? 'personal' : s.oauth_per_user ? html`server-wide<br /><small class="muted">each user signs in</small>` : 'server-wide'}</td>
        <td><div class="row">
          ${canWrite(user) && (s.owner_id === user.id || isAdmin(user) || s.oauth_per_user) && s.oauth_connection ? html`
            <${Action} kind=${s.oauth_connection.state === 'connected' ? 'small' : 'small primary'} label=${(s.oauth_connection.state === 'connected' ? 'Reconnect ' : 'Connect ') + s.name}
              run=${async () => { setConnectError(null); try { await connectServer(s.id); } catch (err) { setConnectError(err); } }}>${s.oauth_connection.state === 'connected' ? 'Reconnect' : s.oauth_per_user ? 'Connect your account' : 'Connect'}</${Action}>
            ${s.oauth_per_user && s.oauth_connection.state !== 'not_connected' ? html`<${Action} kind="small" label=${'Sign out of ' + s.name}
              run=${async () => { await api.del(`/api/v1/mcp-servers/${s.id}/oauth`); list.reload(); }}>Sign out</${Action}>` : null}` : null}
          ${canWrite(user) && (s.owner_id === user.id || isAdmin(user)) ? html`
            <${Action} kind="small" run=${async () => { await api.post(`/api/v1/mcp-servers/${s.id}/restart`); list.reload(); }}>Restart</${Action}>
            <button type="button" class="small" onClick=${() => setEditing(s)}>Edit</button>
            <${Action} kind="small danger" confirm=${`Delete the MCP server ${s.name}?`} run=${async () => { await api.del('/api/v1/mcp-servers/' + s.id); list.reload(); }}>Delete</${Action}>` : null}
        </div></td>
      </tr>`)}
      </tbody>
    </table>
    ${list.data && !servers.length ? html`<p class="muted">No MCP server yet. Their tools join the catalogue as <code>name__tool</code>.</p>` : null}
    <${Connect} />
    ${editing ? html`<${ServerForm} server=${editing} onClose=${() => setEditing(null)} onDone=${() => { setEditing(null); list.reload(); }} />` : null}
  </section>`;
}

function ServerForm({ server, onClose, onDone }) {
  const { user } = useSession();
  const editing = !!server.id;
  const [form, setForm] = useState({
    name: server.name || '', transport: server.transport || (isAdmin(user) ? 'stdio' : 'http'),
    command: server.command || '', args: (server.args || []).join('\n'), url: server.url || '',
    bearer_token: '', oauth: !!server.oauth, oauth_per_user: !!server.oauth_per_user, env: pretty(server.env || {}), headers: '{}', expose: server.expose ?? true,
    enabled: server.enabled ?? true, personal: !!server.owner_id, timeout_secs: server.timeout_secs || '',
  });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const body = { expose: form.expose, enabled: form.enabled };
      if (form.timeout_secs) body.timeout_secs = Number(form.timeout_secs);
      if (form.transport === 'stdio') {
        body.command = form.command;
        body.args = form.args.split('\n').map((a) => a.trim()).filter(Boolean);
        body.env = JSON.parse(form.env || '{}');
      } else {
        body.url = form.url;
        body.oauth = form.oauth;
        if (isAdmin(user) && !form.personal && !(editing && server.owner_id)) body.oauth_per_user = form.oauth && form.oauth_per_user;
        if (form.bearer_token && !form.oauth) body.bearer_token = form.bearer_token;
        const headers = JSON.parse(form.headers || '{}');
        if (Object.keys(headers).length) body.headers = headers;
      }
      if (editing) await api.patch('/api/v1/mcp-servers/' + server.id, body);
      else await api.post('/api/v1/mcp-servers', { ...body, name: form.name, transport: form.transport, personal: form.personal });
      onDone();
    } catch (err) { setError(err instanceof SyntaxError ? { message: 'Environment and headers must be JSON objects: ' + err.message } : err); }
  };
  return html`<${Modal} title=${editing ? 'Edit ' + server.name : 'Add an MCP server'} onClose=${onClose} wide>
    <form onSubmit=${submit}>
      <div class="grid2">
        <${Field} label="Name" hint="The namespace of its tools: a-z, 0-9, _ and -"><input required disabled=${editing} pattern="[a-z0-9][a-z0-9_\\-]{0,31}" value=${form.name} onInput=${set('name')} /></${Field}>
        <${Field} label="Transport"><select disabled=${editing} value=${form.transport} onChange=${set('transport')}>
          ${isAdmin(user) ? html`<option value="stdio">stdio (a program on this server)</option>` : null}
          <option value="http">Streamable HTTP (a URL)</option></select></${Field}>
      </div>
      ${form.transport === 'stdio' ? html`
        <${Field} label="Command"><input required value=${form.command} onInput=${set('command')} placeholder="npx" /></${Field}>
        <${Field} label="Arguments (one per line)"><textarea rows="3" value=${form.args} onInput=${set('args')} placeholder="-y\n@modelcontextprotocol/server-everything"></textarea></${Field}>
        <${Field} label="Environment (JSON)" hint='Values are text, or {"secret": "NAME"} to pass a stored secret.'><textarea class="code" rows="3" value=${form.env} onInput=${set('env')}></textarea></${Field}>`
      : html`
        <${Field} label="URL"><input type="url" required value=${form.url} onInput=${set('url')} placeholder="https://example.com/mcp" /></${Field}>
        <label class="check"><input type="checkbox" checked=${form.oauth} onChange=${set('oauth')} /> Sign in with OAuth (the server asks for it; you connect it after adding it)</label>
        ${form.oauth && isAdmin(user) && !form.personal && !(editing && server.owner_id) ? html`<label class="check"><input type="checkbox" checked=${form.oauth_per_user} onChange=${set('oauth_per_user')} /> Each user signs in with their own account (otherwise you connect one account for everyone)</label>` : null}
        ${form.oauth ? null : html`<${Field} label="Bearer token" hint=${server.has_bearer_token ? 'One is set; leave empty to keep it.' : 'Optional; stored encrypted.'}><input type="password" autocomplete="off" value=${form.bearer_token} onInput=${set('bearer_token')} /></${Field}>`}
        <${Field} label="Extra headers (JSON)" hint="Stored encrypted; only their names are shown."><textarea class="code" rows="2" value=${form.headers} onInput=${set('headers')}></textarea></${Field}>`}
      <div class="grid3">
        <${Field} label="Timeout per call (s)"><input type="number" min="1" value=${form.timeout_secs} onInput=${set('timeout_secs')} /></${Field}>
        <label class="check"><input type="checkbox" checked=${form.expose} onChange=${set('expose')} /> Offer its tools on /mcp</label>
        <label class="check"><input type="checkbox" checked=${form.enabled} onChange=${set('enabled')} /> Enabled</label>
      </div>
      ${isAdmin(user) && !editing ? html`<label class="check"><input type="checkbox" checked=${form.personal} onChange=${set('personal')} /> Only for me (otherwise every user gets its tools)</label>` : null}
      <${ErrorNote} error=${error} />
      <div class="row end"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">${editing ? 'Save' : 'Add'}</button></div>
    </form>
  </${Modal}>`;
}

function Connect() {
  const url = location.origin + '/mcp';
  const claude = pretty({ mcpServers: { orchestra: { command: 'npx', args: ['-y', 'mcp-remote', url, '--header', 'Authorization: Bearer ${ORCHESTRA_API_KEY}'], env: { ORCHESTRA_API_KEY: 'orc_...' } } } });
  const cursor = pretty({ mcpServers: { orchestra: { url, headers: { Authorization: 'Bearer orc_...' } } } });
  return html`<section class="card connect">
    <h2>Use Orchestra's tools from another MCP client</h2>
    <p>This server speaks MCP at <code>${url}</code> <${CopyButton} text=${url} />. Clients that sign in (the MCP authorization flow) need only that URL: you approve them here, and see them under <${Link} href="/account">Account</${Link}>. Others use an <${Link} href="/account">API key</${Link}> as a bearer token. Your tools and agents are offered there.</p>
    <div class="grid2">
      <div><h3>Claude Desktop</h3><pre>${claude}</pre><${CopyButton} text=${claude} label="Copy configuration" /></div>
      <div><h3>Cursor</h3><pre>${cursor}</pre><${CopyButton} text=${cursor} label="Copy configuration" /></div>
    </div>
  </section>`;
}
