// The shared screen: the top features re-ranking live, totals, the join QR code and code, and
// a small auto-hiding presenter corner: the link to the control view (lock, reveal, next round,
// exports: off the projected screen) and, with the board's admin token, "show hidden numbers".
//
// What the screen shows comes from a public socket, whoever sits at it: with hidden results that
// is the list a public reader gets (the first features by id, no numbers), so neither the order,
// the rows chosen, their bars nor the live region can give the ranking away. Only "Show hidden
// numbers on this screen" opens a second socket that sends the admin token, and the screen
// shows that socket's frames while the box stays ticked.
import { boardPath } from "./api.js";
import {
  authRefused, checkToken, forgetToken, keepToken, refusal, storedToken,
} from "./admin.js";
import { describeMoves, renderBoard, renderBoardState, renderTotals } from "./board.js";
import { LiveStats, showConnection } from "./live.js";

const ROWS = 8;
const ENTRY_IDLE_MS = 3_000; // the presenter corner fades after this long without a pointer move
const board = document.getElementById("board");
const template = document.getElementById("row-template");
const announce = document.getElementById("announce");
const conn = document.getElementById("conn");
const $ = (id) => document.getElementById(id);
let adminToken = storedToken();
let publicStats = null; // the last public frame: what the room may see
let adminStats = null; // the last admin frame, only while the presenter peeks
let adminFeed = null; // the admin socket, open only while "peek" is ticked
let current = null; // the stats on screen

function render() {
  current = $("peek").checked && adminStats ? adminStats : publicStats;
  if (!current) return;
  renderTotals(document, current);
  renderBoardState(current.board);
  const features = current.top.slice(0, ROWS);
  $("empty").hidden = features.length > 0;
  const sentence = describeMoves(renderBoard(board, template, features), features);
  if (sentence) announce.textContent = sentence;
  // A list without numbers keeps no sentence about ranks (e.g. one left from a peek).
  else if (features.some((f) => f.score === null)) announce.textContent = "";
}

function onStats(stats) {
  publicStats = stats;
  render();
}

// --- the admin feed: the real numbers, on this screen only, while the presenter asks -------

function openAdminFeed() {
  if (adminFeed || !adminToken) return;
  let admin = false; // frames count once the server has acked the token on this socket
  const feed = new LiveStats({
    path: boardPath("/ws"),
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

// --- presenter mode: the token, "show hidden numbers", the way to the control view ---------

function renderPresenter() {
  const admin = Boolean(adminToken);
  $("admin-form").hidden = admin;
  $("admin-panel").hidden = !admin;
  document.body.dataset.presenter = String(admin);
}

function signOut(message = "") {
  adminToken = null;
  forgetToken();
  $("admin-error").textContent = message;
  $("peek").checked = false;
  closeAdminFeed(); // the screen is back on the public frames at once
  render();
  renderPresenter();
}

$("admin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("admin-token").value.trim();
  $("admin-error").textContent = "";
  if (!token) { $("admin-error").textContent = "Paste the board's admin token."; return; }
  const res = await checkToken(token);
  if (!res || !res.ok) { $("admin-error").textContent = refusal(res); return; }
  adminToken = token;
  keepToken(token);
  $("admin-token").value = "";
  renderPresenter();
});
$("sign-out").addEventListener("click", () => signOut());
$("peek").addEventListener("change", () => {
  if ($("peek").checked) openAdminFeed(); else closeAdminFeed();
  render();
});

// --- the presenter corner fades while nobody moves the pointer (it stays while focused) ----

let idleTimer = null;
function wake() {
  document.body.classList.remove("entry-idle");
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => document.body.classList.add("entry-idle"), ENTRY_IDLE_MS);
}
for (const type of ["pointermove", "pointerdown", "keydown", "touchstart"]) {
  window.addEventListener(type, wake, { passive: true });
}
wake();

// The public feed: what this screen shows unless the presenter peeks. It never sends a token.
const live = new LiveStats({
  onStats, onState: (state) => showConnection(conn, state), path: boardPath("/ws"),
});
$("peek").checked = false; // a reload starts on the public view, whatever the browser restores
live.start();
renderPresenter();
if (adminToken) { // a stored token (kept by /new, or entered before): does it still work?
  checkToken(adminToken).then((res) => {
    if (res && (res.status === 401 || res.status === 403)) {
      signOut("The stored admin token was refused; enter it again.");
    }
  });
}
