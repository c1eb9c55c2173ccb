// Chat: conversations, the thread, live runs, tool cards and approvals.

import { html, useState, useEffect, useRef, useMemo, useCallback, useSession, useLoad, ErrorNote, Link, navigate, when, number, pretty, canWrite, JsonEditor, CopyButton, Modal } from '../lib/ui.js';
import * as api from '../lib/api.js';
import { renderMarkdown, highlightWithin } from '../lib/markdown.js';

const PAGE = 50;
const WINDOW = 300;
const FINAL = ['completed', 'failed', 'cancelled'];

export function Chat({ id }) {
  const { user } = useSession();
  const [q, setQ] = useState('');
  const [page, setPage] = useState(1);
  const [search, setSearch] = useState('');
  const list = useLoad(() => api.get('/api/v1/conversations' + api.qs({ q: search, page, page_size: 30 })), [search, page]);
  const agents = useLoad(() => api.get('/api/v1/agents?page_size=100'), []);
  const tools = useLoad(() => api.get('/api/v1/tools'), []);
  useEffect(() => { const t = setTimeout(() => { setSearch(q.trim()); setPage(1); }, 250); return () => clearTimeout(t); }, [q]);
  useEffect(() => { document.title = 'Chat · Orchestra'; }, []);

  const agentName = (aid) => agents.data?.items.find((a) => a.id === aid)?.name;
  const touched = useCallback(() => list.reload(), [list.reload]);

  return html`<section class=${'chat' + (id ? ' has-thread' : '')}>
    <aside class="conversations" aria-label="Conversations">
      <div class="conv-tools">
        ${canWrite(user) ? html`<${NewChat} agents=${agents.data?.items || []} onCreated=${(c) => { list.reload(); navigate('/chat/' + c.id); }} />` : null}
        <input type="search" placeholder="Search titles" aria-label="Search conversations by title" value=${q} onInput=${(e) => setQ(e.target.value)} />
      </div>
      <${ErrorNote} error=${list.error} onRetry=${list.reload} />
      <ul class="conv-list">
        ${(list.data?.items || []).map((c) => html`<li key=${c.id}>
          <${Link} href=${'/chat/' + c.id} aria-current=${c.id === id ? 'page' : undefined}>
            <span class="title">${c.title || 'Untitled conversation'}</span>
            <small>${agentName(c.agent_id) || 'agent'} · ${when(c.updated_at)}</small>
          </${Link}>
        </li>`)}
        ${list.data && !list.data.items.length ? html`<li class="muted empty">${search ? 'No conversation matches.' : 'No conversation yet.'}</li>` : null}
      </ul>
      ${list.data && (page > 1 || list.data.has_more) ? html`<div class="pager">
        <button type="button" class="small" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Newer</button>
        <span>Page ${page}</span>
        <button type="button" class="small" disabled=${!list.data.has_more} onClick=${() => setPage(page + 1)}>Older</button>
      </div>` : null}
    </aside>
    ${id
      ? html`<${Thread} key=${id} id=${id} agents=${agents.data?.items || []} tools=${tools.data || []} onTouched=${touched} />`
      : html`<div class="thread empty-thread">
          <h1>Chat</h1>
          ${agents.data && !agents.data.items.length
            ? html`<p>You have no agent yet. <${Link} href="/agents">Create an agent</${Link}> to start a conversation.</p>`
            : html`<p class="muted">Pick a conversation, or start a new one with one of your agents.</p>`}
        </div>`}
  </section>`;
}

function NewChat({ agents, onCreated }) {
  const [agent, setAgent] = useState('');
  const [error, setError] = useState(null);
  useEffect(() => { if (!agent && agents.length) setAgent(agents[0].id); }, [agents]);
  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try { onCreated(await api.post('/api/v1/conversations', { agent_id: agent })); } catch (err) { setError(err); }
  };
  if (!agents.length) return html`<${Link} href="/agents" class="button primary">Create an agent</${Link}>`;
  return html`<form class="new-chat" onSubmit=${create}>
    <label class="sr-only" for="new-chat-agent">Agent</label>
    <select id="new-chat-agent" value=${agent} onChange=${(e) => setAgent(e.target.value)}>
      ${agents.map((a) => html`<option value=${a.id}>${a.name}</option>`)}
    </select>
    <button type="submit" class="primary">New chat</button>
    <${ErrorNote} error=${error} />
  </form>`;
}

