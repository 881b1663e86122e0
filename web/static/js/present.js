// The shared screen: the top features re-ranking live, totals, the join QR code, and — with an
// admin token entered once — the presenter's controls: lock, hide/reveal, next round, export.
import { describeMoves, renderBoard, renderBoardState, renderTotals } from "./board.js";
import { LiveStats, showConnection } from "./live.js";

const ROWS = 8;
const TOKEN_KEY = "featureVotes.adminToken"; // its own key: the voter identity stays apart
const board = document.getElementById("board");
const template = document.getElementById("row-template");
const announce = document.getElementById("announce");
const conn = document.getElementById("conn");
const $ = (id) => document.getElementById(id);
let adminToken = localStorage.getItem(TOKEN_KEY);
let current = null; // the last stats
let pastRound = null; // the round whose past rounds are listed

/** While results are hidden the projector shows what the room may see, unless "peek" is on. */
function visible(features, hidden) {
  if (!hidden || $("peek").checked) return features;
  return [...features]
    .sort((a, b) => a.id - b.id)
    .map((f) => ({ ...f, up: null, down: null, score: null }));
}

function render() {
  if (!current) return;
  const { board: state } = current;
  renderTotals(document, current);
  renderBoardState(state);
  const features = visible(current.top, state.results_hidden).slice(0, ROWS);
  $("empty").hidden = features.length > 0;
  const sentence = describeMoves(renderBoard(board, template, features), features);
  if (sentence) announce.textContent = sentence;
  renderControls(state);
}

function onStats(stats) {
  current = stats;
  render();
}

// --- presenter controls ---------------------------------------------------------------------

function renderControls(state) {
  const admin = Boolean(adminToken);
  $("admin-form").hidden = admin;
  $("admin-panel").hidden = !admin;
  if (!admin || state.round === undefined) return;
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
  localStorage.removeItem(TOKEN_KEY);
  $("admin-error").textContent = message;
  $("admin-status").textContent = "";
  pastRound = null;
  live.reconnectFresh(); // drop the admin socket: this screen gets the public frames again
  renderControls(current ? current.board : {});
}

$("admin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("admin-token").value.trim();
  $("admin-error").textContent = "";
  if (!token) { $("admin-error").textContent = "Paste the token from `python -m service token --admin`."; return; }
  // An empty PATCH changes nothing: 200 proves an admin token, 401/403 refuse it.
  const res = await fetch("/board", {
    method: "PATCH",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: "{}",
  }).catch(() => null);
  if (!res || !res.ok) {
    $("admin-error").textContent = res && res.status === 403
      ? "That is a voter token; the controls need an admin token."
      : "The server refused that token.";
    return;
  }
  adminToken = token;
  localStorage.setItem(TOKEN_KEY, token);
  $("admin-token").value = "";
  live.send({ type: "auth", token });
  render();
  renderControls(await res.json());
});

$("toggle-lock").addEventListener("click", () => {
  if (current) act(current.board.voting_open ? "Lock" : "Unlock", "PATCH", "/board",
    { voting_open: !current.board.voting_open });
});
$("toggle-hide").addEventListener("click", () => {
  if (current) act(current.board.results_hidden ? "Reveal" : "Hide", "PATCH", "/board",
    { results_hidden: !current.board.results_hidden });
});
$("peek").addEventListener("change", render);

$("next-round").addEventListener("click", () => {
  if (!current) return;
  const { round, results_hidden: hidden } = current.board;
  $("confirm-text").textContent = `Archive round ${round}, clear every vote and start round ${round + 1}`
    + ` with voting open?${hidden ? " Its results are hidden and stay hidden in the archive." : ""}`;
  $("confirm-round").hidden = false;
  $("confirm-yes").focus();
});
$("confirm-no").addEventListener("click", () => { $("confirm-round").hidden = true; });
$("confirm-yes").addEventListener("click", async () => {
  $("confirm-round").hidden = true;
  const next = await act("Next round", "POST", "/board/reset");
  if (next && !next.voting_open) await act("Next round", "PATCH", "/board", { voting_open: true });
});

// Exports are fetched with the admin token (so hidden results come with their numbers) and
// saved through a temporary link.
async function download(format, round) {
  const query = round ? `?round=${round}` : "";
  try {
    const res = await adminCall("GET", `/export.${format}${query}`);
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
  } catch (err) {
    if (err.message !== "refused") $("admin-status").textContent = `Export failed: ${err.message}`;
  }
}
document.getElementById("controls").addEventListener("click", (event) => {
  const button = event.target.closest("button.export");
  if (button) download(button.dataset.format, button.closest("li")?.dataset.round);
});

async function loadPastRounds(round) {
  pastRound = round;
  const res = await fetch("/rounds").catch(() => null);
  if (!res || !res.ok) return;
  const list = $("past-rounds");
  const rowTemplate = $("round-template");
  list.replaceChildren(...(await res.json()).items.slice(0, 5).map((r) => {
    const li = rowTemplate.content.firstElementChild.cloneNode(true);
    li.dataset.round = String(r.round);
    li.querySelector(".round-name").textContent = `Round ${r.round}: ${r.total_votes} votes`;
    return li;
  }));
}

const live = new LiveStats({
  onStats,
  onState: (state) => showConnection(conn, state),
  // The token goes in the first message, never in the URL (where logs would keep it).
  onOpen: (socket) => { if (adminToken) socket.send({ type: "auth", token: adminToken }); },
  onMessage: (msg) => {
    const detail = String(msg.detail || "");
    if (msg.type === "error" && detail.startsWith("auth") && !detail.includes("unavailable")) {
      signOut("The admin token was refused; enter it again.");
    }
  },
});
live.start();
renderControls({});
