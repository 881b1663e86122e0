// One process of the benchmark's WebSocket client fleet (driven by bench/fanout.py and
// bench/cluster.py).
//
//   node bench/fleet.js <ws-url> <clients> [<connect-concurrency>] [--stall=<K>] [--raw]
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
// Options (bench/cluster.py):
//   --stall=<K>  also open K "stalled" clients: WebSocket handshake, then the socket is paused
//                and never read again, so the kernel buffers fill and the server sees a client
//                that does not keep up; they count only in `stalled`/`stalled_failed` of
//                "connected", never in the figures above
//   --raw        the healthy clients speak WebSocket over a bare net.Socket read with `onread`
//                (no `ws` library, no stream machinery): the same frames for ~30 % less CPU
//                per frame, for fleets that share the machine's cores with the servers
'use strict';

const crypto = require('crypto');
const net = require('net');
const readline = require('readline');
const WebSocket = require('ws');

const positional = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const stallArg = process.argv.slice(2).find((a) => a.startsWith('--stall='));
const url = positional[0];
const total = Number.parseInt(positional[1], 10);
const concurrency = Number.parseInt(positional[2] || '100', 10);
const stallCount = stallArg ? Number.parseInt(stallArg.slice('--stall='.length), 10) : 0;
const raw = process.argv.includes('--raw');
const BIN_PER_MS = 20; // 0.05 ms histogram bins
const MAX_ATTEMPTS = 5;

if (!url || !(total >= 0) || !(stallCount >= 0)) {
  process.stderr.write(
    'usage: node fleet.js <ws-url> <clients> [<concurrency>] [--stall=<K>] [--raw]\n',
  );
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
  constructor(stalled = false) {
    this.stalled = stalled;
    this.kill = null;
    this.seq = -1;
    this.seqs = [];
    this.times = [];
    this.frames = 0;
    this.open = false;
    this.closed = false;
  }
}

const clients = [];
const stalled = [];
let waitSeq = Infinity;
let reached = 0;
let waitTimer = null;
let closedDuringRun = 0;
let badFrames = 0;

function onMessage(client, data, isBinary, t = nowMs()) {
  if (client.stalled) return;
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

function onClose(client) {
  if (client.open) {
    client.open = false;
    client.closed = true;
    closedDuringRun++;
    if (waitTimer !== null && reached >= openCount()) finishWait();
  }
}

function connectOne(client, attempt) {
  const connect = raw && !client.stalled ? connectRaw : connectWs;
  return connect(client).then((ok) => {
    if (ok || attempt + 1 >= MAX_ATTEMPTS) return ok;
    return new Promise((r) => setTimeout(r, 50 * (attempt + 1))).then(() =>
      connectOne(client, attempt + 1),
    );
  });
}

function connectWs(client) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, {
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: 30000,
    });
    client.kill = () => ws.terminate();
    let settled = false;
    ws.on('open', () => {
      if (client.stalled) {
        // Never read again: nothing leaves the kernel's receive buffer, which fills, and then
        // the server's send buffer fills behind it.
        ws._socket.pause();
        settled = true;
        resolve(true);
        return;
      }
      client.open = true;
      settled = true;
      resolve(true);
    });
    ws.on('message', (data, isBinary) => onMessage(client, data, isBinary));
    ws.on('error', () => {});
    ws.on('close', () => {
      onClose(client);
      if (!settled) {
        settled = true;
        resolve(false);
      }
    });
  });
}

// --raw: just enough of a WebSocket client (RFC 6455) for what the server sends: the upgrade,
// unmasked TEXT frames, PING (answered), CLOSE (answered, then the socket ends).
const READ_BUFFER = Buffer.alloc(256 * 1024); // shared: every read is handled before the next
const target = new URL(url);
const UPGRADE = Buffer.from(
  `GET ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
    'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n' +
    `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}\r\n\r\n`,
);
const HEAD_END = Buffer.from('\r\n\r\n');
const SWITCHING = Buffer.from('HTTP/1.1 101 ');

function controlFrame(opcode, payload) {
  // Client frames are masked; an all-zero mask leaves the payload as it is.
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

function connectRaw(client) {
  return new Promise((resolve) => {
    let upgraded = false;
    let pending = null; // the start of a frame (or of the upgrade answer) not complete yet
    const sock = net.connect({
      host: target.hostname,
      port: Number(target.port || 80),
      onread: { buffer: READ_BUFFER, callback: (n, buf) => onRead(buf.subarray(0, n)) },
    });
    client.kill = () => sock.destroy();
    sock.setNoDelay(true);
    sock.setTimeout(30000, () => sock.destroy());
    sock.on('connect', () => sock.write(UPGRADE));
    sock.on('error', () => {});
    sock.on('close', () => {
      onClose(client);
      if (!upgraded) resolve(false);
    });

    function onRead(chunk) {
      const t = nowMs();
      if (pending !== null) {
        chunk = Buffer.concat([pending, chunk]);
        pending = null;
      }
      let off = 0;
      if (!upgraded) {
        const end = chunk.indexOf(HEAD_END);
        if (end < 0) {
          pending = Buffer.from(chunk);
          return;
        }
        if (chunk.compare(SWITCHING, 0, SWITCHING.length, 0, SWITCHING.length) !== 0) {
          sock.destroy();
          return;
        }
        upgraded = true;
        sock.setTimeout(0);
        client.open = true;
        resolve(true);
        off = end + HEAD_END.length;
      }
      while (chunk.length - off >= 2) {
        const opcode = chunk[off] & 0x0f;
        let len = chunk[off + 1] & 0x7f;
        let head = 2;
        if (len === 126) {
          if (chunk.length - off < 4) break;
          len = chunk.readUInt16BE(off + 2);
          head = 4;
        } else if (len === 127) {
          if (chunk.length - off < 10) break;
          len = Number(chunk.readBigUInt64BE(off + 2));
          head = 10;
        }
        if (chunk.length - off < head + len) break;
        const payload = chunk.subarray(off + head, off + head + len);
        off += head + len;
        if (opcode === 1) onMessage(client, payload, false, t);
        else if (opcode === 2) onMessage(client, payload, true, t);
        else if (opcode === 9) sock.write(controlFrame(0x0a, payload));
        else if (opcode === 8) {
          sock.end(controlFrame(0x08, payload.subarray(0, 2)));
          return;
        }
      }
      if (off < chunk.length) pending = Buffer.from(chunk.subarray(off));
    }
  });
}

async function connectEach(list) {
  let next = 0;
  let ok = 0;
  async function worker() {
    while (next < list.length) {
      const c = list[next++];
      if (await connectOne(c, 0)) ok++;
    }
  }
  const workers = [];
  for (let i = 0; i < Math.min(concurrency, list.length); i++) workers.push(worker());
  await Promise.all(workers);
  return ok;
}

async function connectAll() {
  for (let i = 0; i < total; i++) clients.push(new Client());
  for (let i = 0; i < stallCount; i++) stalled.push(new Client(true));
  const ok = await connectEach(clients);
  const stalledOk = await connectEach(stalled);
  const event = { event: 'connected', ok, failed: total - ok };
  if (stallCount) {
    Object.assign(event, { stalled: stalledOk, stalled_failed: stallCount - stalledOk });
  }
  emit(event);
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
  for (const c of clients.concat(stalled)) {
    if (c.kill) c.kill();
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