/** Tool cards from stored messages: calls with their results. */
function callsOf(messages) {
  const results = new Map();
  for (const m of messages) for (const p of m.content) if (p.type === 'tool_result') results.set(p.call_id, p);
  return results;
}

function Thread({ id, agents, tools, onTouched }) {
  const { user } = useSession();
  const [conv, setConv] = useState(null);
  const [messages, setMessages] = useState([]);
  const [older, setOlder] = useState(null); // cursor of older messages
  const [newer, setNewer] = useState(null); // cursor of newer ones, when the window left them
  const busy = useRef(false);
  const [runs, setRuns] = useState(new Map());
  const [live, setLive] = useState(null); // { run, text, calls: Map, lastSeq }
  const [error, setError] = useState(null);
  const [draft, setDraft] = useState('');
  const [sending, setSending] = useState(false);
  const scroller = useRef();
  const follow = useRef(null);
  const stick = useRef(true);

  const toolInfo = useMemo(() => new Map(tools.map((t) => [t.name, t])), [tools]);
  const agent = conv && agents.find((a) => a.id === conv.agent_id);

  const addMessages = (items) => setMessages((ms) => {
    const seen = new Set(ms.map((m) => m.id));
    const fresh = items.filter((m) => !seen.has(m.id));
    return fresh.length ? [...ms, ...fresh] : ms;
  });

  const loadRuns = async () => {
    const page = await api.get(`/api/v1/conversations/${id}/runs?page_size=100`);
    setRuns(new Map(page.items.map((r) => [r.id, r])));
    return page.items;
  };

  const startFollowing = (run, after = 0) => {
    follow.current?.abort();
    const controller = new AbortController();
    follow.current = controller;
    setLive({ run, text: '', calls: new Map(), lastSeq: after });
    const onEvent = (ev) => {
      setLive((l) => {
        if (!l || l.run.id !== run.id) return l;
        const next = { ...l, lastSeq: ev.seq };
        switch (ev.type) {
          case 'message.delta': next.text = l.text + (ev.data.text || ''); break;
          case 'message.completed': next.text = ''; break;
          case 'tool_call.started': case 'tool_call.completed': {
            const calls = new Map(l.calls);
            calls.set(ev.data.call_id, { ...(calls.get(ev.data.call_id) || {}), ...ev.data, done: ev.type === 'tool_call.completed' });
            next.calls = calls;
            break;
          }
          case 'approval.required': next.run = { ...l.run, status: 'requires_action', pending_tool_calls: ev.data.tool_calls }; break;
          case 'run.status': next.run = { ...l.run, status: ev.data.status, error: ev.data.error || l.run.error }; break;
          default: break;
        }
        return next;
      });
      if (ev.type === 'message.completed' && ev.data.message) {
        // Its seq is assigned when stored; the list is refreshed at the end.
        addMessages([{ ...ev.data.message, seq: Infinity, created_at: new Date().toISOString() }]);
      }
      if (['approval.required', 'elicitation.required', 'elicitation.answered', 'done'].includes(ev.type)) refreshRun(run.id);
    };
    api.followRun(run.id, after, onEvent, controller.signal).then(async () => {
      if (controller.signal.aborted) return;
      await settle(run.id);
    }, (e) => { if (!controller.signal.aborted) setError(e); });
  };

  const refreshRun = async (runId) => {
    const r = await api.get('/api/v1/runs/' + runId).catch(() => null);
    if (!r) return;
    setRuns((m) => new Map(m).set(r.id, r));
    setLive((l) => (l && l.run.id === r.id ? { ...l, run: r } : l));
  };

  const settle = async (runId) => {
    await refreshRun(runId);
    // Stored messages replace the streamed copies (with their real seq).
    const page = await api.get(`/api/v1/conversations/${id}/messages?before=latest&limit=${PAGE}`);
    setMessages((ms) => {
      const stored = new Map(page.items.map((m) => [m.id, m]));
      const kept = ms.filter((m) => !stored.has(m.id) && m.seq !== Infinity);
      const all = [...kept, ...page.items];
      if (all.length <= WINDOW) return all;
      const windowed = all.slice(-WINDOW);
      setOlder(String(windowed[0].seq));
      return windowed;
    });
    setNewer(null);
    setLive((l) => (l && l.run.id === runId && FINAL.includes(l.run.status) ? null : l));
    setLive((l) => (l && l.run.id === runId ? { ...l, text: '', calls: new Map() } : l));
    onTouched();
  };

  useEffect(() => {
    let gone = false;
    (async () => {
      try {
        const [c, page, rs] = await Promise.all([
          api.get('/api/v1/conversations/' + id),
          api.get(`/api/v1/conversations/${id}/messages?before=latest&limit=${PAGE}`),
          loadRuns(),
        ]);
        if (gone) return;
        setConv(c);
        setMessages(page.items);
        setOlder(page.has_more ? page.next_cursor : null);
        const active = rs.find((r) => !FINAL.includes(r.status));
        if (active) {
          // Events of messages already shown are skipped by id.
          startFollowing(active, 0);
        }
      } catch (e) { if (!gone) setError(e); }
    })();
    return () => { gone = true; follow.current?.abort(); };
  }, [id]);

  // Keeps the newest message in view while the reader is at the bottom.
  useEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [messages, live]);

  // The messages in the page are a window of at most WINDOW of them, paged
  // in by cursor as the reader scrolls: up reads older ones (and drops the
  // newest beyond the window), down reads newer ones again.
  const anchor = () => {
    const el = scroller.current;
    const top = el.getBoundingClientRect().top;
    const first = [...el.querySelectorAll('[data-id]')].find((m) => m.getBoundingClientRect().bottom > top);
    return first && { id: first.dataset.id, offset: first.getBoundingClientRect().top - top };
  };
  const restore = (mark) => requestAnimationFrame(() => {
    const el = scroller.current;
    const node = mark && el.querySelector(`[data-id="${mark.id}"]`);
    if (node) el.scrollTop += node.getBoundingClientRect().top - el.getBoundingClientRect().top - mark.offset;
  });
  const onScroll = async (e) => {
    const el = e.currentTarget;
    stick.current = !newer && el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (busy.current) return;
    const nearTop = el.scrollTop < 300 && older;
    const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 300 && newer;
    if (!nearTop && !nearBottom) return;
    busy.current = true;
    const mark = anchor();
    try {
      if (nearTop) {
        const page = await api.get(`/api/v1/conversations/${id}/messages?before=${older}&limit=${PAGE}`);
        setOlder(page.has_more ? page.next_cursor : null);
        setMessages((ms) => {
          const all = [...page.items, ...ms];
          if (all.length <= WINDOW) return all;
          const kept = all.slice(0, WINDOW);
          setNewer(String(kept[kept.length - 1].seq));
          return kept;
        });
      } else {
        const page = await api.get(`/api/v1/conversations/${id}/messages?after=${newer}&limit=${PAGE}`);
        setNewer(page.has_more ? page.next_cursor : null);
        setMessages((ms) => {
          const all = [...ms, ...page.items];
          if (all.length <= WINDOW) return all;
          const kept = all.slice(all.length - WINDOW);
          setOlder(String(kept[0].seq));
          return kept;
        });
      }
      restore(mark);
    } catch (err) { setError(err); } finally { busy.current = false; }
  };

  const send = async (text) => {
    setSending(true);
    setError(null);
    try {
      const body = text ? { message: text } : {};
      const run = await api.post(`/api/v1/conversations/${id}/runs`, body);
      setDraft('');
      stick.current = true;
      setRuns((m) => new Map(m).set(run.id, run));
      startFollowing(run, 0);
      if (text && !conv.title) {
        const title = text.replace(/\s+/g, ' ').trim().slice(0, 80);
        api.patch('/api/v1/conversations/' + id, { title }).then((c) => { setConv(c); onTouched(); }, () => {});
      }
    } catch (e) { setError(e); } finally { setSending(false); }
  };

  const stop = async () => {
    if (!live) return;
    try { await api.post(`/api/v1/runs/${live.run.id}/cancel`); } catch (e) { setError(e); }
  };

  const running = live && !FINAL.includes(live.run.status);
  const onKey = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (draft.trim() && !sending && !running) send(draft);
    } else if (e.key === 'Escape' && running) {
      e.preventDefault();
      stop();
    }
  };
  useEffect(() => {
    const esc = (e) => { if (e.key === 'Escape' && running && !document.querySelector('dialog[open]')) stop(); };
    addEventListener('keydown', esc);
    return () => removeEventListener('keydown', esc);
  }, [running, live]);

  const results = useMemo(() => callsOf(messages), [messages]);
  const shownCalls = useMemo(() => new Set(messages.flatMap((m) => m.content.filter((p) => p.type === 'tool_call').map((p) => p.id))), [messages]);
  const lastRunOf = useMemo(() => {
    const last = new Map();
    messages.forEach((m, i) => { const r = m.metadata?.run_id; if (r && m.role === 'assistant') last.set(r, i); });
    return last;
  }, [messages]);
  const newest = [...runs.values()].sort((a, b) => b.created_at.localeCompare(a.created_at))[0];
  const failed = newest && (newest.status === 'failed' || newest.status === 'cancelled') ? newest : null;
  const showFailure = failed && !running;

  return html`<div class="thread">
    <header class="thread-header">
      <button type="button" class="icon back" aria-label="Back to conversations" onClick=${() => navigate('/chat')}>←</button>
      <div>
        <h1>${conv?.title || 'New conversation'}</h1>
        <small class="muted">${agent ? html`with <${Link} href=${'/agents/' + agent.id}>${agent.name}</${Link}> · ${agent.model.provider}/${agent.model.model}` : ''}</small>
      </div>
    </header>
    <div class="messages" ref=${scroller} onScroll=${onScroll} role="log" aria-label="Messages">
      ${older ? html`<p class="muted center">Scroll up for older messages</p>` : null}
      ${messages.map((m, i) => html`<${Message} key=${m.id} id=${m.id} message=${m} results=${results} toolInfo=${toolInfo} liveCalls=${live?.calls}
          footer=${m.metadata?.run_id && lastRunOf.get(m.metadata.run_id) === i && !(live && live.run.id === m.metadata.run_id && running) ? runs.get(m.metadata.run_id) : null} />`)}
      ${newer ? html`<p class="muted center">Scroll down for newer messages</p>` : null}
      ${live ? html`<${LiveRun} live=${live} toolInfo=${toolInfo} shown=${shownCalls} />` : null}
      ${showFailure ? html`<div class="note error run-failed" role="alert">
          <strong>${failed.status === 'cancelled' ? 'The run was stopped.' : 'The run failed.'}</strong>
          ${failed.error ? html` <code>${failed.error.code}</code> ${failed.error.message}` : null}
          ${canWrite(user) ? html` <button type="button" class="small" onClick=${() => send(null)}>Retry</button>` : null}
        </div>` : null}
    </div>
    ${live && live.run.status === 'requires_action' && canWrite(user) && (live.run.pending_tool_calls || []).length
      ? html`<${Approvals} run=${live.run} toolInfo=${toolInfo} onDone=${() => refreshRun(live.run.id)} />` : null}
    ${live && live.run.status === 'requires_action' && canWrite(user) && (live.run.pending_elicitations || []).length
      ? html`<${Questions} run=${live.run} onDone=${() => refreshRun(live.run.id)} />` : null}
    <${ErrorNote} error=${error} />
    ${canWrite(user) ? html`<form class="composer" onSubmit=${(e) => { e.preventDefault(); if (draft.trim()) send(draft); }}>
      <label class="sr-only" for="composer-input">Message</label>
      <textarea id="composer-input" rows="2" placeholder=${running ? 'The agent is answering… (Escape stops it)' : 'Message (Enter sends, Shift+Enter for a new line)'}
        value=${draft} onInput=${(e) => setDraft(e.target.value)} onKeyDown=${onKey}></textarea>
      ${running
        ? html`<button type="button" class="danger" onClick=${stop}>Stop</button>`
        : html`<button type="submit" class="primary" disabled=${sending || !draft.trim()}>Send</button>`}
    </form>` : html`<p class="muted composer">You can read this conversation; your role cannot write to it.</p>`}
  </div>`;
}

