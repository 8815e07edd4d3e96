// tubeworker dashboard: the daemons (workers, their handlers), APIs and paused tubes, and
// the tubes with buried jobs.

import { act } from "./actions.js";
import {
  $, api, debounce, el, fmtDuration, fmtInt, fmtRate, fmtSeconds, showLoadError, state, toast, tubeHref,
} from "./common.js";

function workerState(w) {
  if (!w.ok) return el("span", { class: "badge bad" }, w.error ? "unreachable" : "not read yet");
  if (w.draining) return el("span", { class: "badge warn", title: w.drain_reason || "" }, "draining");
  if (w.quiet) return el("span", { class: "badge warn" }, "quiet");
  return el("span", { class: "badge ok" }, "running");
}

export function renderWorkers(workers) {
  state.workers = workers;
  const body = $("workers").tBodies[0];
  body.replaceChildren(...workers.map((w) => el("tr", { dataset: { worker: w.id } },
    el("td", {}, w.id === "local" ? "this daemon" : w.url, w.error ? el("div", { class: "muted small" }, w.error) : null),
    el("td", {}, w.host || "–"),
    el("td", { class: "num" }, w.pid ?? "–"),
    el("td", {}, ...w.pools.map((p) => el("div", {}, `${p.name}: ${p.tubes.join(", ")}`))),
    el("td", { class: "num" }, fmtInt(w.concurrency)),
    el("td", { class: "num", dataset: { col: "in-flight" } }, fmtInt(w.in_flight)),
    el("td", { class: "num" }, fmtRate(w.done_per_min)),
    el("td", { dataset: { col: "state" } }, workerState(w)),
    el("td", { class: "row-actions" },
      el("button", { type: "button", class: "act", dataset: { action: "quiet" }, disabled: !w.ok || w.quiet, onclick: () => quietWorker(w, "quiet") }, "Quiet"),
      el("button", { type: "button", class: "act", dataset: { action: "resume" }, disabled: !w.ok || !w.quiet, onclick: () => quietWorker(w, "resume") }, "Resume"))
  )));
  if (workers.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No daemons: list their control planes in [control] daemons, or pass --daemon.")));
  }
  $("workers-note").textContent = `${workers.length} daemon(s), read every few seconds.`;
}

async function quietWorker(w, action) {
  const name = w.id === "local" ? "this daemon" : w.url;
  const question = action === "quiet"
    ? `Quiet ${name}? It stops taking jobs (running ones finish) until resumed.`
    : `Resume ${name}? It takes jobs again.`;
  const done = await act("/api/worker", { worker: w.id, action }, question);
  if (done) toast(`${name}: ${action === "quiet" ? "quiet" : "resumed"}.`);
}

export async function loadWorkers() {
  const data = await api("/api/workers");
  renderWorkers(data.workers);
  renderHandlers(data.handlers || []);
}

// Per handler, over the daemons: the last minute's rates and run times (the bucket of
// tubeworker_job_duration_seconds 95 % of its runs fell within), totals since start.
export function renderHandlers(handlers) {
  const p95 = (h) => (h.run_p95 === null ? "–" : `${h.run_p95_above ? ">" : "≤"} ${fmtDuration(h.run_p95)}`);
  $("handlers").tBodies[0].replaceChildren(...handlers.map((h) => el("tr", { dataset: { handler: h.handler } },
    el("td", {}, h.handler || "(no handler)", h.workers > 1 ? el("span", { class: "muted small" }, ` on ${h.workers} daemons`) : null),
    el("td", {}, h.tubes.join(", ")),
    el("td", { class: "num", dataset: { col: "done-rate" } }, fmtRate(h.done_per_min)),
    el("td", { class: "num", dataset: { col: "released-rate" } }, fmtRate(h.released_per_min)),
    el("td", { class: "num", dataset: { col: "buried-rate" } }, fmtRate(h.buried_per_min)),
    el("td", { class: "num", dataset: { col: "run-mean" } }, fmtDuration(h.run_mean)),
    el("td", { class: "num", dataset: { col: "run-p95" } }, p95(h)),
    el("td", { class: "num", dataset: { col: "done" } }, fmtInt(h.done)),
    el("td", { class: "num", dataset: { col: "failed" } }, fmtInt(h.failed)))));
  $("handlers-note").textContent = handlers.length
    ? "Rates and run times over the last minute; Done and Failed (released or buried) since each daemon started."
    : "No handler has run yet on the daemons read.";
}

// ------------------------------------------------------------------ APIs and paused tubes

