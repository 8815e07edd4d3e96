// tubeworker dashboard: one tube (counts, history, buried jobs with their reasons, a job's
// body) and the put dialog.

import { act } from "./actions.js";
import {
  $, api, card, chart, debounce, el, fmtBacklog, fmtInt, fmtPct, fmtRate, fmtSeconds, known,
  showLoadError, state, toast,
} from "./common.js";

function renderTubeCounts(row) {
  const paused = row.pause_left > 0 ? `${fmtSeconds(row.pause_left)} left` : "no";
  $("tube-counts").replaceChildren(
    card("Ready", fmtInt(row.ready)),
    card("Reserved", fmtInt(row.reserved)),
    card("Delayed", fmtInt(row.delayed)),
    card("Buried", fmtInt(row.buried)),
    card("Urgent", fmtInt(row.urgent)),
    card("Paused", paused),
    card("Done / min", fmtRate(row.done_per_min)),
    card("Failure rate", fmtPct(row.failure_rate)),
    card("Backlog", fmtBacklog(row)),
    card("Watching", fmtInt(row.watching)),
    card("Put in total", fmtInt(row.total_jobs))
  );
  const unwatched = $("tube-unwatched");
  unwatched.hidden = !row.unwatched;
  unwatched.textContent = row.unwatched
    ? `No worker watches this tube: its ${fmtInt(row.ready)} ready jobs wait until one does (beanstalkd: current-watching 0). Check the workers' tubes.`
    : "";
  const reason = $("tube-pause-reason");
  reason.hidden = !(row.pause_left > 0 && row.pause_reason);
  reason.textContent = row.pause_reason ? `Paused: ${row.pause_reason}` : "";
}

// The history's points, then the value now (a chart ends where the cards are).
function drawTubeCharts() {
  const trend = state.tubeTrend || [];
  const row = state.tubeRow;
  chart($("tube-chart-ready"), [...trend.map((p) => p.ready), row.ready], fmtInt);
  chart($("tube-chart-done"), [...trend.map((p) => p.done_per_min), known(row.done_per_min) ? row.done_per_min : null], fmtRate);
  chart($("tube-chart-buried"), [...trend.map((p) => p.buried), row.buried], fmtInt);
  const oldest = trend.length ? trend[0].ago : 0;
  $("tube-history-note").textContent = trend.length
    ? `Charts: since ${new Date(Date.now() - oldest * 1000).toLocaleTimeString()} (${fmtSeconds(oldest)}), a point every ${fmtSeconds(state.tubeRow.sample_every)}.`
    : "";
}

export async function loadTube() {
  const { server, tube } = state.tube;
  $("tube-title").textContent = tube;
  $("tube-server").textContent = `on ${server}`;
  let data;
  try {
    data = await api("/api/tube", { server, tube });
  } catch (error) {
    if (error.status !== 404) throw error;
    $("tube-counts").replaceChildren(el("p", { class: "muted" }, `Tube ${tube} is not on ${server} now (a tube exists while it has jobs or watchers).`));
    $("buried").tBodies[0].replaceChildren();
    return;
  }
  if (data.round >= state.round) {
    state.round = data.round;
    state.tubeRow = data;
    renderTubeCounts(data);
  } else {
    // Answered before an event the page has applied since: keep the counts, take the why.
    state.tubeRow = { ...data, ...state.tubeRow, pause_reason: data.pause_reason };
    renderTubeCounts(state.tubeRow);
  }
  state.tubeTrend = data.trend;
  drawTubeCharts();
  await loadBuried();
}

const reloadTube = debounce(() => state.view === "tube" && loadTube().catch(showLoadError), 300);

