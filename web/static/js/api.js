// Identity and REST calls. The voter token lives in localStorage: no cookies, no server session.
const KEY = "featureVotes.identity";
const RENEW_BEFORE_MS = 60_000;
let pending = null;

/** The board this page shows (data-slug on <body>); the default board otherwise. */
export const slug = document.body.dataset.slug || "main";

/** A path of this board's REST API: boardPath("/features") is /boards/{slug}/features. */
export function boardPath(suffix = "") {
  return `/boards/${encodeURIComponent(slug)}${suffix}`;
}

function stored() {
  try {
    const id = JSON.parse(localStorage.getItem(KEY) || "null");
    if (id && id.token && Date.parse(id.expires_at) - Date.now() > RENEW_BEFORE_MS) return id;
  } catch (_) { /* a broken entry is replaced below */ }
  return null;
}

async function mint() {
  const res = await fetch("/auth/token", { method: "POST" });
  if (!res.ok) throw new Error(`could not get a voter token (${res.status})`);
  const id = await res.json();
  localStorage.setItem(KEY, JSON.stringify(id));
  return id;
}

/** The voter's identity, minted once and reused; `renew` replaces a rejected token. */
export async function identity(renew = false) {
  if (!renew) {
    const id = stored();
    if (id) return id;
  }
  if (!pending) pending = mint().finally(() => { pending = null; });
  return pending;
}

/** A JSON call with the bearer token; a 401 renews the token once and retries. */
export async function call(method, path, body, extraHeaders = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const { token } = await identity(attempt > 0);
    const headers = { Authorization: `Bearer ${token}`, ...extraHeaders };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (res.status !== 401) return res;
  }
  throw new Error("the server refused a fresh token");
}

/** The body of a problem+json answer, or a minimal one. */
export async function problem(res) {
  try { return await res.json(); } catch (_) { return { status: res.status, detail: res.statusText }; }
}
