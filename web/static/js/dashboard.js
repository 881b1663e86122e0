// The dashboard: live leaderboard in the chosen order, +1/−1 toggles, and the proposal form.
import { boardPath, call, identity, problem } from "./api.js";
import { describeMoves, renderBoard, renderBoardState, renderTotals } from "./board.js";
import { LiveStats, showConnection } from "./live.js";

const SORT_KEY = "featureVotes.sort"; // one choice for every board: it is how this reader reads
const SORTS = {
  top: "Top features", new: "Newest features", wilson: "Best rated", controversial: "Most controversial",
};
const LIST_LIMIT = 20;
const REFETCH_MIN_MS = 250; // other orders are fetched again at most this often while votes land
const board = document.getElementById("board");
const template = document.getElementById("row-template");
const announce = document.getElementById("announce");
const form = document.getElementById("propose");
const sortSwitch = document.getElementById("sort-switch");
let myVotes = {};
let top = [];
let lastStats = null;
let votingOpen = true;
let round = null;
let sort = SORTS[localStorage.getItem(SORT_KEY)] ? localStorage.getItem(SORT_KEY) : "top";

function render(features) {
  top = features;
  document.getElementById("empty").hidden = features.length > 0;
  const before = renderBoard(board, template, features, myVotes, votingOpen);
  const sentence = describeMoves(before, features);
  if (sentence) announce.textContent = sentence;
}

function onStats(stats) {
  lastStats = stats;
  renderTotals(document, stats);
  renderBoardState(stats.board);
  votingOpen = stats.board.voting_open;
  if (round !== null && round !== stats.board.round) loadMyVotes(); // a new round: no votes yet
  round = stats.board.round;
  if (sort === "top") render(stats.top); else refetch();
}

// Orders other than top come from GET /features, fetched again after pushes: one request in
// flight at a time, the last push always followed by a fetch.
let fetching = false;
let fetchAgain = false;
let lastFetch = 0;
async function refetch() {
  if (sort === "top") return;
  if (fetching) { fetchAgain = true; return; }
  fetching = true;
  try {
    const wait = REFETCH_MIN_MS - (Date.now() - lastFetch);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    lastFetch = Date.now();
    const wanted = sort;
    const res = await fetch(boardPath(`/features?sort=${wanted}&limit=${LIST_LIMIT}`));
    if (res.ok && wanted === sort) render((await res.json()).items);
  } catch (_) {
    // the next push tries again
  } finally {
    fetching = false;
    if (fetchAgain) { fetchAgain = false; refetch(); }
  }
}

function chooseSort(value) {
  sort = SORTS[value] ? value : "top";
  localStorage.setItem(SORT_KEY, sort);
  document.getElementById("board-title").textContent = SORTS[sort];
  sortSwitch.querySelector(`input[value="${sort}"]`).checked = true;
  if (sort === "top") { if (lastStats) render(lastStats.top); } else refetch();
}
sortSwitch.addEventListener("change", (event) => chooseSort(event.target.value));
chooseSort(sort);

async function loadMyVotes() {
  const res = await call("GET", boardPath("/me/votes"));
  if (res.ok) {
    myVotes = (await res.json()).votes;
    render(top);
  }
}

async function vote(button) {
  const li = button.closest("li");
  const id = li.dataset.id;
  const value = Number(button.dataset.value);
  const retract = myVotes[id] === value;
  for (const b of li.querySelectorAll("button.vote")) b.disabled = true;
  try {
    const res = retract
      ? await call("DELETE", boardPath(`/features/${id}/vote`))
      : await call("PUT", boardPath(`/features/${id}/vote`), { value });
    if (!res.ok) {
      announce.textContent = (await problem(res)).detail || "The vote was not counted.";
      if (res.status === 409 && !votingOpen) announce.textContent = "Voting is closed.";
      return;
    }
    const result = await res.json();
    if (result.value) myVotes[id] = result.value; else delete myVotes[id];
    top = top.map((f) => (String(f.id) === id
      ? { ...f, up: result.up, down: result.down, score: result.score } : f));
    announce.textContent = retract ? "Vote taken back." : `Voted ${value > 0 ? "+1" : "−1"}.`;
  } catch (err) {
    announce.textContent = `The vote did not reach the server: ${err.message}`;
  } finally {
    render(top);
  }
}

board.addEventListener("click", (event) => {
  const button = event.target.closest("button.vote");
  if (button && !button.disabled) vote(button);
});

function showErrors(errors) {
  for (const el of form.querySelectorAll("[data-error-for]")) el.textContent = "";
  for (const input of form.querySelectorAll("input, textarea")) input.removeAttribute("aria-invalid");
  for (const { loc, msg, field } of errors) {
    const name = field || (loc || "").replace(/^\$\./, "");
    const slot = form.querySelector(`[data-error-for="${name}"]`);
    if (slot) {
      slot.textContent = msg;
      form.elements[name].setAttribute("aria-invalid", "true");
    } else {
      document.getElementById("form-error").textContent = msg;
    }
  }
}

let submitKey = null;
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { title: form.elements.title.value, description: form.elements.description.value };
  submitKey = submitKey || crypto.randomUUID(); // a retried submit must not create a second feature
  document.getElementById("form-error").textContent = "";
  document.getElementById("form-ok").textContent = "";
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const res = await call("POST", boardPath("/features"), body, { "Idempotency-Key": submitKey });
    if (res.status === 201) {
      const feature = await res.json();
      submitKey = null;
      form.reset();
      showErrors([]);
      document.getElementById("form-ok").textContent = `Added “${feature.title}”.`;
      return;
    }
    const p = await problem(res);
    if (res.status === 422 && p.errors && p.errors.length) {
      showErrors(p.errors);
    } else {
      submitKey = null;
      showErrors([{ loc: "$", msg: p.detail || p.title || `error ${res.status}` }]);
    }
  } catch (err) {
    showErrors([{ loc: "$", msg: `Not sent: ${err.message}` }]);
  } finally {
    button.disabled = false;
  }
});
form.addEventListener("input", () => { submitKey = null; });

const conn = document.getElementById("conn");
new LiveStats({
  onStats,
  onState: (state) => showConnection(conn, state),
  path: boardPath("/ws"),
  // Every (re)connect: the votes as the server has them now (a restart may have lost some).
  onOpen: () => { identity().then(loadMyVotes).catch((err) => { announce.textContent = err.message; }); },
  // Another epoch: what this page remembers of its votes may not exist; forget it first.
  onEpoch: () => { myVotes = {}; render(top); },
}).start();
