// tubeworker dashboard: plain JavaScript modules, no build step, no dependencies.
//
// Data comes from the JSON endpoints under /api/ and stays live through the /events
// WebSocket (tubes, workers, job, batch and action events): nothing reloads the page. This
// module routes between the views, listens to /events and starts the page; the views are
// in overview.js, tube.js, fleet.js, batches.js, schedules.js and servers.js, what they
// share in common.js, actions in actions.js.

import { $, api, applySettings, debounce, renderTroubles, el, probe, showLoadError, state } from "./common.js";
import * as batches from "./batches.js";
import "./browse.js";
import * as fleet from "./fleet.js";
import * as overview from "./overview.js";
import * as schedules from "./schedules.js";
import * as servers from "./servers.js";
import * as tube from "./tube.js";

// ------------------------------------------------------------------ event log

function logEvent(text, kind) {
  const list = $("event-log");
  list.prepend(el("li", { class: kind || "" }, el("time", {}, new Date().toLocaleTimeString()), " ", text));
  while (list.children.length > 30) list.lastChild.remove();
}

// ------------------------------------------------------------------ live events

const refresh = debounce(() => {
  const token = sessionStorage.getItem("tubeworker.token");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  fetch("/api/refresh", { method: "POST", headers }).catch(() => {});
}, 250);
let socket = null;
let retry = 0;
let reconnecting = null; // the timer of the next try

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = sessionStorage.getItem("tubeworker.token");
  const auth = token ? `&token=${encodeURIComponent(token)}` : "";
  socket = new WebSocket(`${scheme}//${location.host}/events?view=dashboard${auth}`);
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
    reconnecting = setTimeout(connect, 500 * 2 ** retry);
  });
}

// A round of the poller: what changed, for each view.
function onTubesEvent(event) {
  state.round = Math.max(state.round, event.round);
  overview.renderErrors(event.errors);
  overview.onTubes(event);
  tube.onTubes(event);
  fleet.onTubes(event);
  batches.onTubes(event);
  probe.applied.push({ round: event.round, at: event.at, applied: Date.now() });
  if (probe.applied.length > 100) probe.applied.shift();
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
      renderTroubles(event.troubles || []);
      if (state.view === "workers") {
        fleet.renderWorkers(event.workers);
        fleet.renderHandlers(event.handlers || []);
      }
      if (state.view === "apis") fleet.reloadApis();
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
      if (state.view === "apis") fleet.reloadApis();
      break;
    case "batch":
      logEvent(`batch ${event.batch}: on_${event.callback} fired (job ${event.job_id})`);
      batches.onBatch(event);
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

function route() {
  const hash = location.hash || "#/overview";
  const parts = hash.slice(2).split("/");
  let view = parts[0] || "overview";
  if (view === "tube" && parts.length >= 3) {
    state.tube = { server: decodeURIComponent(parts[1]), tube: decodeURIComponent(parts.slice(2).join("/")) };
    state.buried.offset = 0;
    $("job").hidden = true;
  } else if (!["overview", "workers", "apis", "buried", "batches", "schedules", "servers"].includes(view)) {
    view = "overview";
  }
  state.view = view;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `view-${view}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.dataset.view === view);
  document.body.dataset.view = view;
  const loaders = {
    overview: overview.loadOverview,
    tube: tube.loadTube,
    workers: fleet.loadWorkers,
    apis: fleet.loadApis,
    buried: fleet.loadBuriedTubes,
    batches: batches.loadBatches,
    schedules: schedules.loadSchedules,
    servers: servers.loadServers,
  };
  return loaders[view]().catch(showLoadError);
}

// A token saved or forgotten where reads need one: read everything again with it, and
// reconnect the live events (their ?token= is read when connecting).
window.addEventListener("tubeworker-token", async () => {
  if (!state.readsNeedToken && !state.loginNeeded) return; // reads are open: nothing changes
  clearTimeout(reconnecting);
  if (socket && socket.readyState <= WebSocket.OPEN) {
    retry = -1; // its close handler tries again in half a second, with the new token
    socket.close();
  } else {
    retry = 0;
    connect();
  }
  try {
    applySettings(await api("/api/overview"));
  } catch (error) {
    showLoadError(error);
    return;
  }
  await route();
});

window.addEventListener("hashchange", route);
connect();
(async () => {
  if (!(location.hash || "#/overview").startsWith("#/overview")) {
    try {
      applySettings(await api("/api/overview")); // the servers; whether actions are taken
    } catch (error) {
      showLoadError(error);
    }
  }
  await route();
  document.body.dataset.ready = "1";
})();
