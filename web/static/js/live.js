// One WebSocket to a board's /boards/{slug}/ws: a snapshot on connect, then newer stats; reconnects with backoff + jitter.
const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
const PING_EVERY_MS = 20_000;
const SILENCE_LIMIT_MS = 45_000;

export class LiveStats {
  /**
   * onStats(stats) after every push; onState(state) for the indicator; optional onOpen(live)
   * right after each (re)connect (e.g. to send an admin token), onMessage(msg) for the other
   * server messages ("auth" acks, "error"s); `path` is the socket's path.
   */
  constructor({
    onStats, onState, onOpen = () => {}, onMessage = () => {}, onEpoch = () => {}, path = "/ws",
  }) {
    this.path = path;
    this.onStats = onStats;
    this.onState = onState;
    this.onOpen = onOpen;
    this.onEpoch = onEpoch; // onEpoch(epoch) when the server's data changed identity
    this.epoch = null;
    this.onMessage = onMessage;
    this.attempt = 0;
    this.seq = -1;
    this.ws = null;
    this.timer = null;
    this.lastHeard = 0;
  }

  start() {
    this.stopped = false;
    this.online = () => this.reconnectNow();
    this.offline = () => this.setState("offline");
    window.addEventListener("online", this.online);
    window.addEventListener("offline", this.offline);
    this.pinger = setInterval(() => this.keepAlive(), PING_EVERY_MS);
    this.connect();
  }

  /** Close the socket for good: no reconnect, no timers, no more callbacks. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.online);
    window.removeEventListener("offline", this.offline);
    clearInterval(this.pinger);
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${this.path}`;
  }

  connect() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.addEventListener("open", () => {
      this.attempt = 0;
      this.seq = -1; // a new connection starts from its snapshot (a restarted server may count anew)
      this.lastHeard = Date.now();
      this.setState("live");
      this.onOpen(this);
    });
    ws.addEventListener("message", (event) => { if (this.ws === ws) this.receive(event.data); });
    ws.addEventListener("close", () => {
      if (this.ws === ws) this.scheduleReconnect();
    });
  }

  receive(data) {
    this.lastHeard = Date.now();
    let msg;
    try { msg = JSON.parse(data); } catch (_) { return; }
    if (msg.type === "auth") {
      // The admin frames follow, starting with one that may repeat the current seq.
      this.seq = -1;
      this.onMessage(msg);
      return;
    }
    if (msg.type !== "stats" || typeof msg.seq !== "number") {
      this.onMessage(msg);
      return;
    }
    const epoch = msg.stats && msg.stats.epoch;
    if (epoch && this.epoch && epoch !== this.epoch) {
      // Another epoch: the server's data is not the data this page counted from (a memory
      // store restarted, a Redis came back empty). Its seq means nothing here any more.
      this.seq = -1;
      this.epoch = epoch;
      this.onEpoch(epoch);
    }
    if (epoch) this.epoch = epoch;
    if (msg.seq <= this.seq) return; // stale: never go back
    this.seq = msg.seq;
    this.onStats(msg.stats);
  }

  /** Send one JSON message if the socket is open; false otherwise. */
  send(message) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  scheduleReconnect() {
    this.ws = null;
    if (!navigator.onLine) { this.setState("offline"); return; }
    this.setState("reconnecting");
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  reconnectNow() {
    if (this.stopped || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    this.attempt = 0;
    this.connect();
  }

  keepAlive() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) { ws.close(); return; }
    ws.send('{"type":"ping"}');
  }

  setState(state) {
    this.state = state;
    this.onState(state);
  }
}

const LABELS = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…", offline: "offline" };

/** Reflect a connection state in the indicator element. */
export function showConnection(el, state) {
  el.dataset.state = state;
  el.querySelector(".conn-label").textContent = LABELS[state] || state;
}
