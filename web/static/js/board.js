// Renders the leaderboard from stats.top: reuses rows by id, re-ranks with a FLIP animation.
const STATUS_LABELS = {
  open: "open", planned: "planned", in_progress: "in progress", done: "done", declined: "declined",
};

function signed(n) {
  if (n === null || n === undefined) return "—";
  return n > 0 ? `+${n}` : n < 0 ? `−${-n}` : "0";
}

function setText(root, selector, text) {
  const el = root.querySelector(selector);
  if (!el || el.textContent === text) return;
  const changed = el.textContent !== "";
  el.textContent = text;
  if (changed) { // restart the highlight animation on every change
    el.classList.remove("bump");
    void el.offsetWidth;
    el.classList.add("bump");
  }
}

function fill(li, feature, rank, maxVotes, myVote, votingOpen) {
  const up = feature.up ?? 0;
  const down = feature.down ?? 0;
  const hidden = feature.score === null; // results hidden: no counts, and the order is by id
  li.classList.toggle("counts-hidden", hidden);
  setText(li, ".rank", hidden ? "·" : String(rank));
  setText(li, ".title", feature.title);
  setText(li, ".score", signed(feature.score));
  setText(li, ".n-up", feature.up === null ? "—" : String(up));
  setText(li, ".n-down", feature.down === null ? "—" : String(down));
  const status = li.querySelector(".status");
  if (status) {
    status.textContent = STATUS_LABELS[feature.status] || feature.status;
    status.dataset.status = feature.status;
  }
  const total = up + down;
  const bar = li.querySelector(".bar");
  if (bar) {
    bar.style.width = `${(100 * total) / maxVotes}%`;
    li.querySelector(".bar-up").style.flexGrow = String(up);
    li.querySelector(".bar-down").style.flexGrow = String(down);
  }
  const closed = !votingOpen || feature.status === "done" || feature.status === "declined";
  for (const button of li.querySelectorAll("button.vote")) {
    const value = Number(button.dataset.value);
    const pressed = myVote === value;
    button.setAttribute("aria-pressed", String(pressed));
    button.disabled = closed;
    const verb = pressed ? "Take back your" : "Vote";
    button.setAttribute("aria-label", `${verb} ${value > 0 ? "+1" : "−1"} for ${feature.title}`);
  }
}

/**
 * Render `features` (already ranked) into `list`, reusing rows by feature id.
 * Returns the previous ranks by id so callers can announce moves.
 */
export function renderBoard(list, template, features, myVotes = {}, votingOpen = true) {
  const rows = new Map();
  const before = new Map();
  for (const li of list.children) {
    rows.set(li.dataset.id, li);
    before.set(li.dataset.id, { top: li.getBoundingClientRect().top, rank: Number(li.dataset.rank) });
  }
  const focused = list.contains(document.activeElement) ? document.activeElement : null;
  const maxVotes = Math.max(1, ...features.map((f) => (f.up ?? 0) + (f.down ?? 0)));

  features.forEach((feature, index) => {
    const id = String(feature.id);
    let li = rows.get(id);
    if (li) {
      rows.delete(id);
    } else {
      li = template.content.firstElementChild.cloneNode(true);
      li.dataset.id = id;
      li.classList.add("enter");
    }
    li.dataset.rank = String(index + 1);
    fill(li, feature, index + 1, maxVotes, myVotes[id], votingOpen);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
  });
  for (const li of rows.values()) li.remove();
  if (focused && !list.contains(document.activeElement) && list.contains(focused)) {
    focused.focus({ preventScroll: true });
  }

  // FLIP: jump every moved row back to where it was, then let CSS slide it home.
  const moved = [];
  for (const li of list.children) {
    const old = before.get(li.dataset.id);
    if (!old) continue;
    const dy = old.top - li.getBoundingClientRect().top;
    if (Math.abs(dy) < 1) continue;
    li.style.transition = "none";
    li.style.transform = `translateY(${dy}px)`;
    moved.push(li);
  }
  if (moved.length) {
    void list.offsetHeight;
    for (const li of moved) { li.style.transition = ""; li.style.transform = ""; }
  }
  return before;
}

/** Write stats totals into every element with a data-total attribute. */
export function renderTotals(root, stats) {
  const values = { votes: stats.total_votes, voters: stats.voters, features: stats.total_features };
  for (const el of root.querySelectorAll("[data-total]")) {
    const value = values[el.dataset.total];
    if (value !== undefined && el.textContent !== String(value)) el.textContent = String(value);
  }
}

/**
 * Show the board's state (API.md "Board"): its title and round wherever data-board names them,
 * the "voting closed" and "results hidden" banners, and data attributes on <body> for CSS.
 */
export function renderBoardState(board) {
  for (const el of document.querySelectorAll("[data-board]")) {
    const value = String(board[el.dataset.board]);
    if (el.textContent !== value) el.textContent = value;
  }
  document.getElementById("closed-banner").hidden = board.voting_open;
  document.getElementById("hidden-banner").hidden = !board.results_hidden;
  document.body.dataset.votingOpen = String(board.voting_open);
  document.body.dataset.resultsHidden = String(board.results_hidden);
}

/** One polite sentence about the most notable rank change, or "". */
export function describeMoves(before, features) {
  if (features.some((f) => f.score === null)) return ""; // hidden results: no ranks to announce
  for (const [index, feature] of features.entries()) {
    const old = before.get(String(feature.id));
    if (old && old.rank > index + 1) return `${feature.title} moved up to number ${index + 1}.`;
    if (!old && before.size) return `${feature.title} entered the board at number ${index + 1}.`;
  }
  return "";
}
