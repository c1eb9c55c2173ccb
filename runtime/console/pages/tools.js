// Tools: the catalogue with a try-it form; for admins, plugins and secrets.

import { html, useState, useMemo, useSession, useLoad, ErrorNote, Link, PageHeader, Field, Action, Modal, JsonEditor, pretty, skeleton, isAdmin, canWrite, when } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Tools({ tab = 'catalogue' }) {
  const { user } = useSession();
  const tabs = [['catalogue', 'Catalogue']];
  if (isAdmin(user)) tabs.push(['plugins', 'Plugins'], ['secrets', 'Secrets']);
  return html`<section class="page">
    <${PageHeader} title="Tools" />
    <nav class="tabs" aria-label="Tools sections">
      ${tabs.map(([id, label]) => html`<${Link} href=${'/tools/' + id} aria-current=${tab === id ? 'page' : undefined}>${label}</${Link}>`)}
    </nav>
    ${tab === 'plugins' && isAdmin(user) ? html`<${Plugins} />` : tab === 'secrets' && isAdmin(user) ? html`<${Secrets} />` : html`<${Catalogue} />`}
  </section>`;
}

function Catalogue() {
  const { user } = useSession();
  const list = useLoad(() => api.get('/api/v1/tools'), []);
  const [q, setQ] = useState('');
  const [trying, setTrying] = useState(null);
  const shown = useMemo(() => (list.data || []).filter((t) => !q || (t.name + ' ' + t.description).toLowerCase().includes(q.toLowerCase())), [list.data, q]);
  return html`<div>
    <input type="search" class="filter" placeholder="Search tools" aria-label="Search tools" value=${q} onInput=${(e) => setQ(e.target.value)} />
    <${ErrorNote} error=${list.error} onRetry=${list.reload} />
    <ul class="cards">
      ${shown.map((t) => html`<li class="card" key=${t.name}>
        <h2 class="mono">${t.name}</h2>
        <p><small class="muted">${t.source.kind === 'plugin' ? `plugin ${t.source.plugin} ${t.source.version}` : `MCP server ${t.source.server}`}</small>
          ${t.read_only ? html` <span class="badge">read-only</span>` : null}
          ${t.destructive ? html` <span class="badge error">destructive</span>` : null}
          ${t.idempotent ? html` <span class="badge">idempotent</span>` : null}</p>
        <p>${t.description}</p>
        <details><summary>Input schema</summary><pre>${pretty(t.input_schema)}</pre></details>
        ${t.output_schema ? html`<details><summary>Output schema</summary><pre>${pretty(t.output_schema)}</pre></details>` : null}
        ${canWrite(user) ? html`<button type="button" class="small" onClick=${() => setTrying(t)}>Try it</button>` : null}
      </li>`)}
    </ul>
    ${list.data && !shown.length ? html`<p class="muted">No tool${q ? ' matches' : ' yet'}.</p>` : null}
    ${trying ? html`<${TryIt} tool=${trying} onClose=${() => setTrying(null)} />` : null}
  </div>`;
}

function TryIt({ tool, onClose }) {
  const [args, setArgs] = useState(() => skeleton(tool.input_schema));
  const [problem, setProblem] = useState(null);
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = async (e) => {
    e.preventDefault();
    setBusy(true); setError(null); setResult(null);
    try { setResult(await api.post(`/api/v1/tools/${encodeURIComponent(tool.name)}/invoke`, { arguments: args })); } catch (err) { setError(err); } finally { setBusy(false); }
  };
  return html`<${Modal} title=${'Try ' + tool.name} onClose=${onClose} wide>
    <form onSubmit=${run}>
      <p class="muted">${tool.description}</p>
      <${SchemaForm} schema=${tool.input_schema} value=${args} onChange=${setArgs} />
      <${JsonEditor} key=${JSON.stringify(args)} label="Arguments (JSON)" value=${args} schema=${tool.input_schema} onValue=${(v, p) => { if (v !== undefined && !p) setArgs(v); setProblem(p); }} />
      <div class="row end"><button type="submit" class="primary" disabled=${busy || !!problem}>${busy ? 'Running…' : 'Run'}</button></div>
    </form>
    <${ErrorNote} error=${error} />
    ${result ? html`<div class="result"><h3>Result <small class="muted">${result.duration_ms.toFixed(1)} ms</small></h3><pre>${pretty(result.result)}</pre></div>` : null}
  </${Modal}>`;
}

