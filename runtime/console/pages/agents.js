// Agents: the list, the editor (model and tool pickers, approvals,
// limits), clone, delete, and revisions with a side-by-side difference.

import { html, useState, useEffect, useMemo, useSession, useLoad, ErrorNote, Link, navigate, when, PageHeader, Field, Action, Modal, pretty, canWrite } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Agents() {
  const { user } = useSession();
  const [q, setQ] = useState('');
  const list = useLoad(() => api.get('/api/v1/agents' + api.qs({ q, page_size: 100, sort: '-updated_at' })), [q]);
  return html`<section class="page">
    <${PageHeader} title="Agents">
      ${canWrite(user) ? html`<${Link} href="/agents/new" class="button primary">New agent</${Link}>` : null}
    </${PageHeader}>
    <input type="search" class="filter" placeholder="Search agents" aria-label="Search agents" value=${q} onInput=${(e) => setQ(e.target.value)} />
    <${ErrorNote} error=${list.error} onRetry=${list.reload} />
    <ul class="cards">
      ${(list.data?.items || []).map((a) => html`<li class="card agent-card" key=${a.id}>
        <h2><${Link} href=${'/agents/' + a.id}>${a.name}</${Link}></h2>
        <p class="muted">${a.description || 'No description'}</p>
        <p><small>${a.model.provider}/${a.model.model} · ${a.tools.length} tool${a.tools.length === 1 ? '' : 's'} · v${a.version} · ${when(a.updated_at)}</small></p>
        <div class="row">
          ${canWrite(user) ? html`<button type="button" class="small" onClick=${async () => {
              const c = await api.post('/api/v1/conversations', { agent_id: a.id });
              navigate('/chat/' + c.id);
            }}>Chat</button>
            <${Action} kind="small" run=${async () => { await api.post(`/api/v1/agents/${a.id}/clone`, {}); list.reload(); }}>Clone</${Action}>
            <${Action} kind="small danger" confirm=${`Delete the agent "${a.name}"?`} run=${async () => { await api.del('/api/v1/agents/' + a.id); list.reload(); }}>Delete</${Action}>` : null}
        </div>
      </li>`)}
    </ul>
    ${list.data && !list.data.items.length ? html`<p class="muted">${q ? 'No agent matches.' : 'No agent yet. An agent is a model, instructions and the tools it may use.'}</p>` : null}
  </section>`;
}

/** The definition fields of an agent (the API shows them beside its id). */
const specOf = (a) => ({ name: a.name, description: a.description, instructions: a.instructions, model: a.model, tools: a.tools, config: a.config, metadata: a.metadata });

const BLANK = { name: '', description: '', instructions: 'You are a helpful assistant.', model: { provider: '', model: '', parameters: {} }, tools: [], config: {}, metadata: {} };

