// tubeworker dashboard: the Batches view (docs/workflows.md#batches). Every batch of every
// server, read from beanstalkd when the view opens: its state, pending / succeeded /
// buried, age, description, and each callback fired or waiting with its tube and task; a
// click on a batch shows it alone. Read only: no action here. Read again at once when a
// "batch" event says a callback fired, and when a round of the poller changes a batch's
// tube (tubeworker.batch.ID): a job of it ended, or it was forgotten.

import { $, api, debounce, el, fmtInt, fmtSeconds, probe, showLoadError, state } from "./common.js";

const BATCH_TUBE = "tubeworker.batch.";
const KINDS = ["success", "complete", "death"];
const STATE_BADGE = { open: "muted-badge", running: "warn", complete: "bad", succeeded: "ok", unknown: "muted-badge" };
const STATE_TITLE = {
  open: "Its maker has not closed it yet: callbacks wait for the close.",
  running: "Closed; some of its jobs have not ended yet.",
  complete: "Every job ended, some buried: on_complete fires, on_success never will.",
  succeeded: "Every job succeeded.",
  unknown: "Its maker died while opening it: it is forgotten after its retention.",
};

probe.batchEvents = 0;
state.batch = null; // the batch shown alone: {server, id}
let shown = { rows: [], at: 0 }; // the listing, and when it was read (this page's clock)
let detail = { row: null, at: 0 }; // the batch shown alone, and when it was read

const keyOf = (server, id) => `${server}|${id}`;

function stateBadge(s) {
  return el("span", { class: `badge ${STATE_BADGE[s] || "muted-badge"}`, title: STATE_TITLE[s] || "" }, s);
}

// Age now: the server's age when read, plus the time since.
function ageNow(row, at = shown.at) {
  if (row.age === null || row.age === undefined) return null;
  return row.age + (Date.now() - at) / 1000;
}

function callbackLine(kind, cb) {
  return el("div", { class: "callback", dataset: { kind, fired: cb.fired ? "1" : "0" } },
    el("span", { class: `badge ${cb.fired ? "ok" : "muted-badge"}` }, cb.fired ? "fired" : "waiting"),
    ` on_${kind} → `,
    el("span", { class: "mono" }, cb.tube),
    el("span", { class: "muted" }, ` ${cb.task}`));
}

function callbacksCell(row) {
  const lines = KINDS.filter((kind) => row.callbacks[kind]).map((kind) => callbackLine(kind, row.callbacks[kind]));
  return lines.length ? lines : el("span", { class: "muted" }, "none");
}

function batchRow(row) {
  const key = keyOf(row.server, row.id);
  const selected = state.batch && keyOf(state.batch.server, state.batch.id) === key;
  return el("tr", {
    class: selected ? "clickable selected" : "clickable",
    dataset: { batch: row.id, server: row.server, state: row.state },
    title: "Show this batch",
    onclick: () => showBatch(row.server, row.id),
  },
    el("td", { dataset: { col: "id" } }, el("span", { class: "link mono" }, row.id),
      state.servers.length > 1 ? el("span", { class: "muted server" }, ` ${row.server}`) : null),
    el("td", { dataset: { col: "state" } }, stateBadge(row.state)),
    el("td", { class: "num", dataset: { col: "counts" } },
      `${fmtInt(row.pending)} / ${fmtInt(row.succeeded)} / ${fmtInt(row.buried)}`),
    el("td", { class: "num", dataset: { col: "age" } }, fmtSeconds(ageNow(row))),
    el("td", { class: "reason", dataset: { col: "description" } }, row.description || ""),
    el("td", { dataset: { col: "callbacks" } }, callbacksCell(row)));
}

function renderErrors(errors) {
  const box = $("batches-errors");
  const entries = Object.entries(errors || {});
  box.hidden = entries.length === 0;
  box.replaceChildren(...entries.map(([server, error]) => el("p", { dataset: { server } }, `beanstalkd ${server}: ${error}`)));
}

export function renderBatches(data) {
  shown = { rows: data.batches, at: Date.now() };
  const body = $("batches").tBodies[0];
  body.replaceChildren(...data.batches.map(batchRow));
  if (data.batches.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No batches on the servers read.")));
  }
  renderErrors(data.errors);
  const capped = data.servers.filter((s) => s.capped).map((s) => s.server);
  $("batches-note").textContent =
    `${fmtInt(data.batches.length)} batch(es), newest first; read from beanstalkd when this view opens, ` +
    "when a callback fires and when a batch's tube changes." +
    (capped.length ? ` Only the first ${data.limit} of ${capped.join(", ")}.` : "");
  document.body.dataset.batchesLoaded = String(Date.now());
}

