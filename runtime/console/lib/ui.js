// Shared pieces of the console: the html tag, small components and hooks.

import { h, render, createContext } from '../vendor/preact.js';
import { useState, useEffect, useRef, useCallback, useContext, useMemo, useId } from '../vendor/preact-hooks.js';
import htm from '../vendor/htm.js';

export const html = htm.bind(h);
export { h, render, useState, useEffect, useRef, useCallback, useContext, useMemo, useId, createContext };

/** The signed-in user and helpers, for every page. */
export const Session = createContext(null);
export const useSession = () => useContext(Session);

/** Navigates inside the console without a reload. */
export function navigate(path, replace = false) {
  if (location.pathname + location.search === path) return;
  history[replace ? 'replaceState' : 'pushState'](null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
}

/** A link that navigates inside the console. */
export function Link({ href, children, ...rest }) {
  const click = (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} ...${rest}>${children}</a>`;
}

/**
 * Loads `fn()` when `deps` change: { data, error, loading, reload, setData }.
 */
export function useLoad(fn, deps = []) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true });
  const seq = useRef(0);
  const load = useCallback(async () => {
    const mine = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await fn();
      if (mine === seq.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ ...s, error, loading: false }));
    }
  }, deps);
  useEffect(() => { load(); }, [load]);
  return { ...state, reload: load, setData: (data) => setState((s) => ({ ...s, data: typeof data === 'function' ? data(s.data) : data })) };
}

/** An error as the API gave it: its message, and its code. */
export function ErrorNote({ error, onRetry }) {
  if (!error) return null;
  return html`<div class="note error" role="alert">
    <strong>${error.message || String(error)}</strong>
    ${error.code ? html` <code>${error.code}</code>` : null}
    ${onRetry ? html` <button type="button" class="link" onClick=${onRetry}>Try again</button>` : null}
  </div>`;
}

/** A labelled form field; `hint` under it. */
export function Field({ label, hint, children, id }) {
  const auto = useId();
  const fid = id || auto;
  const child = Array.isArray(children) ? children[0] : children;
  if (child && child.props && !child.props.id) child.props.id = fid;
  return html`<div class="field">
    <label for=${fid}>${label}</label>
    ${children}
    ${hint ? html`<small class="hint">${hint}</small>` : null}
  </div>`;
}

/** A dialog over the page; Escape or the close button closes it. */
export function Modal({ title, onClose, children, wide }) {
  const ref = useRef();
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    const cancel = (e) => { e.preventDefault(); onClose(); };
    dialog.addEventListener('cancel', cancel);
    return () => dialog.removeEventListener('cancel', cancel);
  }, []);
  return html`<dialog ref=${ref} class=${'modal' + (wide ? ' wide' : '')} aria-label=${title}>
    <header><h2>${title}</h2><button type="button" class="icon" aria-label="Close" onClick=${onClose}>✕</button></header>
    <div class="modal-body">${children}</div>
  </dialog>`;
}

/** A button that runs an async action, disabled while it runs. */
export function Action({ run, children, kind = '', confirm: question, label, ...rest }) {
  const [busy, setBusy] = useState(false);
  const click = async (e) => {
    e.preventDefault();
    if (question && !window.confirm(question)) return;
    setBusy(true);
    try { await run(); } finally { setBusy(false); }
  };
  return html`<button type="button" class=${kind} disabled=${busy} aria-busy=${busy} aria-label=${label} onClick=${click} ...${rest}>${children}</button>`;
}

/** Copies text to the clipboard, saying so for a moment. */
export function CopyButton({ text, label = 'Copy' }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try { await navigator.clipboard.writeText(text); } catch { fallbackCopy(text); }
    setDone(true);
    setTimeout(() => setDone(false), 1500);
  };
  return html`<button type="button" class="small" onClick=${copy}>${done ? 'Copied' : label}</button>`;
}

function fallbackCopy(text) {
  const area = document.createElement('textarea');
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand('copy');
  area.remove();
}

/** Formats an instant for people. */
export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const diff = (Date.now() - d.getTime()) / 1000;
  if (diff < 60 && diff > -60) return 'just now';
  if (diff < 3600 && diff > 0) return `${Math.round(diff / 60)} min ago`;
  if (diff < 86400 && diff > 0) return `${Math.round(diff / 3600)} h ago`;
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export const number = (n) => (n ?? 0).toLocaleString();

/** A page's title bar with actions. */
export function PageHeader({ title, children }) {
  useEffect(() => { document.title = `${title} · Orchestra`; }, [title]);
  return html`<header class="page-header"><h1>${title}</h1><div class="actions">${children}</div></header>`;
}

/** Pretty JSON. */
export const pretty = (v) => { try { return JSON.stringify(v, null, 2); } catch { return String(v); } };

/** A JSON text area that reports parse errors; `onValue(parsed)` when valid. */
export function JsonEditor({ value, onValue, label, rows = 8, schema }) {
  const [text, setText] = useState(() => pretty(value ?? {}));
  const [error, setError] = useState(null);
  const id = useId();
  const change = (e) => {
    setText(e.target.value);
    try {
      const parsed = JSON.parse(e.target.value);
      const problem = schema ? checkSchema(parsed, schema) : null;
      setError(problem);
      onValue(parsed, problem);
    } catch (err) {
      setError('Not valid JSON: ' + err.message);
      onValue(undefined, 'invalid');
    }
  };
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <textarea id=${id} class="code" rows=${rows} spellcheck="false" value=${text} onInput=${change} aria-invalid=${!!error}></textarea>
    ${error ? html`<small class="hint bad" role="status">${error}</small>` : null}
  </div>`;
}

/** A first check of a value against a JSON Schema (types, required,
 * enums); the server validates fully. Returns a problem or null. */
export function checkSchema(value, schema, path = '') {
  if (!schema || typeof schema !== 'object') return null;
  const type = schema.type;
  const at = path || 'the value';
  const is = {
    object: (v) => v && typeof v === 'object' && !Array.isArray(v),
    array: Array.isArray, string: (v) => typeof v === 'string',
    number: (v) => typeof v === 'number', integer: Number.isInteger,
    boolean: (v) => typeof v === 'boolean', null: (v) => v === null,
  };
  const types = Array.isArray(type) ? type : type ? [type] : [];
  if (types.length && !types.some((t) => is[t]?.(value))) return `${at} should be ${types.join(' or ')}`;
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) return `${at} should be one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}`;
  if (is.object(value)) {
    for (const key of schema.required || []) if (!(key in value)) return `${path ? path + '.' : ''}${key} is required`;
    for (const [key, sub] of Object.entries(schema.properties || {})) {
      if (key in value) { const p = checkSchema(value[key], sub, path ? `${path}.${key}` : key); if (p) return p; }
    }
  }
  return null;
}

/** A value for a blank form of a JSON Schema: required properties filled
 * with an empty value of their type. */
export function skeleton(schema) {
  if (!schema || typeof schema !== 'object') return {};
  if (schema.default !== undefined) return schema.default;
  if (schema.enum) return schema.enum[0];
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'object': {
      const out = {};
      for (const key of schema.required || []) out[key] = skeleton(schema.properties?.[key]);
      return out;
    }
    case 'array': return [];
    case 'string': return '';
    case 'number': case 'integer': return 0;
    case 'boolean': return false;
    default: return null;
  }
}

/** Whether the user may write (viewers may not). */
export const canWrite = (user) => user && user.role !== 'viewer';
export const isAdmin = (user) => user && user.role === 'admin';