function Markdown({ text }) {
  const ref = useRef();
  const htmlText = useMemo(() => renderMarkdown(text), [text]);
  useEffect(() => { if (ref.current) highlightWithin(ref.current); }, [htmlText]);
  return html`<div class="md" ref=${ref} dangerouslySetInnerHTML=${{ __html: htmlText }}></div>`;
}

/** A call's result: stored, or as the live run reported it. */
function resultOf(callId, results, liveCalls) {
  const stored = results.get(callId);
  if (stored) return { result: stored };
  const c = liveCalls?.get(callId);
  if (!c) return { result: null };
  return {
    result: c.done ? { content: typeof c.result === 'string' ? c.result : pretty(c.result), is_error: c.is_error } : null,
    running: !c.done,
    duration: c.duration_ms,
  };
}

function Message({ id, message, results, toolInfo, footer, liveCalls }) {
  const { role, content } = message;
  if (role === 'tool') return html`<span data-id=${id} hidden></span>`; // shown inside the call's card
  const text = content.filter((p) => p.type === 'text').map((p) => p.text).join('\n\n');
  const calls = content.filter((p) => p.type === 'tool_call');
  const images = content.filter((p) => p.type === 'image');
  return html`<article class=${'message ' + role} data-id=${id}>
    <header><span class="who">${role === 'user' ? 'You' : role === 'assistant' ? 'Agent' : role}</span>
      ${text ? html`<${CopyButton} text=${text} />` : null}</header>
    ${text ? (role === 'user' ? html`<p class="plain">${text}</p>` : html`<${Markdown} text=${text} />`) : null}
    ${images.map((p) => html`<p class="muted">[image${p.url.startsWith('data:') ? '' : ': ' + p.url}]</p>`)}
    ${calls.length ? html`<div class="calls">${calls.map((c) => {
        const r = resultOf(c.id, results, liveCalls);
        return html`<${ToolCard} key=${c.id} call=${{ call_id: c.id, name: c.name, arguments: c.arguments }}
          result=${r.result} running=${r.running} duration=${r.duration} info=${toolInfo.get(c.name)} />`;
      })}</div>` : null}
    ${footer ? html`<${RunFooter} run=${footer} />` : null}
  </article>`;
}

