// The console's entry: the session, the router and the shell around pages.

import { html, render, useState, useEffect, Session, Link, navigate } from './lib/ui.js';
import * as api from './lib/api.js';
import { SignIn } from './pages/signin.js';
import { Chat } from './pages/chat.js';
import { Agents, AgentEditor } from './pages/agents.js';
import { Tools } from './pages/tools.js';
import { McpServers, OAuthCallback } from './pages/mcp.js';
import { Models } from './pages/models.js';
import { Account } from './pages/account.js';
import { Usage } from './pages/usage.js';
import { Admin } from './pages/admin.js';
import { Consent } from './pages/consent.js';

const NAV = [
  ['/chat', 'Chat'],
  ['/agents', 'Agents'],
  ['/tools', 'Tools'],
  ['/mcp-servers', 'MCP servers'],
  ['/models', 'Models'],
  ['/usage', 'Usage'],
  ['/account', 'Account'],
];

function route(path) {
  const parts = path.split('/').filter(Boolean);
  switch (parts[0]) {
    case undefined: case 'chat': return { page: 'chat', id: parts[1] };
    case 'agents': return parts[1] ? { page: 'agent', id: parts[1] } : { page: 'agents' };
    case 'tools': return { page: 'tools', tab: parts[1] };
    case 'mcp-servers': return parts[1] === 'oauth-callback' ? { page: 'mcp-callback' } : { page: 'mcp' };
    case 'models': return { page: 'models' };
    case 'usage': return { page: 'usage' };
    case 'account': return { page: 'account' };
    case 'admin': return { page: 'admin', tab: parts[1] };
    default: return { page: 'missing' };
  }
}

function App() {
  const [session, setSession] = useState(undefined); // undefined: checking
  const [path, setPath] = useState(location.pathname);
  const [menu, setMenu] = useState(false);

  useEffect(() => {
    const pop = () => { setPath(location.pathname); setMenu(false); };
    addEventListener('popstate', pop);
    api.whenSignedOut(() => setSession(null));
    api.refresh().then((s) => setSession(s ? s.user : null), () => setSession(null));
    return () => removeEventListener('popstate', pop);
  }, []);

  if (session === undefined) return html`<p class="boot">Loading Orchestra…</p>`;
  if (session === null) return html`<${SignIn} onSignedIn=${(s) => setSession(s.user)} />`;

  const user = session;
  const r = route(path);
  const signOut = async () => { await api.signOut(); setSession(null); navigate('/', true); };
  // An application's request for approval: a page of its own, no shell.
  if (path === '/oauth/consent') {
    return html`<${Consent} user=${user} signOut=${async () => { await api.signOut(); setSession(null); }} />`;
  }
  const ctx = { user, setUser: setSession, signOut };
  const nav = user.role === 'admin' ? [...NAV, ['/admin', 'Admin']] : NAV;
  const current = '/' + (path.split('/')[1] || 'chat');

  let page;
  switch (r.page) {
    case 'chat': page = html`<${Chat} id=${r.id} />`; break;
    case 'agents': page = html`<${Agents} />`; break;
    case 'agent': page = html`<${AgentEditor} id=${r.id} />`; break;
    case 'tools': page = html`<${Tools} tab=${r.tab} />`; break;
    case 'mcp': page = html`<${McpServers} />`; break;
    case 'mcp-callback': page = html`<${OAuthCallback} />`; break;
    case 'models': page = html`<${Models} />`; break;
    case 'usage': page = html`<${Usage} />`; break;
    case 'account': page = html`<${Account} />`; break;
    case 'admin': page = html`<${Admin} tab=${r.tab} />`; break;
    default: page = html`<section class="page"><h1>Not found</h1><p>No page at ${path}. <${Link} href="/chat">Go to the chat</${Link}>.</p></section>`;
  }

  return html`<${Session.Provider} value=${ctx}>
    <a class="skip" href="#main">Skip to content</a>
    <div class=${'shell' + (menu ? ' menu-open' : '')}>
      <header class="topbar">
        <button type="button" class="icon menu-button" aria-label="Menu" aria-expanded=${menu} onClick=${() => setMenu(!menu)}>☰</button>
        <${Link} href="/chat" class="brand"><img src="/assets/icon.svg" alt="" width="24" height="24" /> Orchestra</${Link}>
      </header>
      <nav class="sidebar" aria-label="Main">
        <${Link} href="/chat" class="brand wide-only"><img src="/assets/icon.svg" alt="" width="24" height="24" /> Orchestra</${Link}>
        <ul>
          ${nav.map(([href, label]) => html`<li><${Link} href=${href} aria-current=${current === href ? 'page' : undefined}>${label}</${Link}></li>`)}
        </ul>
        <div class="whoami">
          <span title=${user.email}>${user.display_name || user.email}</span>
          <small>${user.role}</small>
          <button type="button" class="small" onClick=${signOut}>Sign out</button>
        </div>
      </nav>
      <main id="main" tabindex="-1">${page}</main>
    </div>
  </${Session.Provider}>`;
}

render(html`<${App} />`, document.getElementById('app'));
