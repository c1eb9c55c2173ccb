// Admin: users (create, role, disable, reset password), the registration
// setting, and the audit log with filters.

import { html, useState, useLoad, ErrorNote, Link, PageHeader, Field, Action, Modal, when, pretty } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function Admin({ tab = 'users' }) {
  return html`<section class="page">
    <${PageHeader} title="Admin" />
    <nav class="tabs" aria-label="Admin sections">
      ${[['users', 'Users'], ['settings', 'Settings'], ['audit', 'Audit log']].map(([id, label]) => html`<${Link} href=${'/admin/' + id} aria-current=${tab === id ? 'page' : undefined}>${label}</${Link}>`)}
    </nav>
    ${tab === 'settings' ? html`<${Settings} />` : tab === 'audit' ? html`<${Audit} />` : html`<${Users} />`}
  </section>`;
}

function Users() {
  const [page, setPage] = useState(1);
  const list = useLoad(() => api.get('/api/v1/users' + api.qs({ page, page_size: 50 })), [page]);
  const [creating, setCreating] = useState(false);
  const [resetting, setResetting] = useState(null);
  const [error, setError] = useState(null);
  const update = async (u, body) => {
    setError(null);
    try { await api.patch('/api/v1/users/' + u.id, body); list.reload(); } catch (e) { setError(e); }
  };
  return html`<div>
    <div class="row"><button type="button" class="primary" onClick=${() => setCreating(true)}>Create a user</button></div>
    <${ErrorNote} error=${error || list.error} />
    <table class="table"><thead><tr><th>User</th><th>Role</th><th>Status</th><th>Last sign-in</th><th><span class="sr-only">Actions</span></th></tr></thead><tbody>
      ${(list.data?.items || []).map((u) => html`<tr key=${u.id}>
        <td>${u.display_name ? html`${u.display_name}<br /><small class="muted">${u.email}</small>` : u.email}</td>
        <td><label class="sr-only" for=${'role-' + u.id}>Role of ${u.email}</label>
          <select id=${'role-' + u.id} value=${u.role} onChange=${(e) => update(u, { role: e.target.value })}>
          <option value="admin">admin</option><option value="user">user</option><option value="viewer">viewer</option></select></td>
        <td>${u.is_active ? 'active' : html`<span class="badge error">disabled</span>`}</td>
        <td>${u.last_login_at ? when(u.last_login_at) : 'never'}</td>
        <td><div class="row"><button type="button" class="small" onClick=${() => update(u, { is_active: !u.is_active })}>${u.is_active ? 'Disable' : 'Enable'}</button>
          <button type="button" class="small" onClick=${() => setResetting(u)}>Reset password</button></div></td>
      </tr>`)}
    </tbody></table>
    ${list.data && (page > 1 || list.data.has_more) ? html`<div class="pager">
      <button type="button" class="small" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Previous</button>
      <span>Page ${page} of ${Math.ceil(list.data.total / 50)}</span>
      <button type="button" class="small" disabled=${!list.data.has_more} onClick=${() => setPage(page + 1)}>Next</button></div>` : null}
    ${creating ? html`<${CreateUser} onClose=${() => setCreating(false)} onDone=${() => { setCreating(false); list.reload(); }} />` : null}
    ${resetting ? html`<${ResetPassword} user=${resetting} onClose=${() => setResetting(null)} />` : null}
  </div>`;
}