export function AgentEditor({ id }) {
  const { user } = useSession();
  const creating = id === 'new';
  const [spec, setSpec] = useState(creating ? BLANK : null);
  const [version, setVersion] = useState(null);
  const [error, setError] = useState(null);
  const [conflict, setConflict] = useState(false);
  const [saved, setSaved] = useState(false);
  const [showRevisions, setShowRevisions] = useState(false);
  const models = useLoad(() => api.get('/api/v1/models'), []);
  const tools = useLoad(() => api.get('/api/v1/tools'), []);
  const readOnly = !canWrite(user);

  const load = async () => {
    const a = await api.get('/api/v1/agents/' + id);
    setSpec(specOf(a));
    setVersion(a.version);
    setConflict(false);
    setError(null);
  };
  useEffect(() => { if (!creating) load().catch(setError); }, [id]);
  useEffect(() => {
    if (creating && models.data?.models.length && !spec.model.provider) {
      const m = models.data.models[0];
      setSpec((s) => ({ ...s, model: { ...s.model, provider: m.provider, model: m.model } }));
    }
  }, [models.data]);

  if (!spec) return html`<section class="page"><${ErrorNote} error=${error} />${error ? null : html`<p class="muted">Loading…</p>`}</section>`;

  const set = (field, value) => { setSpec((s) => ({ ...s, [field]: value })); setSaved(false); };
  const approval = spec.config.require_approval;
  const needsApproval = (name) => approval === true || approval === '*' || (Array.isArray(approval) && approval.includes(name));
  const toggleApproval = (name) => {
    const current = approval === true || approval === '*' ? [...spec.tools] : Array.isArray(approval) ? approval : [];
    const next = current.includes(name) ? current.filter((t) => t !== name) : [...current, name];
    const config = { ...spec.config };
    if (next.length) config.require_approval = next; else delete config.require_approval;
    set('config', config);
  };
  const toggleTool = (name) => set('tools', spec.tools.includes(name) ? spec.tools.filter((t) => t !== name) : [...spec.tools, name]);
  const limits = spec.config.limits || {};
  const setLimit = (key, raw) => {
    const config = { ...spec.config, limits: { ...limits } };
    if (raw === '') delete config.limits[key]; else config.limits[key] = Number(raw);
    if (!Object.keys(config.limits).length) delete config.limits;
    set('config', config);
  };

  const save = async (e) => {
    e.preventDefault();
    setError(null);
    const body = { ...spec, description: spec.description || null };
    try {
      if (creating) {
        const a = await api.post('/api/v1/agents', body);
        navigate('/agents/' + a.id, true);
      } else {
        const a = await api.put('/api/v1/agents/' + id, body, { headers: { 'If-Match': `"${version}"` } });
        setSpec(specOf(a));
        setVersion(a.version);
        setSaved(true);
      }
    } catch (err) {
      if (err.status === 409 || err.status === 412) setConflict(true);
      setError(err);
    }
  };

  const modelOptions = models.data?.models || [];
  const known = modelOptions.some((m) => m.provider === spec.model.provider && m.model === spec.model.model);
  const byTool = new Map((tools.data || []).map((t) => [t.name, t]));

  return html`<section class="page">
    <${PageHeader} title=${creating ? 'New agent' : spec.name || 'Agent'}>
      ${!creating ? html`<button type="button" onClick=${() => setShowRevisions(true)}>Revisions</button>` : null}
      <${Link} href="/agents" class="button">All agents</${Link}>
    </${PageHeader}>
    ${conflict ? html`<div class="note warn" role="alert">Someone else changed this agent since you opened it.
      <button type="button" class="link" onClick=${() => load()}>Reload their version</button> (your edits here are lost).</div>` : null}
    ${!conflict ? html`<${ErrorNote} error=${error} />` : null}
    ${saved ? html`<div class="note ok" role="status">Saved as version ${version}.</div>` : null}
    <form class="agent-form" onSubmit=${save}>
      <fieldset disabled=${readOnly}>
        <div class="grid2">
          <${Field} label="Name"><input required maxlength="200" value=${spec.name} onInput=${(e) => set('name', e.target.value)} /></${Field}>
          <${Field} label="Model" hint=${models.data?.unavailable?.length ? `Not reachable: ${models.data.unavailable.map((u) => u.provider).join(', ')}` : null}>
            <select value=${known ? `${spec.model.provider}\u0000${spec.model.model}` : ''} onChange=${(e) => {
                const [provider, model] = e.target.value.split('\u0000');
                set('model', { ...spec.model, provider, model });
              }}>
              ${!known ? html`<option value="">${spec.model.provider ? `${spec.model.provider}/${spec.model.model} (not listed)` : 'Choose a model'}</option>` : null}
              ${modelOptions.map((m) => html`<option value=${`${m.provider}\u0000${m.model}`}>${m.provider}/${m.model}</option>`)}
            </select>
          </${Field}>
        </div>
        <label class="check"><input type="checkbox" checked=${spec.config.vision !== false} onChange=${(e) => {
            const config = { ...spec.config };
            if (e.target.checked) delete config.vision; else config.vision = false;
            set('config', config);
          }} /> <span>The model sees images <small class="muted">(yours, and those tools return; off for text-only models, which get a description)</small></span></label>
        ${!modelOptions.length && models.data ? html`<p class="note warn">No model is available. <${Link} href="/models">Add a provider</${Link}> first.</p>` : null}
        <${Field} label="Description"><input maxlength="2000" value=${spec.description || ''} onInput=${(e) => set('description', e.target.value)} /></${Field}>
        <${Field} label="Instructions" hint="The system prompt: who the agent is and how it works.">
          <textarea class="instructions" rows="12" value=${spec.instructions} onInput=${(e) => set('instructions', e.target.value)}></textarea>
        </${Field}>
        <fieldset class="tools-picker">
          <legend>Tools (${spec.tools.length} chosen)</legend>
          ${tools.error ? html`<${ErrorNote} error=${tools.error} />` : null}
          <ul>
            ${(tools.data || []).map((t) => html`<li key=${t.name} class=${spec.tools.includes(t.name) ? 'chosen' : ''}>
              <label class="check"><input type="checkbox" checked=${spec.tools.includes(t.name)} onChange=${() => toggleTool(t.name)} />
                <span><strong>${t.name}</strong> <small class="muted">${t.source.kind === 'plugin' ? 'plugin' : 'MCP ' + t.source.server}</small>
                ${t.destructive ? html` <span class="badge error">destructive</span>` : t.read_only ? html` <span class="badge">read-only</span>` : null}
                <br /><small>${t.description}</small></span></label>
              ${spec.tools.includes(t.name) ? html`<label class="check approval-toggle"><input type="checkbox" checked=${needsApproval(t.name)} onChange=${() => toggleApproval(t.name)} /> Ask me before each call</label>` : null}
              <details><summary>Input schema</summary><pre>${pretty(t.input_schema)}</pre></details>
            </li>`)}
            ${spec.tools.filter((n) => !byTool.has(n)).map((n) => html`<li key=${n} class="chosen missing">
              <label class="check"><input type="checkbox" checked onChange=${() => toggleTool(n)} /> <span><strong>${n}</strong> <small class="bad">not in the catalogue now</small></span></label></li>`)}
          </ul>
        </fieldset>
        <fieldset class="limits">
          <legend>Limits per run (empty: the server's)</legend>
          <div class="grid3">
            <${Field} label="Most model calls"><input type="number" min="1" value=${limits.max_steps ?? ''} onInput=${(e) => setLimit('max_steps', e.target.value)} /></${Field}>
            <${Field} label="Most tokens"><input type="number" min="1" value=${limits.max_tokens ?? ''} onInput=${(e) => setLimit('max_tokens', e.target.value)} /></${Field}>
            <${Field} label="Time limit (seconds)"><input type="number" min="1" value=${limits.timeout_secs ?? ''} onInput=${(e) => setLimit('timeout_secs', e.target.value)} /></${Field}>
          </div>
        </fieldset>
        ${readOnly ? null : html`<div class="row end"><button type="submit" class="primary">${creating ? 'Create agent' : 'Save'}</button></div>`}
      </fieldset>
    </form>
    ${showRevisions ? html`<${Revisions} id=${id} current=${version} onClose=${() => setShowRevisions(false)}
        onRestore=${readOnly ? null : (s) => { setSpec(s); setShowRevisions(false); setSaved(false); }} />` : null}
  </section>`;
}

