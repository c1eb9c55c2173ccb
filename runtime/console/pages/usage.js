// Usage: tokens and runs per day, per agent and per model; the quota left.

import { html, useState, useSession, useLoad, ErrorNote, PageHeader, number, isAdmin } from '../lib/ui.js';
import * as api from '../lib/api.js';

const DAY = 86400000;

export function Usage() {
  const { user } = useSession();
  const [days, setDays] = useState(30);
  const from = new Date(Date.now() - days * DAY).toISOString();
  const report = (group_by) => api.get('/api/v1/usage' + api.qs({ from, group_by }));
  const data = useLoad(async () => {
    const [byDay, byAgent, byModel, agents, limits, today] = await Promise.all([
      report('day'), report('agent'), report('model'),
      api.get('/api/v1/agents?page_size=100'),
      api.get(`/api/v1/users/${user.id}/usage-limits`).catch(() => null),
      api.get('/api/v1/usage' + api.qs({ from: new Date(Date.now() - DAY).toISOString(), group_by: 'day' })),
    ]);
    return { byDay, byAgent, byModel, agents: new Map(agents.items.map((a) => [a.id, a.name])), limits, today };
  }, [days]);
  const d = data.data;
  return html`<section class="page">
    <${PageHeader} title="Usage">
      <label>Range <select value=${days} onChange=${(e) => setDays(Number(e.target.value))}>
        <option value="7">7 days</option><option value="30">30 days</option><option value="90">90 days</option></select></label>
    </${PageHeader}>
    ${isAdmin(user) ? html`<p class="muted">As an admin you see every user's usage.</p>` : null}
    <${ErrorNote} error=${data.error} onRetry=${data.reload} />
    ${d ? html`
      <div class="stats">
        <div class="stat"><span>${number(d.byDay.total.runs)}</span><small>runs</small></div>
        <div class="stat"><span>${number(d.byDay.total.total_tokens)}</span><small>tokens</small></div>
        <div class="stat"><span>${number(d.byDay.total.input_tokens)}</span><small>input</small></div>
        <div class="stat"><span>${number(d.byDay.total.output_tokens)}</span><small>output</small></div>
      </div>
      <${Quota} limits=${d.limits} today=${d.today.total} />
      <section class="card"><h2>Tokens per day</h2><${DayChart} lines=${d.byDay.items} days=${days} /></section>
      <div class="grid2">
        <section class="card"><h2>Per agent</h2><${Bars} lines=${d.byAgent.items} label=${(k) => d.agents.get(k) || 'deleted agent ' + k.slice(0, 8)} /></section>
        <section class="card"><h2>Per model</h2><${Bars} lines=${d.byModel.items} label=${(k) => k} /></section>
      </div>` : null}
  </section>`;
}

function Quota({ limits, today }) {
  if (!limits) return null;
  const rows = [];
  if (limits.daily_tokens != null) rows.push(['Tokens in the last 24 hours', today.total_tokens, limits.daily_tokens]);
  if (limits.daily_runs != null) rows.push(['Runs in the last 24 hours', today.runs, limits.daily_runs]);
  if (limits.monthly_tokens != null) rows.push(['Tokens per 30 days', null, limits.monthly_tokens]);
  if (!rows.length) return html`<p class="muted">No usage limit is set for your account.</p>`;
  return html`<section class="card"><h2>Quota</h2>${rows.map(([label, used, max]) => html`<div class="quota">
    <div>${label}: ${used === null ? `limit ${number(max)}` : `${number(Math.max(0, max - used))} left of ${number(max)}`}</div>
    ${used !== null ? html`<meter min="0" max=${max} value=${Math.min(used, max)} low=${max * 0.7} high=${max * 0.9} optimum="0" aria-label=${label}></meter>` : null}
  </div>`)}</section>`;
}

/** Bars of tokens per day, input and output stacked, as SVG. */
function DayChart({ lines, days }) {
  const byKey = new Map(lines.map((l) => [l.key, l]));
  const series = [];
  for (let i = days - 1; i >= 0; i--) {
    const key = new Date(Date.now() - i * DAY).toISOString().slice(0, 10);
    series.push(byKey.get(key) || { key, input_tokens: 0, output_tokens: 0, total_tokens: 0, runs: 0 });
  }
  const max = Math.max(1, ...series.map((s) => s.total_tokens));
  const w = 100 / series.length;
  return html`<figure class="chart">
    <svg viewBox="0 0 100 40" preserveAspectRatio="none" role="img" aria-label=${`Tokens per day over ${days} days, at most ${number(max)} a day`}>
      ${series.map((s, i) => {
        const hin = (s.input_tokens / max) * 38, hout = (s.output_tokens / max) * 38;
        return html`<g><title>${s.key}: ${number(s.input_tokens)} in, ${number(s.output_tokens)} out, ${s.runs} runs</title>
          <rect class="bar-in" x=${i * w + w * 0.1} width=${w * 0.8} y=${40 - hin} height=${hin} />
          <rect class="bar-out" x=${i * w + w * 0.1} width=${w * 0.8} y=${40 - hin - hout} height=${hout} /></g>`;
      })}
    </svg>
    <figcaption><span class="key-in">input</span> <span class="key-out">output</span> · ${series[0].key} to ${series[series.length - 1].key} · peak ${number(Math.max(...series.map((s) => s.total_tokens)))} tokens a day</figcaption>
  </figure>`;
}

function Bars({ lines, label }) {
  if (!lines.length) return html`<p class="muted">No run in this range.</p>`;
  const max = Math.max(1, ...lines.map((l) => l.total_tokens));
  return html`<table class="table bars"><thead><tr><th>Name</th><th>Runs</th><th>Tokens</th></tr></thead><tbody>
    ${lines.slice(0, 20).map((l) => html`<tr><td>${label(l.key)}</td><td>${number(l.runs)}</td>
      <td><div class="hbar"><div style=${{ width: `${(l.total_tokens / max) * 100}%` }}></div></div>${number(l.total_tokens)}</td></tr>`)}
  </tbody></table>`;
}
