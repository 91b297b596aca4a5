// The JavaScript client against a live cluster, such as the one tests/it/clients.rs starts
// (`cargo test --test it clients::`): three nodes serving `echo` (each node's handler answers
// {"echoed", "by": its service id, "key"}) and `work` ({"ms": N} answers after N ms;
// {"fail": STATUS, "why": TEXT} fails so). The nodes are read from the environment:
//
//   MESHAGE_NODES=http://127.0.0.1:8080,... node --test clients/js/test/client.test.js
//
// and, for the tests of their own: MESHAGE_TOKEN_NODE and MESHAGE_TOKEN (a node that asks for
// that token; MESHAGE_WORK_TOKEN is one it takes for `work` only), MESHAGE_TLS_NODE (an
// https:// node whose CA is in NODE_EXTRA_CA_CERTS) and MESHAGE_DEAD_NODE (a closed port). A
// test whose variable is missing is skipped.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MeshClient, MeshError } from '../meshage-client.js';

const env = process.env;
const nodes = (env.MESHAGE_NODES ?? '').split(',').filter(Boolean);
const cluster = { skip: nodes.length === 0 && 'MESHAGE_NODES is not set' };
const clients = nodes.map((url) => new MeshClient(url, { timeoutMs: 10_000 }));

/** Runs `call` and returns the MeshError it throws; fails if it throws anything else. */
async function meshError(call) {
  try {
    await call();
  } catch (e) {
    assert.ok(e instanceof MeshError, `a MeshError, not ${e}`);
    return e;
  }
  assert.fail('the call succeeded');
}

/** The routes of the node's OpenAPI description, as `METHOD path`. */
async function describedRoutes(url) {
  const response = await fetch(`${url}/api/openapi.json`);
  assert.equal(response.status, 200);
  const description = await response.json();
  const routes = new Set();
  for (const [path, item] of Object.entries(description.paths)) {
    for (const method of Object.keys(item)) routes.add(`${method.toUpperCase()} ${path}`);
  }
  return { description, routes };
}

test('send is answered by the owner of the key, whichever node is asked', cluster, async () => {
  for (const key of ['alice', 'bob', 'a key/with ü and %']) {
    const owner = await clients[0].locate('echo', key);
    assert.equal(owner.stream, 'echo');
    assert.equal(owner.partitionKey, key);
    for (const client of clients) {
      const answer = await client.send('echo', key, { hello: 'world', n: [1, 2] });
      assert.deepEqual(answer.echoed, { hello: 'world', n: [1, 2] });
      assert.equal(answer.key, key);
      assert.equal(answer.by, owner.serviceId);
    }
  }
  // No message is {}, as in the original; any JSON value goes as it is.
  assert.deepEqual((await clients[0].send('echo', 'k')).echoed, {});
  assert.deepEqual((await clients[0].send('echo', 'k', [1, 'two', null])).echoed, [1, 'two', null]);
  assert.equal((await clients[0].send('echo', 'k', 'text')).echoed, 'text');
});

const broadcastTitle = 'broadcast reaches every service of the stream, and services lists them';
test(broadcastTitle, cluster, async () => {
  const services = await clients[0].services('echo');
  assert.equal(services.length, nodes.length);
  for (const s of services) {
    assert.equal(s.stream, 'echo');
    assert.equal(s.endpoints[0].endpointType, 'http');
  }
  const all = await clients[0].services();
  assert.ok(all.length > services.length, 'other streams are listed without a filter');
  assert.deepEqual(await clients[0].services('no-such-stream'), []);

  const answers = await clients[1].broadcast('echo', 'everyone', { ping: true });
  assert.equal(answers.length, services.length);
  assert.deepEqual(
    answers.map((a) => a.by).sort(),
    services.map((s) => s.id).sort(),
  );
  for (const a of answers) {
    assert.deepEqual(a.echoed, { ping: true });
    assert.equal(a.key, 'everyone');
  }
});

test('members lists every node', cluster, async () => {
  const members = await clients[0].members();
  assert.equal(members.filter((m) => m.state === 'live').length, nodes.length);
  assert.equal(members.filter((m) => m.self).length, 1);
});