async function loadBuried() {
  const { server, tube } = state.tube;
  const body = $("buried").tBodies[0];
  let data;
  try {
    data = await api("/api/buried", { server, tube, offset: state.buried.offset, limit: state.buried.limit });
  } catch (error) {
    if (error.status !== 404) throw error;
    body.replaceChildren();
    $("buried-count").textContent = "";
    return;
  }
  state.buried.total = data.recorded;
  $("buried-count").textContent = `(${fmtInt(data.buried)})`;
  body.replaceChildren(...data.jobs.map((job) => buriedRow(job, server, tube)));
  if (data.jobs.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, data.buried ? "No recorded reasons on this page." : "No buried jobs.")));
  }
  const notes = [];
  if (data.unrecorded) notes.push(`${data.unrecorded} buried with no recorded reason (by another client, or before tubeworker kept reasons): use Peek buried to see the next one.`);
  if (data.capped) notes.push(`Showing reasons of the first ${data.recorded} records only.`);
  $("buried-note").textContent = notes.join(" ");
  const page = Math.floor(data.offset / data.limit) + 1;
  const pages = Math.max(1, Math.ceil(data.recorded / data.limit));
  $("buried-page").textContent = `page ${page} of ${pages}`;
  $("buried-prev").disabled = data.offset <= 0;
  $("buried-next").disabled = data.offset + data.limit >= data.recorded;
  document.body.dataset.buriedLoaded = String(Date.now());
}

const reloadBuried = debounce(() => state.view === "tube" && loadBuried().catch(showLoadError), 200);

function preview(p) {
  if (!p) return el("span", { class: "muted" }, "(gone)");
  const pre = el("pre", { class: "preview" }, p.text);
  return el("div", {}, el("span", { class: "muted" }, `${p.kind}, ${fmtInt(p.size)} bytes`), pre);
}

function buriedRow(job, server, tube) {
  return el("tr", { dataset: { job: job.id } },
    el("td", { class: "num" }, job.id),
    el("td", { class: "num" }, fmtSeconds(job.age)),
    el("td", { class: "num" }, job.attempts),
    el("td", { dataset: { col: "cause" } }, job.cause),
    el("td", { class: "reason", dataset: { col: "reason" } }, job.reason),
    el("td", { class: "body-col" }, preview(job.preview)),
    el("td", { class: "row-actions" },
      el("button", { type: "button", dataset: { action: "view" }, onclick: () => showJob(server, job.id, job) }, "View"),
      el("button", { type: "button", class: "act", dataset: { action: "kick-job" }, onclick: () => kickJob(server, tube, job.id) }, "Kick"),
      el("button", { type: "button", class: "danger act", dataset: { action: "delete" }, onclick: () => deleteJob(server, job.id) }, "Delete"))
  );
}

async function kickJob(server, tube, id) {
  const done = await act("/api/kick-job", { server, id }, `Kick job ${id} of tube ${tube} back to ready?`);
  if (done) { toast(`Kicked job ${id}.`); afterAction(); }
}

async function deleteJob(server, id) {
  const done = await act("/api/delete", { server, id }, `Delete job ${id} for good? This cannot be undone.`);
  if (done) { toast(`Deleted job ${id}.`); $("job").hidden = true; afterAction(); }
}

function afterAction() {
  if (state.view === "tube") { reloadTube(); reloadBuried(); }
}

function renderJob(doc, record) {
  state.job = doc;
  $("job").hidden = false;
  $("job-title").textContent = `Job ${doc.id}` + (doc.task ? ` · task ${doc.task}` : "");
  const stats = doc.stats;
  const facts = stats
    ? [["tube", stats.tube], ["state", stats.state], ["priority", stats.pri], ["age", fmtSeconds(stats.age)],
       ["delay", fmtSeconds(stats.delay)], ["ttr", fmtSeconds(stats.ttr)],
       ["reserves", stats.reserves], ["releases", stats.releases], ["timeouts", stats.timeouts],
       ["buries", stats.buries], ["kicks", stats.kicks]]
    : [["stats", "gone (deleted meanwhile)"]];
  if (record) facts.push(["cause", record.cause], ["reason", record.reason]);
  $("job-stats").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  $("job-traceback").hidden = !(record && record.traceback);
  $("job-traceback").textContent = (record && record.traceback) || "";
  $("job-kind").textContent = `body: ${fmtInt(doc.body.size)} bytes, ${doc.body.kind}`;
  $("job-body").textContent = doc.body.text;
  $("job-note").hidden = !doc.body.note;
  $("job-note").textContent = doc.body.note ? `(${doc.body.note})` : "";
  $("job-download").href = doc.download;
  $("job-download").setAttribute("download", `job-${doc.id}.bin`);
  $("job-download").hidden = doc.body.kind === "withheld"; // a viewer's: no body to fetch
  $("job-kick").hidden = !(stats && (stats.state === "buried" || stats.state === "delayed"));
  $("job").scrollIntoView({ block: "nearest" });
}

