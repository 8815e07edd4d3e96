// tubeworker dashboard: the Servers view. beanstalkd itself, per server, as the daemon's
// poller last read it (stats): up or why not, connections, jobs, timeouts, binlog, CPU.

import { $, api, el, fmtInt, fmtSeconds, known, sparkline } from "./common.js";

function health(s) {
  if (!s.up) return el("span", { class: "badge bad", title: s.error || "" }, "down");
  if (s.stats && s.stats.draining) return el("span", { class: "badge warn" }, "draining");
  return el("span", { class: "badge ok" }, "up");
}

function binlog(st) {
  if (!st.binlog_current_index) return el("span", { class: "muted" }, "off (in memory)");
  const kept = st.binlog_current_index - st.binlog_oldest_index + 1;
  return el("span", { title: `${fmtInt(st.binlog_records_written)} records written, ${fmtInt(st.binlog_records_migrated)} migrated` },
    `${kept} file(s), ${st.binlog_oldest_index}…${st.binlog_current_index}`);
}

export function renderServers(data) {
  $("servers-table").tBodies[0].replaceChildren(...data.servers.map((s) => {
    const st = s.stats;
    const dash = "–";
    return el("tr", { dataset: { server: s.server } },
      el("td", {}, s.server, s.error ? el("div", { class: "muted small" }, s.error) : null),
      el("td", { dataset: { col: "health" } }, health(s)),
      el("td", { dataset: { col: "version" } }, st ? st.version : dash),
      el("td", { class: "num" }, st ? fmtSeconds(st.uptime) : dash),
      el("td", { class: "num", dataset: { col: "connections" } }, st ? `${fmtInt(st.current_connections)} (${st.current_producers} producing, ${st.current_workers} working, ${st.current_waiting} waiting)` : dash),
      el("td", { class: "num" }, st ? `${fmtInt(st.current_jobs_ready)} / ${fmtInt(st.current_jobs_reserved)} / ${fmtInt(st.current_jobs_delayed)} / ${fmtInt(st.current_jobs_buried)}` : dash),
      el("td", { class: "num" }, st ? fmtInt(st.job_timeouts) : dash),
      el("td", {}, st ? binlog(st) : dash),
      el("td", { class: "num" }, st ? `${(st.rusage_utime + st.rusage_stime).toFixed(1)} s` : dash),
      el("td", { class: "muted small" }, st ? `${st.hostname} ${st.id}` : dash));
  }));
  $("servers-note").textContent = "Read by the daemon's poller every few seconds (stats); a server that does not answer is down at once.";
  renderHistory(data.servers);
}

// Each server's connections, jobs and CPU over time; a gap where it was down.
const SERIES = [
  ["connections", "connections", (v) => fmtInt(v)],
  ["jobs", "jobs (every state)", (v) => fmtInt(v)],
  ["cpu", "CPU (s per s)", (v) => v.toFixed(3)],
];

function renderHistory(servers) {
  $("servers-history").replaceChildren(...servers.map((s) => {
    const history = s.history || { at: [] };
    return el("div", { class: "server-history", dataset: { server: s.server, points: String(history.at.length) } },
      el("h4", {}, s.server),
      ...SERIES.map(([key, label, format]) => {
        const values = history[key] || [];
        const last = [...values].reverse().find(known);
        return el("figure", { class: "chart", dataset: { series: key } },
          sparkline(values, 230, 52, "chart-svg"),
          el("figcaption", {}, `${label}: ${known(last) ? format(last) : "–"}`));
      }));
  }));
}

export async function loadServers() {
  renderServers(await api("/api/servers"));
}
