// tubeworker dashboard: what every view shares (the page's state, formatting, requests,
// charts). Plain JavaScript modules, no build step, no dependencies. Text from the server
// is only ever set with textContent, never parsed as HTML.

const SVG = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);
export const state = {
  view: "overview",
  servers: [],
  overview: { q: "", sort: "tube", desc: false, page: 1, per_page: 50, internal: false },
  internalPrefix: "tubeworker.", // tubeworker's own tubes (the server says which)
  rows: new Map(), // key -> {row, tr}
  pages: 1,
  trend: { ready: [], done: [], failure: [], buried: [] },
  trendMax: 360, // points the server keeps (its history): the page keeps as many
  round: 0, // the poller's round the page shows (an answer older than it is stale)
  readsNeedToken: false, // [control] read_token_file: reads send this tab's token
  loginNeeded: false, // a read was answered 401: the token dialog was opened
  tube: null, // {server, tube}
  tubeRow: null,
  buried: { offset: 0, limit: 50, total: 0 },
  job: null, // the job document shown
  workers: [],
  apis: null,
};
// For measurements (tests, tests/bench): when things happened, in this page's clock.
export const probe = (window.__tubeworker = { applied: [], firstRender: null, events: 0 });

// ------------------------------------------------------------------ helpers

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
export const fmtRate = (n) => (n === null || n === undefined ? "–" : n >= 100 ? n.toFixed(0) : n.toFixed(1));
export const fmtPct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(r < 0.1 ? 1 : 0) + " %");

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

export const UNWATCHED_TITLE = "No connection watches this tube (beanstalkd's current-watching is 0): its ready jobs wait until a worker watches it.";

// A run time: milliseconds under a second, then seconds.
export function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  return fmtSeconds(s);
}

export function fmtBacklog(row) {
  if (row.unwatched) return "no worker";
  if (row.backlog_seconds === null || row.backlog_seconds === undefined) {
    return row.ready > 0 ? "∞" : "–";
  }
  return fmtSeconds(row.backlog_seconds);
}

export function toast(message, kind) {
  const box = $("toast");
  box.textContent = message;
  box.className = "toast " + (kind || "info");
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 4000);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  // With [control] read_token_file, reads need a token too: the one kept for this tab.
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem("tubeworker.token");
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { headers });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    // Reads need a token ([control] read_token_file): ask for one (actions.js's dialog).
    state.loginNeeded = true;
    window.dispatchEvent(new CustomEvent("tubeworker-login"));
  }
  if (!response.ok) {
    const hint = response.status === 401 ? " Enter a token with the Token button." : "";
    const error = new Error((data.error || `${response.status} ${response.statusText}`) + hint);
    error.status = response.status;
    throw error;
  }
  return data;
}

export function card(label, value, extra, warning) {
  const name = label.toLowerCase().replace(/[^a-z]+/g, "-");
  return el("div", { class: warning ? "card warn" : "card", title: warning, dataset: { card: name } },
    el("div", { class: "card-value" }, value),
    el("div", { class: "card-label" }, label),
    extra ? el("div", { class: "card-extra muted" }, extra) : null);
}

export const tubeHref = (server, tube) => `#/tube/${encodeURIComponent(server)}/${encodeURIComponent(tube)}`;

export function showLoadError(error) {
  toast(`Could not load: ${error.message}`, "error");
}

// ------------------------------------------------------------------ charts

export const known = (v) => v !== null && v !== undefined;

// A line over the values; an unknown value (null: no outcome counted yet, say) is a gap,
// never drawn as 0.
export function sparkline(values, width, height, cls) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("class", cls || "spark");
  svg.setAttribute("aria-hidden", "true");
  const max = Math.max(1, ...values.filter(known));
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const runs = [[]];
  values.forEach((v, i) => {
    if (!known(v)) { runs.push([]); return; }
    const x = values.length > 1 ? i * step : width;
    const y = height - 1 - (Math.max(0, v) / max) * (height - 2);
    runs[runs.length - 1].push([x.toFixed(1), y.toFixed(1)]);
  });
  for (const run of runs.filter((r) => r.length > 0)) {
    const points = run.map(([x, y]) => `${x},${y}`).join(" ");
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("points", `${run[0][0]},${height} ${points} ${run[run.length - 1][0]},${height}`);
    area.setAttribute("class", "area");
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points);
    line.setAttribute("class", "line");
    svg.append(area, line);
  }
  return svg;
}

// A chart and its value now: the last value, formatted as its card formats it.
export function chart(container, values, format) {
  const last = values.length ? values[values.length - 1] : null;
  container.replaceChildren(
    sparkline(values.slice(-(state.trendMax + 1)), 230, 52, "chart-svg"),
    el("span", { class: "chart-value" }, format(last))
  );
}


// What every view needs of /api/overview: the servers (for the put dialog), and whether
// this reader may act: with no token configured the server is read-only, and a viewer's
// token reads only ([control] read_token_file): either way no action is shown.
export function applySettings(data) {
  state.servers = data.servers;
  $("servers").textContent = data.servers.join(", ");
  if (data.internal_prefix) state.internalPrefix = data.internal_prefix;
  const viewer = data.role === "viewer";
  const enabled = data.actions_enabled !== false && !viewer;
  state.readsNeedToken = data.reads_need_token === true;
  state.loginNeeded = false;
  document.body.dataset.actions = viewer ? "viewer" : enabled ? "enabled" : "read-only";
  document.body.dataset.role = data.role || "";
  document.body.dataset.readsNeedToken = state.readsNeedToken ? "1" : "0";
  $("read-only").hidden = enabled;
  $("read-only").textContent = viewer ? "viewer: read-only" : "read-only (no token configured)";
  $("read-only").title = viewer
    ? "This tab's token is a viewer's ([control] read_token_file): it reads; actions need the operator's token."
    : "Actions need a token: [control] token_file (or tubeworker dashboard --token-file).";
  renderTroubles(data.troubles || []);
}

// What needs an operator now, on every view: a server out of binlog room, a fleet limit
// with tokens out of reach (from the daemons' /status; see control/troubles.py).
export function renderTroubles(troubles) {
  const box = $("troubles");
  box.replaceChildren(...troubles.map((t) => el("p", { dataset: { kind: t.kind, subject: t.subject } },
    el("strong", {}, t.kind === "binlog_full" ? "Binlog full: " : "Fleet limit degraded: "),
    t.detail,
    el("span", { class: "muted small" }, ` (said by ${t.workers.map((w) => (w === "local" ? "this daemon" : w)).join(", ")})`))));
  box.hidden = troubles.length === 0;
}