async function showJob(server, id, record) {
  try {
    renderJob(await api("/api/job", { server, id }), record);
  } catch (error) {
    toast(`Job ${id}: ${error.message}`, "error");
  }
}

async function peek(stateName) {
  const { server, tube } = state.tube;
  try {
    renderJob(await api("/api/peek", { server, tube, state: stateName }));
  } catch (error) {
    toast(error.status === 404 ? `No ${stateName} job in ${tube}.` : error.message, error.status === 404 ? "info" : "error");
  }
}

// Where reads need a token a plain link cannot send it: fetch with it, then save.
$("job-download").addEventListener("click", async (event) => {
  const token = sessionStorage.getItem("tubeworker.token");
  if (!state.readsNeedToken || !token) return; // the link as it is
  event.preventDefault();
  const link = event.currentTarget;
  const response = await fetch(link.href, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    toast(`Download refused (${response.status})`, "error");
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const save = el("a", { href: url, download: link.getAttribute("download") });
  document.body.append(save);
  save.click();
  save.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
});

$("peek-ready").addEventListener("click", () => peek("ready"));
$("peek-delayed").addEventListener("click", () => peek("delayed"));
$("peek-buried").addEventListener("click", () => peek("buried"));
$("job-kick").addEventListener("click", () => state.job && kickJob(state.job.server, state.tube.tube, state.job.id));
$("job-delete").addEventListener("click", () => state.job && deleteJob(state.job.server, state.job.id));
$("buried-prev").addEventListener("click", () => { state.buried.offset = Math.max(0, state.buried.offset - state.buried.limit); loadBuried().catch(showLoadError); });
$("buried-next").addEventListener("click", () => { state.buried.offset += state.buried.limit; loadBuried().catch(showLoadError); });

$("tube-pause").addEventListener("click", async () => {
  const { server, tube } = state.tube;
  const seconds = $("tube-pause-seconds").value.trim();
  const done = await act("/api/pause", { server, tube, seconds }, `Pause tube ${tube} for ${seconds} s? No worker (of any kind) will get its jobs meanwhile.`);
  if (done) { toast(`Paused ${tube} for ${done.paused} s.`); afterAction(); }
});
$("tube-resume").addEventListener("click", async () => {
  const { server, tube } = state.tube;
  const done = await act("/api/pause", { server, tube, seconds: 0 }, `Resume tube ${tube}?`);
  if (done) { toast(`Resumed ${tube}.`); afterAction(); }
});
$("tube-kick-all").addEventListener("click", async () => {
  const { server, tube } = state.tube;
  const count = state.tubeRow ? state.tubeRow.buried : "all";
  const done = await act("/api/kick", { server, tube }, `Kick all ${count} buried jobs of tube ${tube} back to ready?`);
  if (done) { toast(`Kicked ${done.kicked} jobs.`); afterAction(); }
});
$("tube-kick-reason").addEventListener("click", async () => {
  const { server, tube } = state.tube;
  const reason = $("tube-kick-reason-text").value.trim();
  if (!reason) { toast("Type a reason (text it contains) or a cause first."); return; }
  const done = await act("/api/kick-reason", { server, tube, reason }, `Kick the buried jobs of ${tube} whose reason contains “${reason}”?`);
  if (done) { toast(`Kicked ${done.kicked} jobs.`); afterAction(); }
});

// ------------------------------------------------------------------ put

// Saved job templates: kept in this browser (localStorage), exported and imported as JSON.
const TEMPLATES_KEY = "tubeworker.templates";
const FIELDS = ["tube", "body", "priority", "delay", "ttr"];

function templates() {
  try {
    const saved = JSON.parse(localStorage.getItem(TEMPLATES_KEY) || "[]");
    return Array.isArray(saved) ? saved.filter(validTemplate) : [];
  } catch (error) {
    return [];
  }
}

function validTemplate(t) {
  return t && typeof t.name === "string" && t.name && FIELDS.every((f) => t[f] === undefined || typeof t[f] === "string");
}

function keepTemplates(list) {
  list.sort((a, b) => a.name.localeCompare(b.name));
  localStorage.setItem(TEMPLATES_KEY, JSON.stringify(list));
  showTemplates();
}

function showTemplates(selected) {
  const select = $("put-template");
  select.replaceChildren(el("option", { value: "" }, "(none)"),
    ...templates().map((t) => el("option", { value: t.name, selected: t.name === selected }, t.name)));
}

$("put-template").addEventListener("change", () => {
  const found = templates().find((t) => t.name === $("put-template").value);
  if (!found) return;
  for (const f of FIELDS) if (found[f] !== undefined) $(`put-${f}`).value = found[f];
  $("put-template-name").value = found.name;
});
$("put-template-save").addEventListener("click", () => {
  const name = $("put-template-name").value.trim();
  if (!name) { toast("Name the template first.", "error"); return; }
  const entry = { name };
  for (const f of FIELDS) entry[f] = $(`put-${f}`).value;
  keepTemplates([...templates().filter((t) => t.name !== name), entry]);
  showTemplates(name);
  toast(`Template “${name}” saved in this browser.`);
});
$("put-template-delete").addEventListener("click", () => {
  const name = $("put-template").value;
  if (!name) return;
  keepTemplates(templates().filter((t) => t.name !== name));
  toast(`Template “${name}” deleted.`);
});
$("put-templates-export").addEventListener("click", () => {
  const link = $("put-templates-link");
  link.href = `data:application/json;charset=utf-8,${encodeURIComponent(JSON.stringify(templates(), null, 2))}`;
  link.click();
});
$("put-templates-import").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  let imported;
  try {
    imported = JSON.parse(await file.text());
  } catch (error) {
    toast(`Not JSON: ${error.message}`, "error");
    return;
  }
  if (!Array.isArray(imported) || !imported.every(validTemplate)) {
    toast("Not a template list: expected [{\"name\": …, \"tube\": …, \"body\": …}, …].", "error");
    return;
  }
  const names = new Set(imported.map((t) => t.name));
  keepTemplates([...templates().filter((t) => !names.has(t.name)), ...imported]);
  toast(`Imported ${imported.length} template(s).`);
  event.target.value = "";
});

