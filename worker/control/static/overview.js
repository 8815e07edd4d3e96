// tubeworker dashboard: the overview (totals, their charts and history, one page of tubes).

import {
  $, api, applySettings, card, chart, debounce, el, fmtBacklog, fmtInt, fmtPct, fmtRate, fmtSeconds, known,
  probe, showLoadError, sparkline, state, tubeHref, UNWATCHED_TITLE,
} from "./common.js";

// The sampled history, then the totals now (so a chart ends where the cards are).
function drawOverviewCharts(now) {
  const t = state.trend;
  const plus = (series, value) => (now ? [...series, known(value) ? value : null] : series);
  chart($("chart-ready"), plus(t.ready, now && now.ready), fmtInt);
  chart($("chart-done"), plus(t.done, now && now.done_per_min), fmtRate);
  chart($("chart-failure"), plus(t.failure, now && now.failure_rate), fmtPct);
  chart($("chart-buried"), plus(t.buried, now && now.buried), fmtInt);
}

function pushTrend(totals) {
  const t = state.trend;
  t.ready.push(totals.ready);
  t.done.push(known(totals.done_per_min) ? totals.done_per_min : null);
  t.failure.push(known(totals.failure_rate) ? totals.failure_rate : null);
  t.buried.push(totals.buried);
  for (const series of Object.values(t)) while (series.length > state.trendMax) series.shift();
}

const clock = (wall) => new Date(wall * 1000).toLocaleTimeString();
const span = (seconds) => (seconds % 60 === 0 ? `${seconds / 60} min` : fmtSeconds(seconds));

// What the charts cover: the server keeps their history whether or not a page is open;
// until it has kept all it keeps, say since when it collects.
function showHistory(history) {
  if (!history) return;
  state.trendMax = history.points;
  const note = $("history-note");
  note.dataset.since = String(history.since);
  note.textContent = history.full
    ? `Charts: the last ${span(history.seconds)}, a point every ${fmtSeconds(history.sample_every)}.`
    : `Charts: since ${clock(history.since)}, when the dashboard began collecting (it keeps ${span(history.seconds)}), a point every ${fmtSeconds(history.sample_every)}.`;
}

function renderTotals(totals) {
  $("totals").replaceChildren(
    card("Tubes", fmtInt(totals.tubes)),
    card("Ready", fmtInt(totals.ready)),
    card("Reserved", fmtInt(totals.reserved)),
    card("Delayed", fmtInt(totals.delayed)),
    card("Buried", fmtInt(totals.buried)),
    card("Urgent", fmtInt(totals.urgent)),
    card("Paused", fmtInt(totals.paused)),
    card("No worker", fmtInt(totals.unwatched), null, totals.unwatched > 0 ? UNWATCHED_TITLE : null),
    card("Done / min", fmtRate(totals.done_per_min)),
    card("Failure rate", fmtPct(totals.failure_rate))
  );
}

export function renderErrors(errors) {
  const box = $("errors");
  const entries = Object.entries(errors || {});
  box.hidden = entries.length === 0;
  box.replaceChildren(...entries.map(([server, error]) => el("p", {}, `beanstalkd ${server}: ${error}`)));
}


function rowCells(row) {
  const paused = row.pause_left > 0 ? fmtSeconds(row.pause_left) + " left" : "–";
  return {
    ready: fmtInt(row.ready),
    reserved: fmtInt(row.reserved),
    delayed: fmtInt(row.delayed),
    buried: fmtInt(row.buried),
    urgent: fmtInt(row.urgent),
    paused,
    done: fmtRate(row.done_per_min),
    failure: fmtPct(row.failure_rate),
    backlog: fmtBacklog(row),
  };
}

function buildRow(row) {
  const cells = rowCells(row);
  const tr = el("tr", { dataset: { key: row.key } },
    el("td", { dataset: { col: "tube" } },
      el("a", { href: tubeHref(row.server, row.tube) }, row.tube),
      row.internal ? el("span", { class: "badge muted-badge", title: "a tube of tubeworker's own: not in the totals" }, "tubeworker's") : null,
      state.servers.length > 1 ? el("span", { class: "muted server" }, " " + row.server) : null),
    el("td", { class: "num", dataset: { col: "ready" } }, cells.ready),
    el("td", { class: "spark-col", dataset: { col: "spark" } }, sparkline(row.spark || [], 90, 20)),
    ...["reserved", "delayed", "buried", "urgent", "paused", "done", "failure", "backlog"].map((col) =>
      el("td", { class: "num", dataset: { col } }, cells[col]))
  );
  if (row.buried > 0) tr.classList.add("has-buried");
  if (row.pause_left > 0) tr.classList.add("paused");
  markUnwatched(tr, row);
  return tr;
}

function markUnwatched(tr, row) {
  tr.classList.toggle("unwatched", !!row.unwatched);
  const td = tr.querySelector('td[data-col="backlog"]');
  if (row.unwatched) td.title = UNWATCHED_TITLE;
  else td.removeAttribute("title");
}