function RunFooter({ run }) {
  const secs = run.started_at && run.finished_at ? (new Date(run.finished_at) - new Date(run.started_at)) / 1000 : null;
  return html`<footer class="run-footer muted">
    ${run.model} · ${number(run.usage.input_tokens)} in / ${number(run.usage.output_tokens)} out tokens${secs !== null ? ` · ${secs.toFixed(1)} s` : ''}
  </footer>`;
}

function LiveRun({ live, toolInfo, shown }) {
  // Calls of a message already in the list show in that message's cards.
  const calls = [...live.calls.values()].filter((c) => !shown.has(c.call_id));
  const status = live.run.status;
  return html`<article class="message assistant live" aria-busy=${!FINAL.includes(status)}>
    <header><span class="who">Agent</span> <span class="status">${status === 'queued' ? 'queued' : status === 'requires_action' ? ((live.run.pending_elicitations || []).length ? 'waiting for your answer' : 'waiting for your approval') : status === 'running' ? 'answering…' : status}</span></header>
    <div class="live-text" aria-live="polite">${live.text ? html`<${Markdown} text=${live.text} />` : status === 'running' || status === 'queued' ? html`<span class="typing" aria-label="Working">●●●</span>` : null}</div>
    ${calls.length ? html`<div class="calls">${calls.map((c) => html`<${ToolCard} key=${c.call_id} call=${c} info=${toolInfo.get(c.name)}
        result=${c.done ? { content: typeof c.result === 'string' ? c.result : pretty(c.result), is_error: c.is_error } : null} duration=${c.duration_ms} running=${!c.done} />`)}</div>` : null}
  </article>`;
}

