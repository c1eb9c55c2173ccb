// Models: providers (server-wide and personal), keys write-only, and a
// connection test that lists what the provider offers.

import { html, useState, useSession, useLoad, ErrorNote, PageHeader, Field, Action, Modal, isAdmin, canWrite, when } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Models() {
  const { user } = useSession();
  const list = useLoad(() => api.get('/api/v1/providers'), []);
  const [editing, setEditing] = useState(null);
  const [tested, setTested] = useState({});
  const test = async (name) => {
    setTested((t) => ({ ...t, [name]: { busy: true } }));
    try {
      const all = await api.get('/api/v1/models');
      const down = all.unavailable.find((u) => u.provider === name);
      setTested((t) => ({ ...t, [name]: down ? { error: down.reason } : { models: all.models.filter((m) => m.provider === name).map((m) => m.model) } }));
    } catch (e) { setTested((t) => ({ ...t, [name]: { error: e.message } })); }
  };
  const mine = (p) => isAdmin(user) || p.owner_id === user.id;
  return html`<section class="page">
    <${PageHeader} title="Models">
      ${canWrite(user) ? html`<button type="button" class="primary" onClick=${() => setEditing({})}>Add a provider</button>` : null}
    </${PageHeader}>
    <p class="muted">A provider is an API that serves models (OpenAI's or Anthropic's format, or any server that speaks one of them, such as a local one).</p>
    <${ErrorNote} error=${list.error} onRetry=${list.reload} />
    <ul class="cards">
      ${(list.data || []).map((p) => html`<li class="card" key=${p.name}>
        <h2>${p.name} <span class="badge">${p.kind}</span> <span class="badge">${p.owner_id ? 'personal' : 'server-wide'}</span></h2>
        <p><small class="muted">${p.base_url || 'the vendor’s API'} · ${p.has_api_key ? 'key set' : 'no key'} · ${p.source === 'environment' ? 'from the environment (read-only)' : when(p.updated_at)}</small></p>
        <p>${p.models.length ? 'Offers: ' + p.models.join(', ') : 'Offers every model the provider lists.'}</p>
        <div class="row">
          <${Action} kind="small" run=${() => test(p.name)}>Test connection</${Action}>
          ${canWrite(user) && mine(p) && p.source !== 'environment' ? html`
            <button type="button" class="small" onClick=${() => setEditing(p)}>Edit</button>
            <${Action} kind="small danger" confirm=${`Delete the provider ${p.name}? Agents that use it stop working.`} run=${async () => { await api.del('/api/v1/providers/' + p.name); list.reload(); }}>Delete</${Action}>` : null}
        </div>
        ${tested[p.name] ? html`<div class=${'note ' + (tested[p.name].error ? 'error' : tested[p.name].busy ? '' : 'ok')} role="status">
          ${tested[p.name].busy ? 'Testing…' : tested[p.name].error ? 'Not reachable: ' + tested[p.name].error : `Reachable: ${tested[p.name].models.length} model${tested[p.name].models.length === 1 ? '' : 's'}: ${tested[p.name].models.slice(0, 20).join(', ')}`}
        </div>` : null}
      </li>`)}
    </ul>
    ${list.data && !list.data.length ? html`<p class="note warn">No provider yet: add one so that agents have a model.</p>` : null}
    ${editing ? html`<${ProviderForm} provider=${editing} onClose=${() => setEditing(null)} onDone=${() => { setEditing(null); list.reload(); }} />` : null}
  </section>`;
}

function ProviderForm({ provider, onClose, onDone }) {
  const { user } = useSession();
  const editing = !!provider.name;
  const [form, setForm] = useState({ name: provider.name || '', kind: provider.kind || 'openai', base_url: provider.base_url || '', api_key: '', models: (provider.models || []).join(', '), personal: !isAdmin(user) });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const models = form.models.split(',').map((m) => m.trim()).filter(Boolean);
    try {
      if (editing) {
        const body = { models };
        if (form.base_url) body.base_url = form.base_url;
        if (form.api_key) body.api_key = form.api_key;
        await api.patch('/api/v1/providers/' + provider.name, body);
      } else {
        await api.post('/api/v1/providers', { name: form.name, kind: form.kind, base_url: form.base_url || undefined, api_key: form.api_key || undefined, models, personal: form.personal });
      }
      onDone();
    } catch (err) { setError(err); }
  };
  return html`<${Modal} title=${editing ? 'Edit ' + provider.name : 'Add a provider'} onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} label="Name" hint="What agents name it: a-z, 0-9, _ and -"><input required disabled=${editing} pattern="[a-z0-9][a-z0-9_\\-]{0,63}" value=${form.name} onInput=${set('name')} /></${Field}>
      <${Field} label="Wire format"><select disabled=${editing} value=${form.kind} onChange=${set('kind')}><option value="openai">OpenAI</option><option value="anthropic">Anthropic</option></select></${Field}>
      <${Field} label="Base URL" hint="Empty: the vendor's public API."><input type="url" value=${form.base_url} onInput=${set('base_url')} placeholder=${form.kind === 'openai' ? 'https://api.openai.com/v1' : 'https://api.anthropic.com'} /></${Field}>
      <${Field} label="API key" hint=${editing && provider.has_api_key ? 'A key is set; leave empty to keep it. It is never shown.' : 'Stored encrypted; never shown again.'}><input type="password" autocomplete="off" value=${form.api_key} onInput=${set('api_key')} /></${Field}>
      <${Field} label="Models (comma-separated)" hint="Empty: whatever the provider lists."><input value=${form.models} onInput=${set('models')} /></${Field}>
      ${isAdmin(user) && !editing ? html`<label class="check"><input type="checkbox" checked=${form.personal} onChange=${set('personal')} /> Only for me (otherwise every user may use it)</label>` : null}
      <${ErrorNote} error=${error} />
      <div class="row end"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">${editing ? 'Save' : 'Add'}</button></div>
    </form>
  </${Modal}>`;
}
