#!/usr/bin/env node
// A meshage handler in Node.js, no dependencies.
//
// Run with: node examples/handler.js [PORT]     (or PORT=9001 in the environment; 0 picks one)
// then:     meshage node --handler echo=http://127.0.0.1:9001/
//
// The node POSTs each message of its stream here: the body is the message data (JSON), and the
// headers X-Stream, X-Partition-Key and X-Service-ID say where it was sent (stream and key are
// percent-encoded). The JSON answer goes back to the sender with its status; a 4xx is passed
// through, a 5xx becomes a 502. GET is the health check: answer 503 to be taken out of the
// cluster, anything below 500 to stay in.
'use strict';

const http = require('http');

const port = Number(process.argv[2] ?? process.env.PORT ?? 9001);
const host = process.env.HOST ?? '127.0.0.1';

function answer(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET') {
    answer(res, 200, { status: 'up' });
    return;
  }
  if (req.method !== 'POST') {
    answer(res, 405, { error: 'use POST' });
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    let data;
    try {
      data = text.trim() ? JSON.parse(text) : {};
    } catch (e) {
      answer(res, 400, { error: `invalid JSON: ${e.message}` });
      return;
    }
    answer(res, 200, {
      handledBy: 'node',
      stream: decodeURIComponent(req.headers['x-stream'] ?? ''),
      key: decodeURIComponent(req.headers['x-partition-key'] ?? ''),
      serviceId: req.headers['x-service-id'],
      data,
    });
  });
});

server.listen(port, host, () => {
  console.log(`listening on http://${host}:${server.address().port}/`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
