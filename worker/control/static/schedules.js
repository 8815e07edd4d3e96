// tubeworker dashboard: the Schedules view. Each schedule's tick as the tick server holds it
// (next and last fire, paused, its state) with Trigger / Pause / Resume, and each
// heartbeat's last run (stale past 3 × its interval, as TubeworkerHeartbeatStale says).

import { act } from "./actions.js";
import { $, api, el, fmtDuration, toast } from "./common.js";

function ago(iso) {
  if (!iso) return "–";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return seconds >= 0 ? `${fmtDuration(seconds)} ago` : `in ${fmtDuration(-seconds)}`;
}

function when(iso) {
  return iso ? el("span", { title: iso }, iso.replace("T", " ").replace("Z", " UTC"), el("div", { class: "muted small" }, ago(iso))) : "–";
}

function stateBadge(s) {
  if (s.paused_until) return el("span", { class: "badge warn", title: s.paused_until }, `paused until ${s.paused_until.replace("T", " ").replace("Z", " UTC")}`);
  const kind = s.state.startsWith("missing") ? "bad" : "ok";
  return el("span", { class: `badge ${kind}` }, s.state);
}

async function scheduleAction(s, action) {
  let body = { name: s.name, action };
  let question;
  if (action === "trigger") {
    question = `Trigger ${s.name} now? One job is put into ${s.tube}, outside the plan.`;
  } else if (action === "pause") {
    const seconds = ($(`pause-for-${s.name}`) || {}).value || "1h";
    body = { ...body, seconds };
    question = `Pause ${s.name} for ${seconds}? Every fire due meanwhile is skipped (on every daemon).`;
  } else {
    question = `Resume ${s.name}? Its next fire runs again.`;
  }
  const done = await act("/api/schedule", body, question);
  if (done) {
    toast(action === "trigger" ? `${s.name}: job ${done.id} put (${done.fire}).` : `${s.name}: ${action}d.`);
    await loadSchedules();
  }
}

export function renderSchedules(data) {
  const body = $("schedules").tBodies[0];
  body.replaceChildren(...data.schedules.map((s) => el("tr", { dataset: { schedule: s.name } },
    el("td", {}, s.name),
    el("td", {}, s.when),
    el("td", {}, s.tube),
    el("td", { dataset: { col: "next" } }, when(s.next)),
    el("td", { dataset: { col: "last" } }, when(s.last)),
    el("td", { dataset: { col: "state" } }, stateBadge(s)),
    el("td", { class: "row-actions" },
      el("button", { type: "button", class: "act", dataset: { action: "trigger" }, onclick: () => scheduleAction(s, "trigger") }, "Trigger"),
      el("input", { class: "act", id: `pause-for-${s.name}`, value: "1h", size: 4, title: "how long: 30m, 2h, 3600" }),
      el("button", { type: "button", class: "act", dataset: { action: "pause" }, onclick: () => scheduleAction(s, "pause") }, "Pause"),
      el("button", { type: "button", class: "act", dataset: { action: "resume" }, disabled: !s.paused_until, onclick: () => scheduleAction(s, "resume") }, "Resume"))
  )));
  if (data.schedules.length === 0) {
    body.append(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No schedules: this dashboard's daemon has no [[schedule]] or [[heartbeat]] (tubeworker dashboard alone has no config).")));
  }
  $("heartbeats").tBodies[0].replaceChildren(...data.heartbeats.map((h) => el("tr", { dataset: { heartbeat: h.tube } },
    el("td", {}, h.tube),
    el("td", { class: "num" }, fmtDuration(h.every)),
    el("td", {}, when(h.last_run)),
    el("td", { class: "num", dataset: { col: "age" } }, h.age === null ? "never ran" : fmtDuration(h.age)),
    el("td", { dataset: { col: "health" } }, h.stale ? el("span", { class: "badge bad" }, "stale") : el("span", { class: "badge ok" }, h.age === null ? "waiting" : "ok")),
    el("td", { class: "muted small" }, h.by || "")
  )));
  $("schedules-note").textContent = data.server ? `Ticks on ${data.server}.` : "";
}

export async function loadSchedules() {
  renderSchedules(await api("/api/schedules"));
}