function openPut(tube, server) {
  showTemplates();
  $("put-tube").value = tube || "";
  const select = $("put-server");
  select.replaceChildren(...state.servers.map((s) => el("option", { value: s, selected: s === server }, s)));
  $("put-dialog").returnValue = "";
  $("put-dialog").showModal();
}

$("put-button").addEventListener("click", () => openPut("", state.servers[0]));
$("tube-put").addEventListener("click", () => openPut(state.tube.tube, state.tube.server));
$("put-dialog").addEventListener("close", async () => {
  if ($("put-dialog").returnValue !== "send") return;
  const body = {
    server: $("put-server").value,
    tube: $("put-tube").value.trim(),
    body: $("put-body").value,
    priority: $("put-priority").value.trim(),
    delay: $("put-delay").value.trim(),
    ttr: $("put-ttr").value.trim(),
  };
  const done = await act("/api/put", body, `Put a job of ${new Blob([body.body]).size} bytes into ${body.tube}?`);
  if (done) { toast(`Put job ${done.id} into ${body.tube}.`); afterAction(); }
});

// A ``tubes`` event, for the tube shown (its row, when it changed).
export function onTubes(event) {
  if (state.view !== "tube" || !state.tube) return;
  const key = `${state.tube.server}|${state.tube.tube}`;
  const row = event.rows.find((r) => r.key === key);
  if (!row) return;
  const old = state.tubeRow;
  const buriedChanged = !old || old.buried !== row.buried;
  const pauseChanged = !old || (old.pause_left > 0) !== (row.pause_left > 0);
  state.tubeRow = { ...old, ...row };
  renderTubeCounts(state.tubeRow);
  drawTubeCharts();
  if (buriedChanged) reloadBuried();
  if (pauseChanged || event.sampled) reloadTube(); // why it is paused; the charts
}