function sourceOf(info) {
  if (!info) return 'tool';
  return info.source.kind === 'plugin' ? `plugin ${info.source.plugin} ${info.source.version}` : `MCP server ${info.source.server}`;
}

function ToolCard({ call, result, info, duration, running }) {
  const [open, setOpen] = useState(false);
  const state = running ? 'running' : !result ? 'waiting' : result.is_error ? 'error' : 'done';
  let shown = result?.content ?? '';
  try { shown = pretty(JSON.parse(shown)); } catch { /* text */ }
  return html`<div class=${'tool-card ' + state}>
    <button type="button" class="tool-head" aria-expanded=${open} onClick=${() => setOpen(!open)}>
      <span class="tool-name">${call.name}</span>
      <small>${sourceOf(info)}</small>
      <span class=${'badge ' + state}>${state === 'done' ? 'done' : state === 'error' ? 'error' : state === 'running' ? 'running…' : 'pending'}</span>
      ${duration !== undefined && duration !== null ? html`<small>${duration} ms</small>` : null}
    </button>
    ${open || state === 'error' ? html`<div class="tool-body">
      <h4>Arguments</h4><pre>${pretty(call.arguments)}</pre>
      ${result ? html`<h4>${result.is_error ? 'Error' : 'Result'}</h4><pre class=${result.is_error ? 'bad' : ''}>${shown}</pre>` : null}
    </div>` : null}
  </div>`;
}

