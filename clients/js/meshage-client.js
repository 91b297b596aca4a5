// A client of a meshage node's HTTP API, for Node.js 18 and later. No dependencies: it uses the
// global fetch.
//
//   import { MeshClient, MeshError } from './meshage-client.js';
//   const mesh = new MeshClient('http://127.0.0.1:8080');
//   await mesh.send('echo', 'alice', { hello: 'world' });   // the owner's answer
//
// The same surface and meaning as the Rust client (src/client.rs) and the `meshage` commands:
// one request per call, no retries of its own (the node retries what cannot have run), and any
// status outside 2xx thrown as a MeshError. See README.md beside this file.

/** Stream names the HTTP API keeps for its own routes: a send cannot reach them. */
const RESERVED_STREAMS = ['broadcast', 'locate', 'members'];

/** The default for `timeoutMs`: what the `meshage` commands wait. */
const DEFAULT_TIMEOUT_MS = 30_000;

/** The default for `maxResponseBytes`: a larger answer is refused, not buffered. */
const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

/**
 * Why a call failed. `status` is the node's HTTP status, or 0 when no answer came; `kind` is
 * the class the `meshage` command's exit codes tell apart: `bad_input` (a 4xx other than 401,
 * 403 and 404, or input refused before sending), `not_found` (404: no service on the stream),
 * `unauthorized` (401 or 403), `unreachable` (no answer: refused connection, TLS failure, or
 * the timeout), `failed` (anything else, such as a 502 when a key's owner is down); `body` is
 * the node's JSON error body (`{"error": "..."}`), or null.
 */
export class MeshError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {{kind?: string, body?: unknown, cause?: unknown}} [options]
   */
  constructor(status, message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MeshError';
    this.status = status;
    this.kind = options.kind ?? kindOf(status);
    this.body = options.body ?? null;
  }

  /** True when the call ran out of its `timeoutMs`. */
  get timedOut() {
    return this.kind === 'unreachable' && this.cause?.name === 'TimeoutError';
  }
}

/** The error class of a status, as the Rust client's ClientError. */
function kindOf(status) {
  if (status === 0) return 'unreachable';
  if (status === 404) return 'not_found';
  if (status === 401 || status === 403) return 'unauthorized';
  if (status >= 400 && status < 500) return 'bad_input';
  return 'failed';
}

export class MeshClient {
  /** `Bearer TOKEN`, kept private so that inspecting the client never shows it. */
  #authorization;

  /**
   * A client of the node at `url` (`http://host:port`, `https://host:port`, or `host:port`).
   * Over HTTPS the node's certificate is verified against Node's CA store: for your own CA,
   * start Node with `NODE_EXTRA_CA_CERTS=ca.pem`. Throws a MeshError (`bad_input`) on a URL
   * that is not `http[s]://host[:port]`, or a token a header cannot hold.
   *
   * @param {string} url
   * @param {{token?: string, timeoutMs?: number, maxResponseBytes?: number}} [options]
   */
  constructor(url, options = {}) {
    this.url = baseUrl(url);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(this.timeoutMs > 0)) {
      throw new MeshError(0, 'timeoutMs must be a positive number of milliseconds', {
        kind: 'bad_input',
      });
    }
    this.maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    const token = options.token?.trim();
    if (token) {
      // Only visible ASCII and spaces: anything else could split or forge a header.
      if (!/^[\x20-\x7e]+$/.test(token)) {
        throw new MeshError(0, 'the API token holds characters a header cannot', {
          kind: 'bad_input',
        });
      }
      this.#authorization = `Bearer ${token}`;
    }
  }

  /**
   * Sends `message` (any JSON value; `{}` when undefined) to the service that owns `key` on
   * `stream`, and resolves to its answer. `POST /api/{stream}/{key}`.
   *
   * @param {string} stream
   * @param {string} key
   * @param {unknown} [message]
   */
  async send(stream, key, message) {
    checkStream(stream);
    if (RESERVED_STREAMS.includes(stream)) {
      throw new MeshError(0, `the stream name \`${stream}\` is reserved by the HTTP API`, {
        kind: 'bad_input',
      });
    }
    return this.#call('POST', messagePath('/api/', stream, key), message);
  }

  /**
   * Sends `message` to every service of `stream` and resolves to an array with one entry per
   * service: its answer, or `{error, serviceId, status}` for a service that failed (not a
   * failure of the call). `key` reaches every handler as the partition key.
   * `POST /api/broadcast/{stream}/{key}`.
   *
   * @param {string} stream
   * @param {string} key
   * @param {unknown} [message]
   */
  async broadcast(stream, key, message) {
    checkStream(stream);
    return this.#call('POST', messagePath('/api/broadcast/', stream, key), message);
  }

  /**
   * Every routable service (`GET /api/services`), or only those of `stream`:
   * `[{id, stream, node, endpoints: [{endpointType, description}]}]`.
   *
   * @param {string} [stream]
   */
  async services(stream) {
    const services = await this.#call('GET', '/api/services');
    return stream === undefined ? services : services.filter((s) => s.stream === stream);
  }

  /** Every node the node knows, with its state and services (`GET /api/members`). */
  async members() {
    return this.#call('GET', '/api/members');
  }

  /**
   * The service and node that own `key` on `stream`, without running anything:
   * `{stream, partitionKey, serviceId, node, endpoint, local, services, tableVersion}`.
   * `GET /api/locate/{stream}/{key}`.
   *
   * @param {string} stream
   * @param {string} key
   */
  async locate(stream, key) {
    checkStream(stream);
    return this.#call('GET', messagePath('/api/locate/', stream, key));
  }

  /** Shows the node, never the token. */
  toString() {
    return `MeshClient(${this.url})`;
  }

  async #call(method, path, message) {
    const headers = { accept: 'application/json' };
    let body;
    if (method === 'POST') {
      headers['content-type'] = 'application/json';
      body = encode(message === undefined ? {} : message);
    }
    if (this.#authorization) headers.authorization = this.#authorization;
    let status;
    let text;
    try {
      const response = await fetch(this.url + path, {
        method,
        headers,
        body,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      status = response.status;
      text = await readBounded(response, this.maxResponseBytes);
    } catch (e) {
      if (e instanceof MeshError) throw e;
      const why =
        e?.name === 'TimeoutError'
          ? `no answer within ${this.timeoutMs} ms`
          : `cannot reach it: ${reason(e)}`;
      throw new MeshError(0, `${this.url}: ${why}`, { kind: 'unreachable', cause: e });
    }
    let value;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined;
    }
    if (status >= 200 && status < 300) {
      return value === undefined ? text : value;
    }
    throw new MeshError(status, errorMessage(status, value, text), {
      body: value === undefined ? null : value,
    });
  }
}