function ResetPassword({ user, onClose }) {
  const [password, setPassword] = useState('');
  const [error, setError] = useState(null);
  const [done, setDone] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    try { await api.post(`/api/v1/users/${user.id}/password`, { password }); setDone(true); } catch (err) { setError(err); }
  };
  return html`<${Modal} title=${'Reset the password of ' + user.email} onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} label="New password" hint="8 characters or more. Every session of the user ends."><input type="password" required minlength="8" autocomplete="new-password" value=${password} onInput=${(e) => setPassword(e.target.value)} /></${Field}>
      <${ErrorNote} error=${error} />
      ${done ? html`<div class="note ok" role="status">Password set; the user's sessions have ended.</div>` : null}
      <div class="row end"><button type="button" onClick=${onClose}>${done ? 'Close' : 'Cancel'}</button>${done ? null : html`<button type="submit" class="primary">Set password</button>`}</div>
    </form>
  </${Modal}>`;
}

function CreateUser({ onClose, onDone }) {
  const [form, setForm] = useState({ email: '', password: '', display_name: '', role: 'user' });
  const [error, setError] = useState(null);
  const set = (k) => (e) => setForm({ ...form, [k]: e.target.value });
  const submit = async (e) => {
    e.preventDefault();
    try { await api.post('/api/v1/users', { ...form, display_name: form.display_name || undefined }); onDone(); } catch (err) { setError(err); }
  };
  return html`<${Modal} title="Create a user" onClose=${onClose}>
    <form onSubmit=${submit}>
      <${Field} label="Email"><input type="email" required value=${form.email} onInput=${set('email')} /></${Field}>
      <${Field} label="Name"><input value=${form.display_name} onInput=${set('display_name')} /></${Field}>
      <${Field} label="Initial password" hint="8 characters or more; tell the user to change it."><input type="password" required minlength="8" autocomplete="new-password" value=${form.password} onInput=${set('password')} /></${Field}>
      <${Field} label="Role"><select value=${form.role} onChange=${set('role')}><option value="user">user</option><option value="viewer">viewer</option><option value="admin">admin</option></select></${Field}>
      <${ErrorNote} error=${error} />
      <div class="row end"><button type="button" onClick=${onClose}>Cancel</button><button type="submit" class="primary">Create</button></div>
    </form>
  </${Modal}>`;
}

function Settings() {
  const settings = useLoad(() => api.get('/api/v1/admin/settings'), []);
  const [error, setError] = useState(null);
  const set = async (registration) => {
    setError(null);
    try { settings.setData(await api.patch('/api/v1/admin/settings', { registration })); } catch (e) { setError(e); }
  };
  return html`<div class="card">
    <h2>Registration</h2>
    <${ErrorNote} error=${error || settings.error} />
    ${settings.data ? html`<fieldset><legend>Who may create an account</legend>
      <label class="check"><input type="radio" name="registration" checked=${settings.data.registration === 'open'} onChange=${() => set('open')} /> Anyone who reaches this server</label>
      <label class="check"><input type="radio" name="registration" checked=${settings.data.registration === 'closed'} onChange=${() => set('closed')} /> Only admins, from the Users tab</label>
    </fieldset>` : null}
  </div>`;
}

function Audit() {
  const [action, setAction] = useState('');
  const [actor, setActor] = useState('');
  const [page, setPage] = useState(1);
  const list = useLoad(() => api.get('/api/v1/audit-log' + api.qs({ action, actor_id: actor, page, page_size: 50 })), [action, actor, page]);
  const [open, setOpen] = useState(null);
  return html`<div>
    <form class="row wrap" onSubmit=${(e) => e.preventDefault()}>
      <${Field} label="Action" hint="Exact, e.g. auth.login or agent.update"><input value=${action} onChange=${(e) => { setAction(e.target.value.trim()); setPage(1); }} /></${Field}>
      <${Field} label="Actor (user id)"><input value=${actor} onChange=${(e) => { setActor(e.target.value.trim()); setPage(1); }} /></${Field}>
    </form>
    <${ErrorNote} error=${list.error} />
    <table class="table"><thead><tr><th>When</th><th>Action</th><th>Actor</th><th>Target</th><th><span class="sr-only">Details</span></th></tr></thead><tbody>
      ${(list.data?.items || []).map((e) => html`<tr key=${e.id}>
        <td>${when(e.created_at)}</td><td class="mono">${e.action}</td>
        <td class="mono"><button type="button" class="link" onClick=${() => setActor(e.actor_id || '')}>${e.actor_id ? e.actor_id.slice(0, 8) : 'system'}</button></td>
        <td>${e.target_type ? `${e.target_type} ${e.target_id ? e.target_id.slice(0, 8) : ''}` : ''}</td>
        <td><button type="button" class="small" onClick=${() => setOpen(e)}>Details</button></td></tr>`)}
    </tbody></table>
    ${list.data ? html`<div class="pager"><button type="button" class="small" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Newer</button>
      <span>Page ${page}</span><button type="button" class="small" disabled=${!list.data.has_more} onClick=${() => setPage(page + 1)}>Older</button></div>` : null}
    ${open ? html`<${Modal} title=${open.action} onClose=${() => setOpen(null)}><pre>${pretty(open)}</pre></${Modal}>` : null}
  </div>`;
}