/** Inputs for an object schema's top-level scalar properties. */
function SchemaForm({ schema, value, onChange }) {
  const props = Object.entries(schema?.properties || {}).filter(([, s]) => ['string', 'number', 'integer', 'boolean'].includes(s.type) || s.enum);
  if (!props.length) return null;
  const set = (k, v) => onChange({ ...value, [k]: v });
  return html`<div class="schema-form">${props.map(([k, s]) => {
    const label = `${k}${(schema.required || []).includes(k) ? ' *' : ''}`;
    if (s.enum) return html`<${Field} label=${label} hint=${s.description}><select value=${value[k] ?? ''} onChange=${(e) => set(k, e.target.value)}>${s.enum.map((o) => html`<option value=${o}>${o}</option>`)}</select></${Field}>`;
    if (s.type === 'boolean') return html`<label class="check"><input type="checkbox" checked=${!!value[k]} onChange=${(e) => set(k, e.target.checked)} /> ${label}</label>`;
    if (s.type === 'number' || s.type === 'integer') return html`<${Field} label=${label} hint=${s.description}><input type="number" step=${s.type === 'integer' ? 1 : 'any'} value=${value[k] ?? ''} onInput=${(e) => set(k, e.target.value === '' ? undefined : Number(e.target.value))} /></${Field}>`;
    return html`<${Field} label=${label} hint=${s.description}><input value=${value[k] ?? ''} onInput=${(e) => set(k, e.target.value)} /></${Field}>`;
  })}</div>`;
}

function Plugins() {
  const list = useLoad(() => api.get('/api/v1/plugins'), []);
  const [installing, setInstalling] = useState(false);
  const [editing, setEditing] = useState(null);
  return html`<div>
    <div class="row"><button type="button" class="primary" onClick=${() => setInstalling(true)}>Install a plugin</button></div>
    <${ErrorNote} error=${list.error} onRetry=${list.reload} />
    <ul class="cards">
      ${(list.data || []).map((p) => html`<li class="card" key=${p.name}>
        <h2>${p.name} <small class="muted">${p.version}</small> ${p.bundled ? html`<span class="badge">bundled</span>` : null}</h2>
        <p>${p.description}</p>
        <p><small class="muted">${p.tools.length} tool${p.tools.length === 1 ? '' : 's'} · ${p.source} · sha256 ${p.digest.slice(0, 12)}… · ${when(p.updated_at)}</small></p>
        <dl class="caps">
          <dt>Requested</dt><dd>${capText(p.requested)}</dd>
          <dt>Granted</dt><dd>${capText(p.granted)}</dd>
          <dt>Effective</dt><dd>${capText(p.effective)}</dd>
          <dt>Limits</dt><dd>${Math.round(p.limits.max_memory_bytes / 1048576)} MiB, ${p.limits.timeout_ms} ms, ${Math.round(p.limits.max_output_bytes / 1024)} KiB out${p.custom_limits ? ' (custom)' : ''}</dd>
        </dl>
        <div class="row">
          <button type="button" class="small" onClick=${() => setEditing(p)}>Grants and limits</button>
          ${!p.bundled ? html`<${Action} kind="small danger" confirm=${`Remove the plugin ${p.name}? Agents that use its tools lose them.`}
              run=${async () => { try { await api.del('/api/v1/plugins/' + p.name); } catch (e) { alert(e.message); } list.reload(); }}>Remove</${Action}>` : null}
        </div>
      </li>`)}
    </ul>
    ${installing ? html`<${Install} onClose=${() => setInstalling(false)} onDone=${() => { setInstalling(false); list.reload(); }} />` : null}
    ${editing ? html`<${Grants} plugin=${editing} onClose=${() => setEditing(null)} onDone=${() => { setEditing(null); list.reload(); }} />` : null}
  </div>`;
}

function capText(c) {
  if (!c) return 'nothing';
  const parts = [];
  if (c.http_hosts?.length) parts.push('HTTP: ' + c.http_hosts.join(', '));
  if (c.key_value) parts.push('key-value store');
  if (c.secrets?.length) parts.push('secrets: ' + c.secrets.join(', '));
  if (c.directories?.length) parts.push('directories: ' + c.directories.map((d) => (typeof d === 'string' ? d : `${d.host} → ${d.path}${d.writable ? " (writable)" : ""}`)).join(', '));
  if (c.private_networks?.length) parts.push('private networks: ' + c.private_networks.join(', '));
  return parts.join('; ') || 'nothing';
}

