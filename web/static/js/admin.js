// A board's admin token in this browser: kept per board in localStorage (its own keys, apart
// from the voter identity), checked against the board, and sent on the presenter's calls.
import { boardPath, slug } from "./api.js";

const LEGACY_KEY = "featureVotes.adminToken"; // the default board's, as before boards

/** The localStorage key of a board's admin token. */
export function tokenKey(board = slug) {
  return board === "main" ? LEGACY_KEY : `${LEGACY_KEY}.${board}`;
}

export function storedToken(board = slug) {
  return localStorage.getItem(tokenKey(board));
}

export function keepToken(token, board = slug) {
  localStorage.setItem(tokenKey(board), token);
}

export function forgetToken(board = slug) {
  localStorage.removeItem(tokenKey(board));
}

/** An empty PATCH changes nothing: 200 proves an admin token of this board, 401/403 refuse
 * it; null when the server cannot be reached. */
export function checkToken(token) {
  return fetch(boardPath(), {
    method: "PATCH",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: "{}",
  }).catch(() => null);
}

/** What to tell the presenter about a refused token (the answer of checkToken). */
export function refusal(res) {
  if (!res) return "The server cannot be reached; try again.";
  if (res.status === 403) {
    return "That token does not administer this board (a voter token, or another board's).";
  }
  return "The server refused that token.";
}

/** The server's "auth" refusals on a socket (not its "auth unavailable"). */
export function authRefused(msg) {
  const detail = String(msg.detail || "");
  return msg.type === "error" && detail.startsWith("auth") && !detail.includes("unavailable");
}