function Approvals({ run, toolInfo, onDone }) {
  const pending = run.pending_tool_calls || [];
  const [decisions, setDecisions] = useState({});
  const [editing, setEditing] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const decide = (callId, d) => setDecisions((all) => ({ ...all, [callId]: d }));
  const ready = pending.length && pending.every((c) => decisions[c.call_id]);

  const submit = async (all) => {
    setBusy(true);
    setError(null);
    try {
      const list = pending.map((c) => ({ call_id: c.call_id, ...(all || decisions)[c.call_id] })).filter((d) => d.action);
      await api.post(`/api/v1/runs/${run.id}/approvals`, { decisions: list });
      onDone();
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const acceptAll = () => submit(Object.fromEntries(pending.map((c) => [c.call_id, { action: 'accept' }])));

  return html`<section class="approvals" aria-label="Approval needed">
    <h2>The agent wants to call ${pending.length === 1 ? 'a tool' : `${pending.length} tools`}</h2>
    ${pending.map((c) => {
      const d = decisions[c.call_id];
      const info = toolInfo.get(c.name);
      return html`<div class="approval" key=${c.call_id}>
        <div><strong>${c.name}</strong> <small class="muted">${sourceOf(info)}</small>
          ${info?.destructive ? html` <span class="badge error">destructive</span>` : null}</div>
        <pre>${pretty(c.arguments)}</pre>
        <div class="row">
          <button type="button" class=${d?.action === 'accept' ? 'primary' : ''} aria-pressed=${d?.action === 'accept'} onClick=${() => decide(c.call_id, { action: 'accept' })}>Accept</button>
          <button type="button" aria-pressed=${d?.action === 'edit'} onClick=${() => setEditing({ call: c, mode: 'edit' })}>Edit arguments</button>
          <button type="button" aria-pressed=${d?.action === 'reject'} onClick=${() => setEditing({ call: c, mode: 'reject' })}>Reject</button>
          <button type="button" aria-pressed=${d?.action === 'answer'} onClick=${() => setEditing({ call: c, mode: 'answer' })}>Answer instead</button>
        </div>
        ${d && d.action !== 'accept' ? html`<small class="muted">Decision: ${d.action}${d.reason ? ` (${d.reason})` : ''}</small>` : null}
      </div>`;
    })}
    <${ErrorNote} error=${error} />
    <div class="row">
      <button type="button" class="primary" disabled=${!ready || busy} onClick=${() => submit()}>Send decisions</button>
      ${pending.length > 1 ? html`<button type="button" disabled=${busy} onClick=${acceptAll}>Accept all</button>` : null}
    </div>
    ${editing ? html`<${DecisionEditor} editing=${editing} info=${toolInfo.get(editing.call.name)}
        onClose=${() => setEditing(null)} onDecide=${(d) => { decide(editing.call.call_id, d); setEditing(null); }} />` : null}
  </section>`;
}

function DecisionEditor({ editing, info, onClose, onDecide }) {
  const { call, mode } = editing;
  const [value, setValue] = useState(mode === 'edit' ? call.arguments : mode === 'answer' ? { result: '' } : null);
  const [problem, setProblem] = useState(null);
  const [reason, setReason] = useState('');
  const title = mode === 'edit' ? `Edit the arguments of ${call.name}` : mode === 'reject' ? `Reject ${call.name}` : `Answer in place of ${call.name}`;
  const save = (e) => {
    e.preventDefault();
    if (mode === 'edit') onDecide({ action: 'edit', arguments: value });
    else if (mode === 'reject') onDecide({ action: 'reject', reason: reason || 'Rejected by the user' });
    else onDecide({ action: 'answer', result: value });
  };
  return html`<${Modal} title=${title} onClose=${onClose} wide=${mode !== 'reject'}>
    <form onSubmit=${save}>
      ${mode === 'reject'
        ? html`<div class="field"><label for="reject-reason">Reason (the model sees it)</label>
            <input id="reject-reason" value=${reason} onInput=${(e) => setReason(e.target.value)} placeholder="Rejected by the user" /></div>`
        : html`<${JsonEditor} label=${mode === 'edit' ? 'Arguments (JSON)' : 'Result given to the model (JSON)'} value=${value}
            schema=${mode === 'edit' ? info?.input_schema : null} rows=${12}
            onValue=${(v, p) => { if (v !== undefined) setValue(v); setProblem(p); }} />
          ${mode === 'edit' && info ? html`<details><summary>Input schema</summary><pre>${pretty(info.input_schema)}</pre></details>` : null}`}
      <div class="row end">
        <button type="button" onClick=${onClose}>Cancel</button>
        <button type="submit" class="primary" disabled=${mode !== 'reject' && !!problem}>${mode === 'reject' ? 'Reject' : 'Use this'}</button>
      </div>
    </form>
  </${Modal}>`;
}

// Questions an MCP server asks during a tool call (MCP elicitation): a form
// built from the flat schema it sent, or a link to visit (URL mode).
function Questions({ run, onDone }) {
  const pending = run.pending_elicitations || [];
  return html`<section class="approvals questions" aria-label="Question from a tool">
    ${pending.map((q) => html`<${Question} key=${q.id} run=${run} question=${q} onDone=${onDone} />`)}
  </section>`;
}

function initialAnswer(schema) {
  const out = {};
  for (const [name, p] of Object.entries(schema?.properties || {})) {
    if (p.default !== undefined) out[name] = p.default;
    else if (p.type === 'boolean') out[name] = false;
    else if (p.type === 'array') out[name] = [];
  }
  return out;
}

// The fields in the order the server listed its required ones, then the
// others (property order does not survive the JSON maps on the way).
function fieldOrder(schema) {
  const props = Object.entries(schema.properties || {});
  const required = schema.required || [];
  const rank = (name) => { const i = required.indexOf(name); return i < 0 ? required.length : i; };
  return props.map((e, i) => [e, i]).sort((a, b) => rank(a[0][0]) - rank(b[0][0]) || a[1] - b[1]).map(([e]) => e);
}

function choicesOf(p) {
  if (Array.isArray(p.enum)) return p.enum.map((v, i) => ({ value: v, title: (p.enumNames || [])[i] || String(v) }));
  const list = p.oneOf || p.anyOf;
  if (Array.isArray(list)) return list.filter((o) => o.const !== undefined).map((o) => ({ value: o.const, title: o.title || String(o.const) }));
  return null;
}

function Question({ run, question, onDone }) {
  const schema = question.requested_schema || { properties: {} };
  const required = new Set(schema.required || []);
  const [values, setValues] = useState(() => initialAnswer(schema));
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const set = (name, v) => setValues((all) => ({ ...all, [name]: v }));
  const answer = async (action) => {
    setBusy(true);
    setError(null);
    try {
      const body = { action };
      if (action === 'accept' && question.mode === 'form') {
        const content = {};
        for (const [k, v] of Object.entries(values)) if (v !== '' && v !== undefined) content[k] = v;
        body.content = content;
      }
      await api.post(`/api/v1/runs/${run.id}/elicitations/${question.id}`, body);
      onDone();
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const field = (name, p) => {
    const id = `q-${question.id}-${name}`;
    const label = html`<label for=${id}>${p.title || name}${required.has(name) ? html` <span aria-hidden="true">*</span>` : null}</label>`;
    const hint = p.description ? html`<small class="muted">${p.description}</small>` : null;
    const choices = p.type === 'array' ? choicesOf(p.items || {}) : choicesOf(p);
    if (p.type === 'boolean') {
      return html`<div class="field" key=${name}><label class="q-check"><input id=${id} type="checkbox" checked=${!!values[name]}
          onChange=${(e) => set(name, e.target.checked)} /> ${p.title || name}</label>${hint}</div>`;
    }
    if (p.type === 'array' && choices) {
      const chosen = new Set(values[name] || []);
      return html`<fieldset class="field" key=${name}><legend>${p.title || name}</legend>${hint}
        ${choices.map((c) => html`<label class="q-check" key=${String(c.value)}><input type="checkbox" checked=${chosen.has(c.value)}
          onChange=${(e) => { const next = new Set(chosen); if (e.target.checked) next.add(c.value); else next.delete(c.value); set(name, choices.map((x) => x.value).filter((v) => next.has(v))); }} /> ${c.title}</label>`)}
      </fieldset>`;
    }
    if (choices) {
      return html`<div class="field" key=${name}>${label}${hint}
        <select id=${id} required=${required.has(name)} onChange=${(e) => set(name, e.target.value === '' ? undefined : choices[Number(e.target.value)].value)}>
          <option value="">Choose…</option>
          ${choices.map((c, i) => html`<option value=${i} selected=${values[name] === c.value}>${c.title}</option>`)}
        </select></div>`;
    }
    const numeric = p.type === 'number' || p.type === 'integer';
    const type = numeric ? 'number' : p.format === 'email' ? 'email' : p.format === 'uri' ? 'url' : p.format === 'date' ? 'date' : 'text';
    return html`<div class="field" key=${name}>${label}${hint}
      <input id=${id} type=${type} required=${required.has(name)} value=${values[name] ?? ''}
        step=${p.type === 'integer' ? 1 : 'any'} min=${p.minimum} max=${p.maximum} minLength=${p.minLength} maxLength=${p.maxLength}
        onInput=${(e) => set(name, numeric ? (e.target.value === '' ? undefined : Number(e.target.value)) : e.target.value)} /></div>`;
  };
  const submit = (e) => { e.preventDefault(); answer('accept'); };
  return html`<form class="approval question" onSubmit=${submit} aria-label=${'Question from ' + question.server}>
    <h2>${question.server} asks</h2>
    <p class="question-text">${question.message}</p>
    ${question.mode === 'url'
      ? html`<p>Continue at <a href=${question.url} target="_blank" rel="noopener noreferrer">${(() => { try { return new URL(question.url).host; } catch { return question.url; } })()}</a>, then come back and confirm.</p>`
      : fieldOrder(schema).map(([name, p]) => field(name, p))}
    <${ErrorNote} error=${error} />
    <div class="row">
      <button type="submit" class="primary" disabled=${busy}>${question.mode === 'url' ? 'Done' : 'Send'}</button>
      <button type="button" disabled=${busy} onClick=${() => answer('decline')}>Decline</button>
      <button type="button" disabled=${busy} onClick=${() => answer('cancel')}>Cancel the operation</button>
    </div>
    <small class="muted">Asked during the tool call ${question.call_id}${question.expires_at ? html` · unanswered questions are cancelled at ${new Date(question.expires_at).toLocaleTimeString()}` : null}</small>
  </form>`;
}