test('errors are MeshErrors with the status, the message and the body', cluster, async () => {
  const client = clients[0];
  let e = await meshError(() => client.send('no-such-stream', 'k', {}));
  assert.equal(e.status, 404);
  assert.equal(e.kind, 'not_found');
  assert.equal(e.message, "No matching services found for 'no-such-stream'");
  assert.deepEqual(e.body, { error: e.message });
  e = await meshError(() => client.locate('no-such-stream', 'k'));
  assert.equal(e.status, 404);
  e = await meshError(() => client.broadcast('no-such-stream', 'k', {}));
  assert.equal(e.status, 404);

  // A handler's error keeps its status; a 4xx is bad input, a 5xx a failure.
  e = await meshError(() => client.send('work', 'k', { fail: 422, why: 'no such order' }));
  assert.equal(e.status, 422);
  assert.equal(e.kind, 'bad_input');
  assert.equal(e.message, 'no such order');
  e = await meshError(() => client.send('work', 'k', { fail: 503, why: 'busy' }));
  assert.equal(e.status, 503);
  assert.equal(e.kind, 'failed');

  // Refused before sending: reserved streams, an empty stream, a bad URL.
  e = await meshError(() => client.send('broadcast', 'k', {}));
  assert.equal(e.status, 0);
  assert.equal(e.kind, 'bad_input');
  for (const notJson of [10n, () => 1]) {
    e = await meshError(() => client.send('echo', 'k', notJson));
    assert.equal(e.kind, 'bad_input');
  }
  e = await meshError(() => client.locate('', 'k'));
  assert.equal(e.kind, 'bad_input');
  for (const bad of ['ftp://h:1', 'http://', 'http://h:1/api', 'http://u:p@h:1']) {
    e = await meshError(async () => new MeshClient(bad));
    assert.equal(e.kind, 'bad_input', bad);
  }
  assert.equal(new MeshClient('127.0.0.1:1/').url, 'http://127.0.0.1:1');
});

const timeoutTitle = 'a call that takes longer than timeoutMs fails as unreachable, timed out';
test(timeoutTitle, cluster, async () => {
  // Long enough that a loaded machine answers the second call in time.
  const quick = new MeshClient(nodes[0], { timeoutMs: 1000 });
  const started = Date.now();
  const e = await meshError(() => quick.send('work', 'k', { ms: 4000 }));
  const took = Date.now() - started;
  assert.equal(e.status, 0);
  assert.equal(e.kind, 'unreachable');
  assert.ok(e.timedOut, `${e.message}`);
  assert.match(e.message, /no answer within 1000 ms/);
  assert.ok(took >= 990 && took < 3500, `took ${took} ms`);
  // The same client carries on.
  assert.deepEqual(await quick.send('work', 'k', { ms: 1 }), { slept: 1 });
});

const dead = { skip: !env.MESHAGE_DEAD_NODE && 'MESHAGE_DEAD_NODE is not set' };

test('a node that cannot be reached fails as unreachable', dead, async () => {
  const e = await meshError(() => new MeshClient(env.MESHAGE_DEAD_NODE).services());
  assert.equal(e.status, 0);
  assert.equal(e.kind, 'unreachable');
  assert.equal(e.timedOut, false);
  assert.match(e.message, /ECONNREFUSED/);
});

test('answers larger than maxResponseBytes are refused', cluster, async () => {
  const small = new MeshClient(nodes[0], { maxResponseBytes: 100 });
  const e = await meshError(() => small.send('echo', 'k', { big: 'x'.repeat(200) }));
  assert.equal(e.status, 200);
  assert.equal(e.kind, 'failed');
  assert.match(e.message, /larger than maxResponseBytes/);
});

const guarded = {
  skip: !(env.MESHAGE_TOKEN_NODE && env.MESHAGE_TOKEN) && 'MESHAGE_TOKEN_NODE is not set',
};

