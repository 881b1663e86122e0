// PEER 2 for bench/fanout.py: a Node server with the `ws` package (bench/package.json).
//
//   node bench/peer_ws.js --port 9002 --size 2423 [--host 127.0.0.1]
//
// One `http` server (keep-alive 75 s, as aiohttp's) with a `ws` WebSocketServer on it
// (perMessageDeflate off, no pings: as the floor). `GET /ws` opens a WebSocket whose messages are
// ignored. `POST /vote` (or `GET /vote`) bumps a counter, builds ONE Buffer of exactly --size
// bytes, {"type":"stats","seq":N,"pad":"xxx…"} (the floor's payload), and hands it to
// `ws.send(buffer, {binary: false})` of every open client (the library's broadcast idiom), then
// answers {"seq": N, "sent": S}; `GET /healthz` answers {"seq": N, "frames": F}.
// It exits when its stdin closes (the benchmark went away) and on SIGTERM / SIGINT.
'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option('host', '127.0.0.1');
const port = Number.parseInt(option('port', ''), 10);
const size = Number.parseInt(option('size', ''), 10);
if (!(port > 0) || !(size >= 0)) {
  process.stderr.write('usage: node peer_ws.js --port PORT --size BYTES [--host HOST]\n');
  process.exit(2);
}

let seq = 0;
let frames = 0;

function makePayload(n) {
  // A stats-shaped message of exactly `size` bytes (or the shortest possible).
  const head = `{"type":"stats","seq":${n},"pad":"`;
  return Buffer.from(head + 'x'.repeat(Math.max(0, size - head.length - 2)) + '"}');
}

function json(res, body) {
  const data = JSON.stringify(body);
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (path === '/vote' && (req.method === 'POST' || req.method === 'GET')) {
    req.resume();
    req.on('end', () => {
      seq += 1;
      const payload = makePayload(seq);
      let sent = 0;
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) {
          client.send(payload, { binary: false });
          sent += 1;
        }
      }
      frames += sent;
      json(res, { seq, sent });
    });
  } else if (path === '/healthz' && req.method === 'GET') {
    req.resume();
    json(res, { seq, frames });
  } else {
    req.resume();
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found\n');
  }
});
server.keepAliveTimeout = 75000;

const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, maxPayload: 4096 });
wss.on('connection', (ws) => {
  ws.on('error', () => {});
});

server.listen({ host, port, backlog: 128 }, () => {
  process.stdout.write(`peer2 (node ws) listening on ${host}:${port}\n`);
});

function stop() {
  for (const client of wss.clients) client.terminate();
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// The parent going away (stdin closed) ends this process too: nothing outlives the benchmark.
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
