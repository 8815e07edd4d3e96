// tubeworker dashboard: the job browser on a tube's view. The tube's jobs by state, a page
// at a time, with a search over their bodies (the server scans job ids: see
// tubeworker.browse_ops); Put again a listed job; Move the listed state to another tube.

import { act } from "./actions.js";
import { $, api, el, fmtInt, fmtSeconds, state, toast } from "./common.js";

let from = 1;

function row(job, server, tube) {
  return el("tr", { dataset: { job: job.id } },
    el("td", { class: "num" }, job.id),
    el("td", {}, job.state),
    el("td", { class: "num" }, job.priority),
    el("td", { class: "num" }, fmtSeconds(job.age)),
    el("td", { class: "num" }, fmtInt(job.reserves)),
    el("td", {}, el("code", { class: "preview" }, job.preview)),
    el("td", { class: "row-actions" },
      el("button", { type: "button", class: "act", dataset: { action: "put-again" }, onclick: () => putAgain(server, tube, job) }, "Put again")));
}

async function putAgain(server, tube, job) {
  const response = await fetch(`/api/job/body?server=${encodeURIComponent(server)}&id=${job.id}`);
  if (!response.ok) { toast(`Job ${job.id} is gone.`, "error"); return; }
  const body = await response.text();
  const done = await act("/api/put", { server, tube, body, priority: job.priority },
    `Put job ${job.id}'s body into ${tube} again, as a new job?`);
  if (done) toast(`Put again as job ${done.id}.`);
}

export async function listJobs(again) {
  if (!state.tube) return;
  const { server, tube } = state.tube;
  if (!again) from = 1;
  const params = { server, tube, state: $("jobs-state").value, from, limit: 50 };
  const grep = $("jobs-grep").value.trim();
  if (grep) params.grep = grep;
  const data = await api("/api/jobs", params);
  $("jobs").tBodies[0].replaceChildren(...data.jobs.map((job) => row(job, server, tube)));
  $("jobs-note").textContent = `${data.jobs.length} job(s); ${fmtInt(data.scanned)} ids scanned`
    + (data.next_from ? `; more from id ${data.next_from}` : "; the end.");
  $("jobs-more").disabled = !data.next_from;
  from = data.next_from || from;
}

// A move goes in chunks, so that Stop can end it between two: each job is put there
// before it is deleted here, so a stopped move leaves every job in one tube or the other.
const MOVE_CHUNK = 200;
let stopMove = false;

async function moveJobs() {
  const { server, tube } = state.tube;
  const to = $("jobs-move-to").value.trim();
  if (!to) { toast("Name the tube to move them to.", "error"); return; }
  const which = $("jobs-state").value;
  let question = `Move every ${which.replaceAll(",", "/")} job of ${tube} to ${to}? Each is put there, then deleted here.`;
  let moved = 0;
  let skipped = 0;
  stopMove = false;
  $("jobs-move-stop").hidden = false;
  document.body.dataset.moving = "yes";
  try {
    while (!stopMove) {
      const done = await act("/api/move", { server, tube, to, state: which, limit: MOVE_CHUNK }, question);
      question = null; // asked once for the whole move
      if (!done) return;
      moved += done.moved;
      skipped = done.skipped;
      $("jobs-move-progress").textContent = `Moved ${moved} so far…`;
      if (done.matched < MOVE_CHUNK || done.moved === 0) break;
    }
    const how = stopMove ? "Stopped: moved" : "Moved";
    toast(`${how} ${moved} job(s) to ${to}` + (skipped ? `; ${skipped} skipped (held by a worker)` : "") + ".");
    $("jobs-move-progress").textContent = `${how} ${moved} job(s).`;
    await listJobs(false);
  } finally {
    $("jobs-move-stop").hidden = true;
    document.body.dataset.moving = "";
  }
}

$("jobs-move-stop").addEventListener("click", () => { stopMove = true; });

$("jobs-list").addEventListener("click", () => listJobs(false));
$("jobs-more").addEventListener("click", () => listJobs(true));
$("jobs-move").addEventListener("click", moveJobs);
