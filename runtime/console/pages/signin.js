// Sign in, create an account, or (on a new server) create the admin.

import { html, useState, useEffect, ErrorNote, Field } from '../lib/ui.js';
import * as api from '../lib/api.js';

export function SignIn({ onSignedIn }) {
  const [setup, setSetup] = useState(null);
  const [mode, setMode] = useState('signin');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [name, setName] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    document.title = 'Sign in · Orchestra';
    fetch('/api/v1/auth/setup').then((r) => r.json()).then((s) => {
      setSetup(s);
      if (s.needs_admin) setMode('admin');
    }).catch(() => setSetup({ needs_admin: false, registration: 'closed' }));
  }, []);

  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const s = mode === 'signin' ? await api.signIn(email, password) : await api.register(email, password, name);
      onSignedIn(s);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const creating = mode !== 'signin';
  const title = mode === 'admin' ? 'Create the admin account' : creating ? 'Create an account' : 'Sign in to Orchestra';
  return html`<main class="signin" id="main">
    <form class="card" onSubmit=${submit} aria-labelledby="signin-title">
      <img src="/assets/icon.svg" alt="" width="40" height="40" />
      <h1 id="signin-title">${title}</h1>
      ${mode === 'admin' ? html`<p class="muted">This server has no account yet. The first account is its administrator.</p>` : null}
      <${ErrorNote} error=${error} />
      ${creating ? html`<${Field} label="Name (optional)"><input autocomplete="name" value=${name} onInput=${(e) => setName(e.target.value)} /></${Field}>` : null}
      <${Field} label="Email"><input type="email" required autocomplete="username" value=${email} onInput=${(e) => setEmail(e.target.value)} /></${Field}>
      <${Field} label="Password" hint=${creating ? '8 characters or more' : null}>
        <input type="password" required minlength=${creating ? 8 : undefined} autocomplete=${creating ? 'new-password' : 'current-password'} value=${password} onInput=${(e) => setPassword(e.target.value)} />
      </${Field}>
      <button type="submit" class="primary" disabled=${busy}>${busy ? 'Please wait…' : creating ? 'Create account' : 'Sign in'}</button>
      ${setup && !setup.needs_admin && setup.registration === 'open' ? html`<p class="muted">
        ${creating
          ? html`Have an account? <button type="button" class="link" onClick=${() => setMode('signin')}>Sign in</button>`
          : html`New here? <button type="button" class="link" onClick=${() => setMode('register')}>Create an account</button>`}
      </p>` : null}
    </form>
  </main>`;
}