function renderApis(data) {
  state.apis = data;
  const body = $("apis").tBodies[0];
  const rows = [];
  for (const api of data.apis) {
    api.workers.forEach((w, i) => rows.push(el("tr", { dataset: { api: api.api } },
      el("td", {}, i === 0 ? api.api : ""),
      el("td", {}, el("span", { class: `badge ${w.state === "closed" ? "ok" : w.state === "open" ? "bad" : "warn"}` }, w.state.replace("_", "-"))),
      el("td", {}, w.worker === "local" ? "this daemon" : w.worker),
      el("td", { class: "num" }, fmtInt(w.calls)),
      el("td", { class: "num" }, fmtInt(w.failures)),
      el("td", { class: "num" }, fmtInt(w.trips)),
      el("td", { class: "num" }, w.next_probe_in === null || w.next_probe_in === undefined ? "–" : fmtSeconds(w.next_probe_in)))));
  }
  body.replaceChildren(...rows);
  $("apis-note").textContent = data.apis.length ? "" : "No API has been called or declared by the daemons read.";
  renderFleetLimits(data.fleet_limits || []);
  state.pausedKeys = new Set(data.paused.map((p) => `${p.server}|${p.tube}`));
  $("paused").tBodies[0].replaceChildren(...data.paused.map((p) => el("tr", { dataset: { tube: p.tube } },
    el("td", {}, el("a", { href: tubeHref(p.server, p.tube) }, p.tube)),
    el("td", {}, p.server),
    el("td", { class: "num" }, fmtSeconds(p.pause_left)),
    el("td", {}, p.reason || ""),
    el("td", { class: "row-actions" }, el("button", { type: "button", class: "act", onclick: async () => {
      const done = await act("/api/pause", { server: p.server, tube: p.tube, seconds: 0 }, `Resume tube ${p.tube}?`);
      if (done) { toast(`Resumed ${p.tube}.`); reloadApis(); }
    } }, "Resume")))));
  if (data.paused.length === 0) {
    $("paused").tBodies[0].append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No tube is paused.")));
  }
}

// Fleet-wide limits: the tokens beanstalkd holds for them, and how many the daemons reach
// (fewer while a server is down: the fleet runs on the share it still reaches).
function renderFleetLimits(limits) {
  const body = $("fleet-limits").tBodies[0];
  body.replaceChildren(...limits.map((l) => el("tr", { dataset: { limit: l.limit, tube: l.tube } },
    el("td", {}, l.limit),
    el("td", {}, l.tube),
    el("td", { class: "num" }, fmtInt(l.tokens)),
    el("td", { class: "num" }, fmtInt(l.reachable)),
    el("td", { dataset: { col: "state" } }, l.degraded
      ? el("span", { class: "badge bad", title: l.degraded }, "degraded")
      : el("span", { class: "badge ok" }, "ok"),
    l.degraded ? el("div", { class: "muted small" }, l.degraded) : null))));
  if (limits.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No fleet-wide limit (fleet = true) on the daemons read.")));
  }
}

export async function loadApis() {
  renderApis(await api("/api/apis"));
}
export const reloadApis = debounce(() => state.view === "apis" && loadApis().catch(showLoadError), 300);

// ------------------------------------------------------------------ tubes with buried jobs

export async function loadBuriedTubes() {
  const data = await api("/api/tubes", { sort: "buried", desc: 1, per_page: 500 });
  const rows = data.rows.filter((r) => r.buried > 0);
  state.buriedKeys = new Set(rows.map((r) => r.key));
  $("buried-tubes").tBodies[0].replaceChildren(...rows.map((r) => el("tr", { dataset: { key: r.key } },
    el("td", {}, el("a", { href: tubeHref(r.server, r.tube) }, r.tube)),
    el("td", {}, r.server),
    el("td", { class: "num" }, fmtInt(r.buried)),
    el("td", { class: "num" }, fmtInt(r.ready)))));
  $("buried-tubes-note").textContent = rows.length ? "" : "No buried jobs anywhere.";
}
const reloadBuriedTubes = debounce(() => state.view === "buried" && loadBuriedTubes().catch(showLoadError), 300);

// A ``tubes`` event, for the lists of tubes with buried jobs and of paused tubes.
export function onTubes(event) {
  const rows = event.rows.filter((r) => !r.internal);
  if (state.view === "buried" && rows.some((r) => r.buried > 0 || state.buriedKeys?.has(r.key))) reloadBuriedTubes();
  if (state.view === "apis" && event.rows.some((r) => r.pause_left > 0 || state.pausedKeys?.has(r.key))) reloadApis();
}