test('a node that asks for a token: 401 without it or with a wrong one', guarded, async () => {
  const url = env.MESHAGE_TOKEN_NODE;
  const right = new MeshClient(url, { token: env.MESHAGE_TOKEN });
  assert.equal((await right.send('echo', 'k', { a: 1 })).echoed.a, 1);
  assert.equal((await right.services('echo')).length, 1);
  for (const client of [new MeshClient(url), new MeshClient(url, { token: 'wrong-token-0000' })]) {
    const e = await meshError(() => client.send('echo', 'k', {}));
    assert.equal(e.status, 401);
    assert.equal(e.kind, 'unauthorized');
    assert.equal(typeof e.body.error, 'string');
    assert.ok(e.message.length > 0);
  }
  // A token for other streams only: 403, refused just the same.
  if (env.MESHAGE_WORK_TOKEN) {
    const limited = new MeshClient(url, { token: env.MESHAGE_WORK_TOKEN });
    assert.deepEqual(await limited.send('work', 'k', { ms: 1 }), { slept: 1 });
    const e = await meshError(() => limited.send('echo', 'k', {}));
    assert.equal(e.status, 403);
    assert.equal(e.kind, 'unauthorized');
  }
  // The token never shows when the client is printed or inspected.
  const { inspect } = await import('node:util');
  assert.ok(!inspect(right, { showHidden: true }).includes(env.MESHAGE_TOKEN));
  assert.ok(!JSON.stringify(right).includes(env.MESHAGE_TOKEN));
  assert.ok(!String(right).includes(env.MESHAGE_TOKEN));
  const e = await meshError(async () => new MeshClient(url, { token: 'bad\nsecret-token' }));
  assert.equal(e.kind, 'bad_input');
  assert.ok(!e.message.includes('secret-token'));
});

const https = { skip: !env.MESHAGE_TLS_NODE && 'MESHAGE_TLS_NODE is not set' };

test('an https:// node, its CA given by NODE_EXTRA_CA_CERTS', https, async () => {
  const client = new MeshClient(env.MESHAGE_TLS_NODE);
  assert.ok(client.url.startsWith('https://'));
  assert.equal((await client.send('echo', 'k', { tls: true })).echoed.tls, true);
  // Plain HTTP to the same port is refused by the node, in JSON.
  const plain = new MeshClient(env.MESHAGE_TLS_NODE.replace('https://', 'http://'));
  const e = await meshError(() => plain.services());
  assert.equal(e.status, 400);
  assert.equal(e.kind, 'bad_input');
  assert.match(e.message, /https/i);
});

const describedTitle =
  'every route the client calls is in the OpenAPI description, with the fields it reads';
test(describedTitle, cluster, async () => {
  const { description, routes } = await describedRoutes(nodes[0]);
  for (const route of [
    'POST /api/{stream}/{partitionKey}',
    'POST /api/broadcast/{stream}/{partitionKey}',
    'GET /api/services',
    'GET /api/members',
    'GET /api/locate/{stream}/{partitionKey}',
  ]) {
    assert.ok(routes.has(route), `${route} is described`);
  }
  const schemas = description.components.schemas;
  const required = (name) => new Set(schemas[name].required);
  // What the client and its types read: errors' `error`, the services filter's `stream`,
  // locate's fields, broadcast errors' fields.
  assert.ok(required('Error').has('error'));
  for (const field of ['id', 'stream', 'node', 'endpoints']) {
    assert.ok(required('Service').has(field), `Service.${field}`);
  }
  const located = ['stream', 'partitionKey', 'serviceId', 'node', 'endpoint', 'local', 'services'];
  for (const field of [...located, 'tableVersion']) {
    assert.ok(required('Locate').has(field), `Locate.${field}`);
  }
  for (const field of ['error', 'serviceId', 'status']) {
    assert.ok(required('BroadcastError').has(field), `BroadcastError.${field}`);
  }
  for (const field of ['id', 'endpoint', 'state', 'self', 'services']) {
    assert.ok(required('Member').has(field), `Member.${field}`);
  }
  // The node's own errors, which the client reads `error` of, are described as Error bodies.
  const errorBody = (response) => {
    const resolved = response.$ref
      ? description.components.responses[response.$ref.split('/').pop()]
      : response;
    return resolved.content['application/json'].schema.$ref;
  };
  const paths = description.paths;
  for (const [path, method] of [
    ['/api/locate/{stream}/{partitionKey}', 'get'],
    ['/api/broadcast/{stream}/{partitionKey}', 'post'],
  ]) {
    for (const status of ['401', '404']) {
      const schema = errorBody(paths[path][method].responses[status]);
      assert.equal(schema, '#/components/schemas/Error', `${method} ${path} ${status}`);
    }
  }
  const services401 = errorBody(paths['/api/services'].get.responses['401']);
  assert.equal(services401, '#/components/schemas/Error');
});