/** `http[s]://host[:port]` from what the caller gave, or a MeshError. */
function baseUrl(url) {
  const given = String(url ?? '').trim();
  const bad = (why) =>
    new MeshError(0, `invalid node URL \`${given}\`: ${why}`, { kind: 'bad_input' });
  let parsed;
  try {
    parsed = new URL(given.includes('://') ? given : `http://${given}`);
  } catch {
    throw bad('expected http://host:port');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw bad('only http:// and https:// are supported');
  }
  if (!parsed.hostname || parsed.pathname !== '/' || parsed.search || parsed.hash) {
    throw bad('expected http://host:port');
  }
  if (parsed.username || parsed.password) {
    throw bad('credentials go in the token option, not the URL');
  }
  return `${parsed.protocol}//${parsed.host}`;
}

/** The message as JSON text; a MeshError for what JSON cannot hold (a BigInt, a function). */
function encode(message) {
  let text;
  try {
    text = JSON.stringify(message);
  } catch (e) {
    throw new MeshError(0, `the message is not JSON: ${e.message}`, { kind: 'bad_input' });
  }
  if (text === undefined) {
    throw new MeshError(0, 'the message is not JSON', { kind: 'bad_input' });
  }
  return text;
}

function checkStream(stream) {
  if (typeof stream !== 'string' || stream === '') {
    throw new MeshError(0, 'the stream name is empty', { kind: 'bad_input' });
  }
}

/** `prefix` + the stream and key, each percent-encoded as one path segment. */
function messagePath(prefix, stream, key) {
  return `${prefix}${encodeURIComponent(stream)}/${encodeURIComponent(String(key))}`;
}

/** The answer's text, refused once it passes `limit` bytes. */
async function readBounded(response, limit) {
  const length = Number(response.headers.get('content-length'));
  if (length > limit) {
    await response.body?.cancel();
    throw tooLarge(response.status, limit);
  }
  if (!response.body) return '';
  const chunks = [];
  let total = 0;
  for await (const chunk of response.body) {
    total += chunk.byteLength;
    if (total > limit) {
      throw tooLarge(response.status, limit);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function tooLarge(status, limit) {
  return new MeshError(status, `the answer is larger than maxResponseBytes (${limit})`, {
    kind: 'failed',
  });
}

/** The node's `error` text, else the body's text on one line, else the status. */
function errorMessage(status, value, text) {
  if (typeof value?.error === 'string') return value.error;
  const line = text.split(/\s+/).filter(Boolean).join(' ');
  return line || `HTTP ${status}`;
}

/** An error's message with its causes, as fetch hides the useful part in `cause`. */
function reason(e) {
  const parts = [];
  for (let c = e; c && parts.length < 4; c = c.cause) {
    if (c.message) parts.push(c.message);
  }
  return parts.join(': ') || String(e);
}
