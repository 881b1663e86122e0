// One process of the benchmark's WebSocket client fleet (driven by bench/fanout.py).
//
//   node bench/fleet.js <ws-url> <clients> [<connect-concurrency>]
//
// Opens <clients> idle WebSocket connections, records for every text frame the `seq` it carries
// (the frame must start with {"type":"stats","seq":N, ...) and the time it arrived on
// CLOCK_MONOTONIC (process.hrtime: the same clock as Python's time.monotonic on Linux), and
// answers JSON-line commands on stdin with JSON-line events on stdout:
//   {"cmd":"mark"}                          forget receipts and frame counts; answers "marked"
//   {"cmd":"wait","seq":S,"timeout_ms":T}   answers "reached" once every open client has seen a
//                                           seq >= S, or after T ms with how many are behind
//   {"cmd":"report","votes":[[seq, t_sent_ns_as_ms_float], ...]}
//                                           latency of each vote at each client: first frame with
//                                           a seq >= the vote's seq, minus the vote's send time;
//                                           answers a sparse histogram (0.05 ms bins)
//   {"cmd":"exit"}                          closes every socket and exits
// Nothing here is parsed as JSON per frame: the seq is read from the first bytes of the Buffer.
'use strict';

const WebSocket = require('ws');
const readline = require('readline');

const url = process.argv[2];
const total = Number.parseInt(process.argv[3], 10);
const concurrency = Number.parseInt(process.argv[4] || '100', 10);
const BIN_PER_MS = 20; // 0.05 ms histogram bins
const MAX_ATTEMPTS = 5;

if (!url || !(total >= 0)) {
  process.stderr.write('usage: node fleet.js <ws-url> <clients> [<concurrency>]\n');
  process.exit(2);
}

function nowMs() {
  // Monotonic milliseconds with sub-microsecond resolution.
  return Number(process.hrtime.bigint()) / 1e6;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const PREFIX = Buffer.from('"seq":');

function seqOf(buf) {
  const at = buf.indexOf(PREFIX);
  if (at < 0 || at > 64) return -1;
  let i = at + PREFIX.length;
  let n = 0;
  let digits = 0;
  for (; i < buf.length; i++) {
    const c = buf[i];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
    digits++;
  }
  return digits ? n : -1;
}

class Client {
  constructor() {
    this.ws = null;
    this.seq = -1;
    this.seqs = [];
    this.times = [];
    this.frames = 0;
    this.open = false;
    this.closed = false;
  }
}

const clients = [];
let waitSeq = Infinity;
let reached = 0;
let waitTimer = null;
let closedDuringRun = 0;
let badFrames = 0;

function onMessage(client, data, isBinary) {
  const t = nowMs();
  if (isBinary) {
    badFrames++;
    return;
  }
  const s = seqOf(data);
  if (s < 0) {
    badFrames++;
    return;
  }
  client.frames++;
  if (s > client.seq) {
    if (client.seq < waitSeq && s >= waitSeq) reached++;
    client.seq = s;
    client.seqs.push(s);
    client.times.push(t);
  }
  if (waitTimer !== null && reached >= openCount()) finishWait();
}

function openCount() {
  let n = 0;
  for (const c of clients) if (c.open) n++;
  return n;
}

function connectOne(client, attempt) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
    });
    client.ws = ws;
    let settled = false;
    ws.on('open', () => {
      client.open = true;
      settled = true;
      resolve(true);
    });
    ws.on('message', (data, isBinary) => onMessage(client, data, isBinary));
    ws.on('error', () => {});
    ws.on('close', () => {
      if (client.open) {
        client.open = false;
        client.closed = true;
        closedDuringRun++;
        if (waitTimer !== null && reached >= openCount()) finishWait();
      }
      if (!settled) {
        settled = true;
        if (attempt + 1 < MAX_ATTEMPTS) {
          setTimeout(() => connectOne(client, attempt + 1).then(resolve), 50 * (attempt + 1));
        } else {
          resolve(false);
        }
      }
    });
  });
}

async function connectAll() {
  for (let i = 0; i < total; i++) clients.push(new Client());
  let next = 0;
  let ok = 0;
  async function worker() {
    while (next < clients.length) {
      const c = clients[next++];
      if (await connectOne(c, 0)) ok++;
    }
  }
  const workers = [];
  for (let i = 0; i < Math.min(concurrency, total); i++) workers.push(worker());
  await Promise.all(workers);
  emit({ event: 'connected', ok, failed: total - ok });
}

function finishWait() {
  clearTimeout(waitTimer);
  waitTimer = null;
  const open = openCount();
  emit({ event: 'reached', seq: waitSeq, reached, open, behind: Math.max(0, open - reached) });
  waitSeq = Infinity;
}

function startWait(seq, timeoutMs) {
  waitSeq = seq;
  reached = 0;
  for (const c of clients) if (c.open && c.seq >= seq) reached++;
  waitTimer = setTimeout(finishWait, timeoutMs);
  if (reached >= openCount()) finishWait();
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

function report(votes) {
  // votes: [[seq, sentMs], ...] sorted by seq.
  votes.sort((a, b) => a[0] - b[0]);
  const hist = new Map();
  let samples = 0;
  let missing = 0;
  let negative = 0;
  let frames = 0;
  // Per vote: [count, sum, max] of its latencies over this process's clients (diagnostics).
  const perVote = votes.map(() => [0, 0, 0]);
  for (const c of clients) {
    frames += c.frames;
    let j = 0;
    for (let v = 0; v < votes.length; v++) {
      const [seq, sent] = votes[v];
      while (j < c.seqs.length && c.seqs[j] < seq) j++;
      if (j >= c.seqs.length) {
        missing++;
        continue;
      }
      let lat = c.times[j] - sent;
      if (lat < 0) {
        negative++;
        lat = 0;
      }
      const pv = perVote[v];
      pv[0]++;
      pv[1] += lat;
      if (lat > pv[2]) pv[2] = lat;
      const bin = Math.floor(lat * BIN_PER_MS);
      hist.set(bin, (hist.get(bin) || 0) + 1);
      samples++;
    }
  }
  emit({
    event: 'report',
    bin_per_ms: BIN_PER_MS,
    hist: Object.fromEntries(hist),
    per_vote: perVote.map((pv) => [pv[0], round3(pv[1]), round3(pv[2])]),
    samples,
    missing,
    negative,
    frames,
    clients: clients.length,
    open: openCount(),
    closed: closedDuringRun,
    bad_frames: badFrames,
  });
}

function exit() {
  for (const c of clients) {
    if (c.ws) c.ws.terminate();
  }
  setTimeout(() => process.exit(0), 50);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return;
  }
  if (cmd.cmd === 'mark') {
    for (const c of clients) {
      c.seqs = [];
      c.times = [];
      c.frames = 0;
    }
    closedDuringRun = 0;
    badFrames = 0;
    emit({ event: 'marked', now_ms: nowMs() });
  } else if (cmd.cmd === 'wait') {
    startWait(cmd.seq, cmd.timeout_ms);
  } else if (cmd.cmd === 'report') {
    report(cmd.votes);
  } else if (cmd.cmd === 'exit') {
    exit();
  }
});
// The parent going away (stdin closed) ends this process too: nothing outlives the benchmark.
rl.on('close', exit);

connectAll();