function Revisions({ id, current, onClose, onRestore }) {
  const list = useLoad(() => api.get(`/api/v1/agents/${id}/revisions?page_size=100`), [id]);
  const items = list.data?.items || [];
  const [left, setLeft] = useState(null);
  const [right, setRight] = useState(null);
  useEffect(() => {
    if (items.length && left === null) {
      setRight(items[0].version);
      setLeft(items[Math.min(1, items.length - 1)].version);
    }
  }, [items.length]);
  const a = items.find((r) => r.version === left);
  const b = items.find((r) => r.version === right);
  return html`<${Modal} title="Revisions" onClose=${onClose} wide>
    <${ErrorNote} error=${list.error} />
    <div class="row">
      <label>From <select value=${left ?? ''} onChange=${(e) => setLeft(Number(e.target.value))}>${items.map((r) => html`<option value=${r.version}>v${r.version} · ${when(r.created_at)}</option>`)}</select></label>
      <label>To <select value=${right ?? ''} onChange=${(e) => setRight(Number(e.target.value))}>${items.map((r) => html`<option value=${r.version}>v${r.version} · ${when(r.created_at)}</option>`)}</select></label>
    </div>
    ${a && b ? html`<${Diff} left=${pretty(a.spec)} right=${pretty(b.spec)} />` : null}
    ${onRestore && a && a.version !== current ? html`<div class="row end"><button type="button" class="primary" onClick=${() => onRestore(a.spec)}>Put v${a.version} in the editor</button></div>` : null}
  </${Modal}>`;
}

/** A side-by-side, line-by-line difference (longest common subsequence). */
function Diff({ left, right }) {
  const rows = useMemo(() => diffLines(left.split('\n'), right.split('\n')), [left, right]);
  return html`<div class="diff" role="table" aria-label="Difference">
    ${rows.map(([l, r, kind]) => html`<div class=${'diff-row ' + kind} role="row">
      <pre role="cell">${l ?? ''}</pre><pre role="cell">${r ?? ''}</pre></div>`)}
  </div>`;
}

function diffLines(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([a[i], b[j], 'same']); i++; j++; }
    else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push([null, b[j], 'added']); j++; }
    else { out.push([a[i], null, 'removed']); i++; }
  }
  return out;
}
