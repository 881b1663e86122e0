// The presenter's control view, for their own phone or laptop (not the projected screen):
// lock, hide/reveal, next round, exports and past rounds of one board, with the board's admin
// token from localStorage (kept by /new) or pasted once. It follows the board on the public
// socket, so what it says is what the room sees.
import { boardPath } from "./api.js";
import { checkToken, forgetToken, keepToken, refusal, storedToken } from "./admin.js";
import { renderBoardState, renderTotals } from "./board.js";
import { LiveStats, showConnection } from "./live.js";

const PAST_ROUNDS_SHOWN = 5;
const $ = (id) => document.getElementById(id);
let adminToken = storedToken();
let state = null; // the board as last pushed
let pastRound = null; // the round whose past rounds are listed

function onStats(stats) {
  state = stats.board;
  renderTotals(document, stats);
  renderBoardState(state);
  renderControls();
}

function renderControls() {
  const admin = Boolean(adminToken);
  $("admin-form").hidden = admin;
  $("admin-panel").hidden = !admin;
  if (!admin || !state) return;
  const lock = $("toggle-lock");
  lock.textContent = state.voting_open ? "Lock voting" : "Unlock voting";
  lock.setAttribute("aria-pressed", String(!state.voting_open));
  const hide = $("toggle-hide");
  hide.textContent = state.results_hidden ? "Reveal results" : "Hide results";
  hide.setAttribute("aria-pressed", String(state.results_hidden));
  if (pastRound !== state.round) loadPastRounds(state.round);
}

async function adminCall(method, path, body) {
  const headers = { Authorization: `Bearer ${adminToken}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 || res.status === 403) {
    signOut("The admin token was refused; enter it again.");
    throw new Error("refused");
  }
  return res;
}

async function act(label, method, path, body) {
  $("admin-status").textContent = `${label}…`;
  try {
    const res = await adminCall(method, path, body);
    if (!res.ok) {
      const problem = await res.json().catch(() => ({}));
      $("admin-status").textContent = `${label} failed: ${problem.detail || res.status}`;
      return null;
    }
    $("admin-status").textContent = `${label}: done.`;
    return await res.json();
  } catch (err) {
    if (err.message !== "refused") $("admin-status").textContent = `${label} failed: ${err.message}`;
    return null;
  }
}

function signOut(message = "") {
  adminToken = null;
  forgetToken();
  $("admin-error").textContent = message;
  $("admin-status").textContent = "";
  $("share-token").open = false;
  $("share-token-value").value = "";
  pastRound = null;
  renderControls();
}

$("admin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("admin-token").value.trim();
  $("admin-error").textContent = "";
  $("admin-token").removeAttribute("aria-invalid");
  if (!token) {
    $("admin-error").textContent = "Paste the board's admin token.";
    $("admin-token").setAttribute("aria-invalid", "true");
    return;
  }
  const res = await checkToken(token);
  if (!res || !res.ok) {
    $("admin-error").textContent = refusal(res);
    $("admin-token").setAttribute("aria-invalid", "true");
    return;
  }
  adminToken = token;
  keepToken(token);
  $("admin-token").value = "";
  state = await res.json();
  renderControls();
  $("toggle-lock").focus();
});

const patch = (label, change) => act(label, "PATCH", boardPath(), change);
$("toggle-lock").addEventListener("click", () => {
  if (state) patch(state.voting_open ? "Lock" : "Unlock", { voting_open: !state.voting_open });
});
$("toggle-hide").addEventListener("click", () => {
  if (state) {
    patch(state.results_hidden ? "Reveal" : "Hide", { results_hidden: !state.results_hidden });
  }
});

$("next-round").addEventListener("click", () => {
  if (!state) return;
  const { round, results_hidden: hidden } = state;
  $("confirm-text").textContent = `Archive round ${round}, clear every vote and start round ${round + 1}`
    + ` with voting open?${hidden ? " Its results are hidden and stay hidden in the archive." : ""}`;
  $("confirm-round").hidden = false;
  $("confirm-yes").focus();
});
$("confirm-no").addEventListener("click", () => {
  $("confirm-round").hidden = true;
  $("next-round").focus();
});
$("confirm-yes").addEventListener("click", async () => {
  $("confirm-round").hidden = true;
  $("next-round").focus();
  const next = await act("Next round", "POST", boardPath("/reset"));
  if (next && !next.voting_open) await patch("Next round", { voting_open: true });
});

// Exports are fetched with the admin token (so hidden results come with their numbers) and
// saved through a temporary link.
async function download(format, round) {
  const query = round ? `?round=${round}` : "";
  try {
    const res = await adminCall("GET", boardPath(`/export.${format}${query}`));
    if (!res.ok) { $("admin-status").textContent = `Export failed (${res.status}).`; return; }
    const name = /filename="([^"]+)"/.exec(res.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(await res.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = name ? name[1] : `feature-votes.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
    $("admin-status").textContent = `Export ${format.toUpperCase()}: downloaded.`;
  } catch (err) {
    if (err.message !== "refused") $("admin-status").textContent = `Export failed: ${err.message}`;
  }
}
$("admin-panel").addEventListener("click", (event) => {
  const button = event.target.closest("button.export");
  if (button) download(button.dataset.format, button.closest("li")?.dataset.round);
});

async function loadPastRounds(round) {
  pastRound = round;
  const res = await fetch(boardPath("/rounds")).catch(() => null);
  if (!res || !res.ok) return;
  const rowTemplate = $("round-template");
  $("past-rounds").replaceChildren(...(await res.json()).items.slice(0, PAST_ROUNDS_SHOWN)
    .map((r) => {
      const li = rowTemplate.content.firstElementChild.cloneNode(true);
      li.dataset.round = String(r.round);
      li.querySelector(".round-name").textContent = `Round ${r.round}: ${r.total_votes} votes`;
      return li;
    }));
}

$("share-token").addEventListener("toggle", () => {
  $("share-token-value").value = $("share-token").open && adminToken ? adminToken : "";
});
$("share-token-value").addEventListener("focus", (event) => event.target.select());
$("sign-out").addEventListener("click", () => signOut());

new LiveStats({
  onStats, onState: (s) => showConnection($("conn"), s), path: boardPath("/ws"),
}).start();
renderControls();
if (adminToken) { // a stored token: find out now whether it still works
  checkToken(adminToken).then((res) => {
    if (res && (res.status === 401 || res.status === 403)) {
      signOut("The stored admin token was refused; enter it again.");
    }
  });
}
