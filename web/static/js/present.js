// The shared screen: the top features re-ranking live, totals, the join QR code, and — with an
// admin token entered once — the presenter's controls: lock, hide/reveal, next round, export.
//
// What the screen shows comes from a public socket, whoever sits at it: with hidden results that
// is the list a public reader gets (the first features by id, no numbers), so neither the order,
// the rows chosen, their bars nor the live region can give the ranking away. The admin token
// drives the controls over REST; only "Show hidden numbers on this screen" opens a second socket
// that sends it, and the screen shows that socket's frames while the box stays ticked.
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
let publicStats = null; // the last public frame: what the room may see
let adminStats = null; // the last admin frame, only while the presenter peeks
let adminFeed = null; // the admin socket, open only while "peek" is ticked
let current = null; // the stats on screen
let pastRound = null; // the round whose past rounds are listed

function render() {
  current = $("peek").checked && adminStats ? adminStats : publicStats;
  if (!current) return;
  const { board: state } = current;
  renderTotals(document, current);
  renderBoardState(state);
  const features = current.top.slice(0, ROWS);
  $("empty").hidden = features.length > 0;
  const sentence = describeMoves(renderBoard(board, template, features), features);
  if (sentence) announce.textContent = sentence;
  // A list without numbers keeps no sentence about ranks (e.g. one left from a peek).
  else if (features.some((f) => f.score === null)) announce.textContent = "";
  renderControls(state);
}

function onStats(stats) {
  publicStats = stats;
  render();
}

// --- the admin feed: the real numbers, on this screen only, while the presenter asks -------

function authRefused(msg) {
  const detail = String(msg.detail || "");
  return msg.type === "error" && detail.startsWith("auth") && !detail.includes("unavailable");
}

function openAdminFeed() {
  if (adminFeed || !adminToken) return;
  let admin = false; // frames count once the server has acked the token on this socket
  const feed = new LiveStats({
    onStats: (stats) => {
      if (!admin || adminFeed !== feed) return;
      adminStats = stats;
      render();
    },
    onState: () => {},
    // The token goes in the first message, never in the URL (where logs would keep it).
    onOpen: (socket) => {
      admin = false;
      adminStats = null; // until this socket's admin frame: the public view
      socket.send({ type: "auth", token: adminToken });
    },
    onMessage: (msg) => {
      if (msg.type === "auth") {
        admin = msg.role === "admin";
        if (!admin) signOut("The admin token expired; enter a fresh one.");
      } else if (authRefused(msg)) {
        signOut("The admin token was refused; enter it again.");
      }
    },
  });
  adminFeed = feed;
  feed.start();
}

function closeAdminFeed() {
  if (adminFeed) adminFeed.stop();
  adminFeed = null;
  adminStats = null;
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
  $("peek").checked = false;
  closeAdminFeed(); // the screen is back on the public frames at once
  render();
  renderControls(current ? current.board : {});
}

/** An empty PATCH changes nothing: 200 proves an admin token, 401/403 refuse it. */
function checkToken(token) {
  return fetch("/board", {
    method: "PATCH",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: "{}",
  }).catch(() => null);
}

$("admin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("admin-token").value.trim();
  $("admin-error").textContent = "";
  if (!token) { $("admin-error").textContent = "Paste the token from `python -m service token --admin`."; return; }
  const res = await checkToken(token);
  if (!res || !res.ok) {
    $("admin-error").textContent = res && res.status === 403
      ? "That is a voter token; the controls need an admin token."
      : "The server refused that token.";
    return;
  }
  adminToken = token;
  localStorage.setItem(TOKEN_KEY, token);
  $("admin-token").value = "";
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
$("peek").addEventListener("change", () => {
  if ($("peek").checked) openAdminFeed(); else closeAdminFeed();
  render();
});

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

// The public feed: what this screen shows unless the presenter peeks. It never sends a token.
const live = new LiveStats({ onStats, onState: (state) => showConnection(conn, state) });
$("peek").checked = false; // a reload starts on the public view, whatever the browser restores
live.start();
renderControls({});
if (adminToken) { // a stored token: find out now whether it still works
  checkToken(adminToken).then((res) => {
    if (res && (res.status === 401 || res.status === 403)) {
      signOut("The stored admin token was refused; enter it again.");
    }
  });
}
