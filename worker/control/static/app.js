// tubeworker dashboard: plain JavaScript, no build step, no dependencies.
//
// Data comes from the JSON endpoints under /api/ and stays live through the /events
// WebSocket (tubes, workers, job and action events): nothing reloads the page. Text from
// the server is only ever set with textContent, never parsed as HTML. The control token
// is never in the page: it is typed once and kept in this tab's sessionStorage.
"use strict";

(() => {
  const TOKEN_KEY = "tubeworker.token";
  const SVG = "http://www.w3.org/2000/svg";
  const CHART_POINTS = 120;

  const $ = (id) => document.getElementById(id);
  const state = {
    view: "overview",
    servers: [],
    overview: { q: "", sort: "tube", desc: false, page: 1, per_page: 50 },
    rows: new Map(), // key -> {row, tr}
    pages: 1,
    trend: { ready: [], done: [], failure: [], buried: [] },
    round: 0, // the poller's round the page shows (an answer older than it is stale)
    tube: null, // {server, tube}
    tubeRow: null,
    buried: { offset: 0, limit: 50, total: 0 },
    job: null, // the job document shown
    workers: [],
    apis: null,
  };
  // For measurements (tests, tests/bench): when things happened, in this page's clock.
  const probe = (window.__tubeworker = { applied: [], firstRender: null, events: 0 });

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
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

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
  const fmtRate = (n) => (n === null || n === undefined ? "–" : n >= 100 ? n.toFixed(0) : n.toFixed(1));
  const fmtPct = (r) => (r === null || r === undefined ? "–" : (r * 100).toFixed(r < 0.1 ? 1 : 0) + " %");

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
  }

  function fmtBacklog(row) {
    if (row.backlog_seconds === null || row.backlog_seconds === undefined) {
      return row.ready > 0 ? "∞" : "–";
    }
    return fmtSeconds(row.backlog_seconds);
  }

  function toast(message, kind) {
    const box = $("toast");
    box.textContent = message;
    box.className = "toast " + (kind || "info");
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (box.hidden = true), kind === "error" ? 8000 : 4000);
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  async function api(path, params) {
    const url = new URL(path, location.origin);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.error || `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // ------------------------------------------------------------------ token, confirmation, actions

  const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function askToken() {
    const dialog = $("token-dialog");
    $("token-input").value = "";
    dialog.returnValue = "";
    dialog.showModal();
  }

  $("token-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { // not the form's first button (Forget)
      event.preventDefault();
      $("token-dialog").close("save");
    }
  });

  $("token-dialog").addEventListener("close", () => {
    const answer = $("token-dialog").returnValue;
    if (answer === "save" && $("token-input").value.trim()) {
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      toast("Token kept for this tab.");
    } else if (answer === "forget") {
      sessionStorage.removeItem(TOKEN_KEY);
      toast("Token forgotten.");
    }
    $("token-input").value = "";
    showTokenState();
  });

  function showTokenState() {
    const button = $("token-button");
    button.textContent = getToken() ? "Token ✓" : "Token";
    button.title = getToken() ? "A token is kept for this tab" : "Actions need the control token";
  }

  function confirmAction(text) {
    return new Promise((resolve) => {
      const dialog = $("confirm");
      $("confirm-text").textContent = text;
      dialog.returnValue = "";
      const done = () => {
        dialog.removeEventListener("close", done);
        resolve(dialog.returnValue === "ok");
      };
      dialog.addEventListener("close", done);
      dialog.showModal();
    });
  }

  // An action: confirmed, then sent with the token; the server decides (401 without it).
  async function act(path, body, question) {
    if (!(await confirmAction(question))) return null;
    const headers = { "Content-Type": "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let response;
    try {
      response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    } catch (error) {
      toast(`Not sent: ${error.message}`, "error");
      return null;
    }
    const data = await response.json().catch(() => ({}));
    if (response.status === 401) {
      toast("Refused (401): this action needs the control token. Enter it with the Token button.", "error");
      document.body.dataset.lastAction = "refused";
      return null;
    }
    if (!response.ok) {
      toast(`Failed (${response.status}): ${data.error || response.statusText}`, "error");
      document.body.dataset.lastAction = "failed";
      return null;
    }
    document.body.dataset.lastAction = "ok";
    return data;
  }

  $("token-button").addEventListener("click", askToken);

  // ------------------------------------------------------------------ charts

  function sparkline(values, width, height, cls) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("class", cls || "spark");
    svg.setAttribute("aria-hidden", "true");
    if (values.length > 0) {
      const max = Math.max(1, ...values);
      const step = values.length > 1 ? width / (values.length - 1) : 0;
      const points = values.map((v, i) => {
        const x = values.length > 1 ? i * step : width;
        const y = height - 1 - (Math.max(0, v) / max) * (height - 2);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      const area = document.createElementNS(SVG, "polygon");
      area.setAttribute("points", `0,${height} ${points.join(" ")} ${width},${height}`);
      area.setAttribute("class", "area");
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.join(" "));
      line.setAttribute("class", "line");
      svg.append(area, line);
    }
    return svg;
  }

  function chart(container, values, format) {
    const last = values.length ? values[values.length - 1] : null;
    container.replaceChildren(
      sparkline(values.slice(-CHART_POINTS), 230, 52, "chart-svg"),
      el("span", { class: "chart-value" }, format(last))
    );
  }

  // The sampled history, then the totals now (so a chart ends where the cards are).
  function drawOverviewCharts(now) {
    const t = state.trend;
    const plus = (series, value) => (now ? [...series, value || 0] : series);
    chart($("chart-ready"), plus(t.ready, now && now.ready), fmtInt);
    chart($("chart-done"), plus(t.done, now && now.done_per_min), fmtRate);
    chart($("chart-failure"), plus(t.failure, now && now.failure_rate), fmtPct);
    chart($("chart-buried"), plus(t.buried, now && now.buried), fmtInt);
  }

  function pushTrend(totals) {
    const t = state.trend;
    t.ready.push(totals.ready);
    t.done.push(totals.done_per_min || 0);
    t.failure.push(totals.failure_rate || 0);
    t.buried.push(totals.buried);
    for (const series of Object.values(t)) if (series.length > CHART_POINTS) series.shift();
  }

  // ------------------------------------------------------------------ overview

  function card(label, value, extra) {
    return el("div", { class: "card", dataset: { card: label.toLowerCase().replace(/[^a-z]+/g, "-") } },
      el("div", { class: "card-value" }, value),
      el("div", { class: "card-label" }, label),
      extra ? el("div", { class: "card-extra muted" }, extra) : null);
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
      card("Done / min", fmtRate(totals.done_per_min)),
      card("Failure rate", fmtPct(totals.failure_rate))
    );
  }

  function renderErrors(errors) {
    const box = $("errors");
    const entries = Object.entries(errors || {});
    box.hidden = entries.length === 0;
    box.replaceChildren(...entries.map(([server, error]) => el("p", {}, `beanstalkd ${server}: ${error}`)));
  }

  const tubeHref = (server, tube) => `#/tube/${encodeURIComponent(server)}/${encodeURIComponent(tube)}`;

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
        state.servers.length > 1 ? el("span", { class: "muted server" }, " " + row.server) : null),
      el("td", { class: "num", dataset: { col: "ready" } }, cells.ready),
      el("td", { class: "spark-col", dataset: { col: "spark" } }, sparkline(row.spark || [], 90, 20)),
      ...["reserved", "delayed", "buried", "urgent", "paused", "done", "failure", "backlog"].map((col) =>
        el("td", { class: "num", dataset: { col } }, cells[col]))
    );
    if (row.buried > 0) tr.classList.add("has-buried");
    if (row.pause_left > 0) tr.classList.add("paused");
    return tr;
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
    entry.row = { ...entry.row, ...row, spark: entry.row.spark };
  }

  async function loadTubes() {
    const o = state.overview;
    const data = await api("/api/tubes", { q: o.q, sort: o.sort, desc: o.desc ? 1 : "", page: o.page, per_page: o.per_page });
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
    $("page-info").textContent = `page ${data.page} of ${data.pages} · ${fmtInt(data.total)} tubes`;
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

  async function loadOverview() {
    const data = await api("/api/overview");
    state.servers = data.servers;
    $("servers").textContent = data.servers.join(", ");
    renderErrors(data.errors);
    state.trend = { ready: [], done: [], failure: [], buried: [] };
    for (const point of data.trend) pushTrend({ ready: point.ready, done_per_min: point.done_per_min, failure_rate: point.failure_rate, buried: point.buried });
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

  function onTubesEvent(event) {
    state.round = Math.max(state.round, event.round);
    renderErrors(event.errors);
    if (event.sampled) pushTrend(event.totals);
    if (state.view === "overview") drawOverviewCharts(event.sampled ? null : event.totals);
    if (state.view === "overview") {
      renderTotals(event.totals);
      for (const row of event.rows) {
        const entry = state.rows.get(row.key);
        if (entry) patchRow(entry, row);
      }
      if (event.sampled) {
        for (const entry of state.rows.values()) {
          entry.row.spark = [...(entry.row.spark || []), entry.row.ready].slice(-60);
          entry.tr.querySelector('td[data-col="spark"]').replaceChildren(sparkline(entry.row.spark, 90, 20));
        }
      }
      const unseen = event.rows.some((row) => !state.rows.has(row.key));
      const sortedByCount = state.overview.sort !== "tube" && event.rows.length > 0;
      if (event.more > 0 || event.removed.length > 0 || (unseen && state.rows.size < state.overview.per_page) || sortedByCount) {
        reloadTubes();
      }
      document.body.dataset.round = String(event.round);
    }
    if (state.view === "tube" && state.tube) {
      const key = `${state.tube.server}|${state.tube.tube}`;
      const row = event.rows.find((r) => r.key === key);
      if (row) {
        const old = state.tubeRow;
        const buriedChanged = !old || old.buried !== row.buried;
        const pauseChanged = !old || (old.pause_left > 0) !== (row.pause_left > 0);
        state.tubeRow = { ...old, ...row };
        renderTubeCounts(state.tubeRow);
        drawTubeCharts();
        if (buriedChanged) reloadBuried();
        if (pauseChanged || event.sampled) reloadTube(); // why it is paused; the charts
      }
    }
    if (state.view === "buried" && event.rows.some((r) => r.buried > 0 || state.buriedKeys?.has(r.key))) reloadBuriedTubes();
    if (state.view === "apis" && event.rows.some((r) => r.pause_left > 0 || state.pausedKeys?.has(r.key))) reloadApis();
    probe.applied.push({ round: event.round, at: event.at, applied: Date.now() });
    if (probe.applied.length > 100) probe.applied.shift();
  }

  // ------------------------------------------------------------------ one tube

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
      card("Put in total", fmtInt(row.total_jobs))
    );
    const reason = $("tube-pause-reason");
    reason.hidden = !(row.pause_left > 0 && row.pause_reason);
    reason.textContent = row.pause_reason ? `Paused: ${row.pause_reason}` : "";
  }

  // The history's points, then the value now (a chart ends where the cards are).
  function drawTubeCharts() {
    const trend = state.tubeTrend || [];
    const row = state.tubeRow;
    chart($("tube-chart-ready"), [...trend.map((p) => p.ready), row.ready], fmtInt);
    chart($("tube-chart-done"), [...trend.map((p) => p.done_per_min), row.done_per_min || 0], fmtRate);
    chart($("tube-chart-buried"), [...trend.map((p) => p.buried), row.buried], fmtInt);
  }

  async function loadTube() {
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
        el("button", { type: "button", dataset: { action: "kick-job" }, onclick: () => kickJob(server, tube, job.id) }, "Kick"),
        el("button", { type: "button", class: "danger", dataset: { action: "delete" }, onclick: () => deleteJob(server, job.id) }, "Delete"))
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

  function openPut(tube, server) {
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

  // ------------------------------------------------------------------ workers

  function workerState(w) {
    if (!w.ok) return el("span", { class: "badge bad" }, w.error ? "unreachable" : "not read yet");
    if (w.draining) return el("span", { class: "badge warn", title: w.drain_reason || "" }, "draining");
    if (w.quiet) return el("span", { class: "badge warn" }, "quiet");
    return el("span", { class: "badge ok" }, "running");
  }

  function renderWorkers(workers) {
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
        el("button", { type: "button", dataset: { action: "quiet" }, disabled: !w.ok || w.quiet, onclick: () => quietWorker(w, "quiet") }, "Quiet"),
        el("button", { type: "button", dataset: { action: "resume" }, disabled: !w.ok || !w.quiet, onclick: () => quietWorker(w, "resume") }, "Resume"))
    )));
    if (workers.length === 0) {
      body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No daemons: list their control planes in [control] daemons, or pass --daemon.")));
    }
    $("workers-note").textContent = `${workers.length} daemon(s); read every few seconds while this page is open.`;
  }

  async function quietWorker(w, action) {
    const name = w.id === "local" ? "this daemon" : w.url;
    const question = action === "quiet"
      ? `Quiet ${name}? It stops taking jobs (running ones finish) until resumed.`
      : `Resume ${name}? It takes jobs again.`;
    const done = await act("/api/worker", { worker: w.id, action }, question);
    if (done) toast(`${name}: ${action === "quiet" ? "quiet" : "resumed"}.`);
  }

  async function loadWorkers() {
    renderWorkers((await api("/api/workers")).workers);
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
    state.pausedKeys = new Set(data.paused.map((p) => `${p.server}|${p.tube}`));
    $("paused").tBodies[0].replaceChildren(...data.paused.map((p) => el("tr", { dataset: { tube: p.tube } },
      el("td", {}, el("a", { href: tubeHref(p.server, p.tube) }, p.tube)),
      el("td", {}, p.server),
      el("td", { class: "num" }, fmtSeconds(p.pause_left)),
      el("td", {}, p.reason || ""),
      el("td", { class: "row-actions" }, el("button", { type: "button", onclick: async () => {
        const done = await act("/api/pause", { server: p.server, tube: p.tube, seconds: 0 }, `Resume tube ${p.tube}?`);
        if (done) { toast(`Resumed ${p.tube}.`); reloadApis(); }
      } }, "Resume")))));
    if (data.paused.length === 0) {
      $("paused").tBodies[0].append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No tube is paused.")));
    }
  }

  async function loadApis() {
    renderApis(await api("/api/apis"));
  }
  const reloadApis = debounce(() => state.view === "apis" && loadApis().catch(showLoadError), 300);

  // ------------------------------------------------------------------ tubes with buried jobs

  async function loadBuriedTubes() {
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

  // ------------------------------------------------------------------ event log

  function logEvent(text, kind) {
    const list = $("event-log");
    list.prepend(el("li", { class: kind || "" }, el("time", {}, new Date().toLocaleTimeString()), " ", text));
    while (list.children.length > 30) list.lastChild.remove();
  }

  // ------------------------------------------------------------------ live events

  const refresh = debounce(() => fetch("/api/refresh", { method: "POST" }).catch(() => {}), 250);
  let socket = null;
  let retry = 0;

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(`${scheme}//${location.host}/events?view=dashboard`);
    socket.addEventListener("open", () => {
      retry = 0;
      $("live").textContent = "● live";
      $("live").className = "live on";
    });
    socket.addEventListener("message", (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      probe.events += 1;
      if (event.type === "tubes") probe.tubesBytes = message.data.length;
      onEvent(event);
    });
    socket.addEventListener("close", () => {
      $("live").textContent = "reconnecting…";
      $("live").className = "live off";
      retry = Math.min(retry + 1, 5);
      setTimeout(connect, 500 * 2 ** retry);
    });
  }

  function onEvent(event) {
    switch (event.type) {
      case "hello":
        if (probe.firstRender !== null) route(); // reconnected: catch up
        break;
      case "tubes":
        onTubesEvent(event);
        break;
      case "workers":
        if (state.view === "workers") renderWorkers(event.workers);
        if (state.view === "apis") reloadApis();
        break;
      case "job":
        if (event.outcome === "buried") {
          logEvent(`job ${event.job_id} of ${event.tube} buried (${event.cause})`, "bad");
          refresh(); // ask the poller for a round soon: the page shows it without waiting
        } else if (event.outcome !== "deleted") {
          logEvent(`job ${event.job_id} of ${event.tube} ${event.outcome} (${event.cause})`, "warn");
        }
        break;
      case "jobs_summarised":
        break;
      case "breaker":
        logEvent(`API ${event.api}: ${event.state} (${event.reason})`, event.state === "open" ? "bad" : "warn");
        if (state.view === "apis") reloadApis();
        break;
      case "action":
        logEvent(`action ${event.action}: ${[event.tube, event.id, event.worker].filter((x) => x !== undefined).join(" ")} → ${JSON.stringify(event.result)}`);
        break;
      case "drain":
        logEvent(`daemon draining: ${event.reason}`, "warn");
        break;
      case "quiet":
      case "resume":
        logEvent(`daemon ${event.type === "quiet" ? "quiet" : "resumed"}`, "warn");
        break;
      case "connection_lost":
        logEvent(`connection lost: ${event.error || ""}`, "bad");
        break;
      case "dropped":
        route(); // we missed events: read the view again
        break;
      default:
        break;
    }
  }

  // ------------------------------------------------------------------ views

  function showLoadError(error) {
    toast(`Could not load: ${error.message}`, "error");
  }

  function route() {
    const hash = location.hash || "#/overview";
    const parts = hash.slice(2).split("/");
    let view = parts[0] || "overview";
    if (view === "tube" && parts.length >= 3) {
      state.tube = { server: decodeURIComponent(parts[1]), tube: decodeURIComponent(parts.slice(2).join("/")) };
      state.buried.offset = 0;
      $("job").hidden = true;
    } else if (!["overview", "workers", "apis", "buried"].includes(view)) {
      view = "overview";
    }
    state.view = view;
    for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `view-${view}`;
    for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.view === view);
    document.body.dataset.view = view;
    const loaders = { overview: loadOverview, tube: loadTube, workers: loadWorkers, apis: loadApis, buried: loadBuriedTubes };
    return loaders[view]().catch(showLoadError);
  }

  window.addEventListener("hashchange", route);
  showTokenState();
  connect();
  (async () => {
    if (!(location.hash || "#/overview").startsWith("#/overview")) {
      try {
        const data = await api("/api/overview"); // the servers, for the put dialog
        state.servers = data.servers;
        $("servers").textContent = data.servers.join(", ");
      } catch (error) {
        showLoadError(error);
      }
    }
    await route();
    document.body.dataset.ready = "1";
  })();
})();