export async function loadBatches() {
  const data = await api("/api/batches");
  renderBatches(data);
  if (state.batch) await loadBatch();
}

// ------------------------------------------------------------------ one batch

function showBatch(server, id) {
  state.batch = { server, id };
  for (const tr of $("batches").tBodies[0].rows) {
    tr.classList.toggle("selected", tr.dataset.batch === id && tr.dataset.server === server);
  }
  loadBatch().catch(showLoadError);
}

function renderBatch(row) {
  detail = { row, at: Date.now() };
  const created = row.created ? new Date(row.created * 1000).toLocaleString() : "–";
  const stat = (label, value, col) => [el("dt", {}, label), el("dd", { dataset: { col } }, value)];
  $("batch-title").textContent = `Batch ${row.id}`;
  $("batch-server").textContent = `on ${row.server}`;
  $("batch-stats").replaceChildren(
    ...stat("State", stateBadge(row.state), "state"),
    ...stat("Pending", fmtInt(row.pending), "pending"),
    ...stat("Succeeded", fmtInt(row.succeeded), "succeeded"),
    ...stat("Buried", fmtInt(row.buried), "buried"),
    ...stat("Abandoned", fmtInt(row.abandoned), "abandoned"),
    ...stat("Opened", created, "created"),
    ...stat("Age", fmtSeconds(row.age), "age"),
    ...stat("Tube", `${BATCH_TUBE}${row.id}`, "tube"));
  $("batch-description").textContent = row.description || "";
  $("batch-description").hidden = !row.description;
  const kinds = KINDS.filter((kind) => row.callbacks[kind]);
  $("batch-callbacks").tBodies[0].replaceChildren(...kinds.map((kind) => {
    const cb = row.callbacks[kind];
    return el("tr", { dataset: { kind, fired: cb.fired ? "1" : "0" } },
      el("td", {}, `on_${kind}`),
      el("td", { dataset: { col: "fired" } }, el("span", { class: `badge ${cb.fired ? "ok" : "muted-badge"}` }, cb.fired ? "fired" : "waiting")),
      el("td", { class: "num" }, cb.job),
      el("td", {}, cb.tube),
      el("td", {}, cb.task));
  }));
  if (kinds.length === 0) {
    $("batch-callbacks").tBodies[0].append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No callbacks.")));
  }
  $("batch").dataset.state = row.state;
}

async function loadBatch() {
  const { server, id } = state.batch;
  const panel = $("batch");
  try {
    renderBatch(await api("/api/batch", { server, id }));
    $("batch-gone").hidden = true;
  } catch (error) {
    if (error.status !== 404) throw error;
    $("batch-gone").textContent = error.message;
    $("batch-gone").hidden = false;
  }
  panel.hidden = false;
}

$("batch-close").addEventListener("click", () => {
  state.batch = null;
  $("batch").hidden = true;
  for (const tr of $("batches").tBodies[0].rows) tr.classList.remove("selected");
});

// ------------------------------------------------------------------ live

const reloadBatches = debounce(() => state.view === "batches" && loadBatches().catch(showLoadError), 300);
const reloadSoon = debounce(() => state.view === "batches" && loadBatches().catch(showLoadError), 50);

// A ``tubes`` event: a batch's tube changed (a job of it ended) or went (forgotten).
export function onTubes(event) {
  if (state.view !== "batches") return;
  const touched = event.rows.some((row) => row.tube.startsWith(BATCH_TUBE))
    || event.removed.some((key) => key.slice(key.indexOf("|") + 1).startsWith(BATCH_TUBE));
  if (touched || event.more > 0) reloadBatches();
}

// A ``batch`` event: a daemon fired one of a batch's callbacks.
export function onBatch() {
  probe.batchEvents += 1;
  reloadSoon();
}

// The ages move on between reads.
setInterval(() => {
  if (state.view !== "batches") return;
  const rows = new Map(shown.rows.map((row) => [keyOf(row.server, row.id), row]));
  for (const tr of $("batches").tBodies[0].rows) {
    const row = rows.get(keyOf(tr.dataset.server, tr.dataset.batch));
    const td = tr.querySelector('td[data-col="age"]');
    if (row && td) td.textContent = fmtSeconds(ageNow(row));
  }
  const age = document.querySelector('#batch-stats [data-col="age"]');
  if (detail.row && age) age.textContent = fmtSeconds(ageNow(detail.row, detail.at));
}, 1000);