function Install({ onClose, onDone }) {
  const [mode, setMode] = useState('upload');
  const [file, setFile] = useState(null);
  const [url, setUrl] = useState('');
  const [sha, setSha] = useState('');
  const [upgrade, setUpgrade] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      const path = upgrade ? `/api/v1/plugins/${upgrade}/upgrade` : '/api/v1/plugins';
      if (mode === 'upload') await api.post(path, new Blob([await file.arrayBuffer()], { type: 'application/wasm' }), { headers: { 'Content-Type': 'application/wasm' } });
      else await api.post(path, { url, sha256: sha.trim() });
      onDone();
    } catch (err) { setError(err); } finally { setBusy(false); }
  };
  return html`<${Modal} title="Install a plugin" onClose=${onClose}>
    <form onSubmit=${submit}>
      <div class="row" role="radiogroup" aria-label="From">
        <label class="check"><input type="radio" name="from" checked=${mode === 'upload'} onChange=${() => setMode('upload')} /> Upload a .wasm component</label>
        <label class="check"><input type="radio" name="from" checked=${mode === 'url'} onChange=${() => setMode('url')} /> From a URL</label>
      </div>
      ${mode === 'upload'
        ? html`<${Field} label="Component file"><input type="file" accept=".wasm,application/wasm" required onChange=${(e) => setFile(e.target.files[0])} /></${Field}>`
        : html`<${Field} label="URL (https)"><input type="url" required value=${url} onInput=${(e) => setUrl(e.target.value)} /></${Field}>
            <${Field} label="SHA-256 of the file" hint="The download is refused unless it matches."><input required pattern="[0-9a-fA-F]{64}" value=${sha} onInput=${(e) => setSha(e.target.value)} /></${Field}>`}
      <${Field} label="Upgrade an installed plugin (optional)" hint="Its name; empty installs a new plugin."><input value=${upgrade} onInput=${(e) => setUpgrade(e.target.value.trim())} /></${Field}>
      <p class="muted">A new plugin starts with no capability: grant what it asks for afterwards.</p>
      <${ErrorNote} error=${error} />
      <div class="row end"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary" disabled=${busy}>${busy ? 'Installing…' : 'Install'}</button></div>
    </form>
  </${Modal}>`;
}

function Grants({ plugin, onClose, onDone }) {
  const [grants, setGrants] = useState(plugin.granted);
  const [limits, setLimits] = useState(plugin.custom_limits ? plugin.limits : null);
  const [problem, setProblem] = useState(null);
  const [error, setError] = useState(null);
  const save = async (e) => {
    e.preventDefault();
    try { await api.patch('/api/v1/plugins/' + plugin.name, { grants, limits }); onDone(); } catch (err) { setError(err); }
  };
  return html`<${Modal} title=${'Grants of ' + plugin.name} onClose=${onClose} wide>
    <form onSubmit=${save}>
      <p>It asks for: ${capText(plugin.requested)}.</p>
      <button type="button" class="small" onClick=${() => setGrants({ ...grants, http_hosts: plugin.requested.http_hosts, key_value: plugin.requested.key_value, secrets: plugin.requested.secrets })}>Grant what it asks (except directories)</button>
      <${JsonEditor} key=${JSON.stringify(grants)} label="Granted (JSON)" value=${grants} rows=${10} onValue=${(v, p) => { if (v !== undefined) setGrants(v); setProblem(p); }} />
      <${JsonEditor} label="Custom limits (JSON; null for the server's)" value=${limits} rows=${6} onValue=${(v, p) => { if (v !== undefined) setLimits(v); setProblem(p); }} />
      <${ErrorNote} error=${error} />
      <div class="row end"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary" disabled=${!!problem}>Save</button></div>
    </form>
  </${Modal}>`;
}

function Secrets() {
  const list = useLoad(() => api.get('/api/v1/secrets'), []);
  const [name, setName] = useState('');
  const [value, setValue] = useState('');
  const [error, setError] = useState(null);
  const save = async (e) => {
    e.preventDefault();
    setError(null);
    try { await api.put('/api/v1/secrets/' + encodeURIComponent(name), { value }); setName(''); setValue(''); list.reload(); } catch (err) { setError(err); }
  };
  return html`<div>
    <p class="muted">Values are stored encrypted and never shown again. Plugins read the secrets they are granted; MCP servers get them as environment variables.</p>
    <form class="row wrap" onSubmit=${save}>
      <${Field} label="Name"><input required pattern="[A-Za-z0-9_.\\-]{1,64}" value=${name} onInput=${(e) => setName(e.target.value)} /></${Field}>
      <${Field} label="Value"><input type="password" required autocomplete="off" value=${value} onInput=${(e) => setValue(e.target.value)} /></${Field}>
      <button type="submit" class="primary">Set</button>
    </form>
    <${ErrorNote} error=${error || list.error} />
    <table class="table"><thead><tr><th>Name</th><th>Updated</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
      ${(list.data || []).map((s) => html`<tr key=${s.name}><td class="mono">${s.name}</td><td>${when(s.updated_at)}</td>
        <td><${Action} kind="small danger" confirm=${`Delete the secret ${s.name}?`} run=${async () => { await api.del('/api/v1/secrets/' + encodeURIComponent(s.name)); list.reload(); }}>Delete</${Action}></td></tr>`)}
    </tbody></table>
  </div>`;
}
