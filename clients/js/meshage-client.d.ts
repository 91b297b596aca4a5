// Types of meshage-client.js.

/** What a failed call was, as the `meshage` command's exit codes tell them apart. */
export type MeshErrorKind = 'bad_input' | 'not_found' | 'unauthorized' | 'unreachable' | 'failed';

/** Thrown by every call that did not get a 2xx answer. */
export class MeshError extends Error {
  constructor(
    status: number,
    message: string,
    options?: { kind?: MeshErrorKind; body?: unknown; cause?: unknown },
  );
  /** The node's HTTP status, or 0 when no answer came. */
  readonly status: number;
  readonly kind: MeshErrorKind;
  /** The node's JSON error body (`{"error": "..."}`), or null. */
  readonly body: unknown;
  /** True when the call ran out of its `timeoutMs`. */
  readonly timedOut: boolean;
}

export interface MeshClientOptions {
  /** Sent as `Authorization: Bearer TOKEN`, for nodes started with `--api-tokens`. */
  token?: string;
  /** How long a call may take, answer included (default 30000). */
  timeoutMs?: number;
  /** The largest answer accepted, in bytes (default 64 MiB). */
  maxResponseBytes?: number;
}

/** `GET /api/services`: one routable service. */
export interface Service {
  id: string;
  stream: string;
  node: string;
  endpoints: { endpointType: 'http'; description: string }[];
}

/** `GET /api/locate/{stream}/{partitionKey}`: the owner of a key. */
export interface Location {
  stream: string;
  partitionKey: string;
  serviceId: string;
  node: string;
  endpoint: string;
  local: boolean;
  services: number;
  tableVersion: number;
}

/** `GET /api/members`: one node, as the node that answered sees it. */
export interface Member {
  id: string;
  endpoint: string;
  state: 'live' | 'leaving' | 'dead';
  /** This is the node that answered. */
  self: boolean;
  services: { id: string; stream: string }[];
  lastHeardMs?: number;
  withdrawnServices?: { id: string; stream: string }[];
}

/** A service that failed in a broadcast. */
export interface BroadcastError {
  error: string;
  serviceId: string;
  status: number;
}

export class MeshClient {
  constructor(url: string, options?: MeshClientOptions);
  /** `http[s]://host:port` of the node. */
  readonly url: string;
  readonly timeoutMs: number;
  readonly maxResponseBytes: number;
  send<T = unknown>(stream: string, key: string, message?: unknown): Promise<T>;
  broadcast<T = unknown>(
    stream: string,
    key: string,
    message?: unknown,
  ): Promise<(T | BroadcastError)[]>;
  services(stream?: string): Promise<Service[]>;
  members(): Promise<Member[]>;
  locate(stream: string, key: string): Promise<Location>;
}