function patchRow(entry, row) {
  const cells = rowCells(row);
  for (const [col, text] of Object.entries(cells)) {
    const td = entry.tr.querySelector(`td[data-col="${col}"]`);
    if (td && td.textContent !== text) {
      td.textContent = text;
      td.classList.remove("changed");
      void td.offsetWidth; // restart the highlight
      td.classList.add("changed");
    }
  }
  entry.tr.classList.toggle("has-buried", row.buried > 0);
  entry.tr.classList.toggle("paused", row.pause_left > 0);
  markUnwatched(entry.tr, row);
  entry.row = { ...entry.row, ...row, spark: entry.row.spark };
}

async function loadTubes() {
  const o = state.overview;
  const data = await api("/api/tubes", { q: o.q, sort: o.sort, desc: o.desc ? 1 : "", page: o.page, per_page: o.per_page, internal: o.internal ? 1 : "" });
  if (data.round < state.round) {
    reloadTubes(); // answered before an event the page has applied since: ask again
    return;
  }
  state.round = data.round;
  o.page = data.page;
  state.pages = data.pages;
  const body = $("tubes").tBodies[0];
  state.rows = new Map();
  const trs = data.rows.map((row) => {
    const tr = buildRow(row);
    state.rows.set(row.key, { row, tr });
    return tr;
  });
  body.replaceChildren(...trs);
  if (data.rows.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 11, class: "muted" }, o.q ? "No tube matches." : "No tubes yet.")));
  }
  const own = data.internal_tubes
    ? ` (${fmtInt(data.internal_tubes)} of tubeworker's own ${o.internal ? "shown, not in the totals" : "hidden"})`
    : "";
  $("page-info").textContent = `page ${data.page} of ${data.pages} · ${fmtInt(data.total)} tubes${own}`;
  $("prev").disabled = data.page <= 1;
  $("next").disabled = data.page >= data.pages;
  for (const th of $("tubes").tHead.rows[0].cells) {
    th.classList.toggle("sorted", th.dataset.sort === o.sort);
    th.classList.toggle("desc", th.dataset.sort === o.sort && o.desc);
  }
  renderTotals(data.totals);
  document.body.dataset.round = String(data.round);
  if (probe.firstRender === null) probe.firstRender = performance.now();
}

export async function loadOverview() {
  const data = await api("/api/overview");
  applySettings(data);
  renderErrors(data.errors);
  showHistory(data.history);
  state.trend = { ready: [], done: [], failure: [], buried: [] };
  for (const point of data.trend) pushTrend(point);
  renderTotals(data.totals);
  drawOverviewCharts(data.totals);
  await loadTubes();
}

const reloadTubes = debounce(() => loadTubes().catch(showLoadError), 250);

$("filter").addEventListener("input", debounce(() => {
  state.overview.q = $("filter").value;
  state.overview.page = 1;
  loadTubes().catch(showLoadError);
}, 200));
$("show-internal").addEventListener("change", () => {
  state.overview.internal = $("show-internal").checked;
  state.overview.page = 1;
  loadTubes().catch(showLoadError);
});
$("per-page").addEventListener("change", () => {
  state.overview.per_page = Number($("per-page").value);
  state.overview.page = 1;
  loadTubes().catch(showLoadError);
});
$("prev").addEventListener("click", () => { state.overview.page -= 1; loadTubes().catch(showLoadError); });
$("next").addEventListener("click", () => { state.overview.page += 1; loadTubes().catch(showLoadError); });
for (const th of document.querySelectorAll("#tubes th[data-sort]")) {
  th.addEventListener("click", () => {
    const o = state.overview;
    if (o.sort === th.dataset.sort) o.desc = !o.desc;
    else { o.sort = th.dataset.sort; o.desc = th.dataset.sort !== "tube"; }
    o.page = 1;
    loadTubes().catch(showLoadError);
  });
}

// Whether the overview shows this tube (tubeworker's own only when asked).
const listed = (tube) => state.overview.internal || !tube.startsWith(state.internalPrefix);

// A ``tubes`` event (the rows that changed in a round of the poller), for the overview.
export function onTubes(event) {
  const rows = event.rows.filter((row) => listed(row.tube));
  const removed = event.removed.filter((key) => listed(key.slice(key.indexOf("|") + 1)));
  if (event.sampled) pushTrend(event.totals);
  if (state.view !== "overview") return;
  drawOverviewCharts(event.sampled ? null : event.totals);
  renderTotals(event.totals);
  for (const row of rows) {
    const entry = state.rows.get(row.key);
    if (entry) patchRow(entry, row);
  }
  if (event.sampled) {
    for (const entry of state.rows.values()) {
      entry.row.spark = [...(entry.row.spark || []), entry.row.ready].slice(-60);
      entry.tr.querySelector('td[data-col="spark"]').replaceChildren(sparkline(entry.row.spark, 90, 20));
    }
  }
  const unseen = rows.some((row) => !state.rows.has(row.key));
  const sortedByCount = state.overview.sort !== "tube" && rows.length > 0;
  if (event.more > 0 || removed.length > 0 || (unseen && state.rows.size < state.overview.per_page) || sortedByCount) {
    reloadTubes();
  }
  document.body.dataset.round = String(event.round);
}
