// tubeworker dashboard: the token, confirmations and actions. The token is never in the
// page: it is typed once and kept in this tab's sessionStorage, and sent as a bearer header
// (with reads too, which need one with [control] read_token_file: a read answered 401 opens
// the token dialog). With no token configured the server is read-only, and a viewer's token
// reads only: either way the page shows no action.

import { $, toast } from "./common.js";

const TOKEN_KEY = "tubeworker.token";

const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

function askToken() {
  const dialog = $("token-dialog");
  if (dialog.open) return;
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
  if (answer === "save" || answer === "forget") {
    window.dispatchEvent(new CustomEvent("tubeworker-token")); // main.js reads again with it
  }
});

window.addEventListener("tubeworker-login", askToken);

function showTokenState() {
  const button = $("token-button");
  button.textContent = getToken() ? "Token ✓" : "Token";
  button.title = getToken() ? "A token is kept for this tab" : "Actions (and, if so set, reads) need a token";
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
export async function act(path, body, question) {
  if (document.body.dataset.actions === "viewer") {
    toast("Viewer: this tab's token reads only; actions need the operator's token.", "error");
    return null;
  }
  if (document.body.dataset.actions !== "enabled") {
    toast("Read-only: no token is configured, so the dashboard takes no actions.", "error");
    return null;
  }
  if (question !== null && !(await confirmAction(question))) return null; // null: asked already
  const headers = { "Content-Type": "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  document.body.dataset.lastAction = "sending"; // so a reader waits for this action's answer
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (error) {
    toast(`Not sent: ${error.message}`, "error");
    document.body.dataset.lastAction = "failed";
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
showTokenState();
