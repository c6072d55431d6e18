'use strict';
// A small promise-based semcache client for Node.js. The proto is loaded at runtime from
// ../../proto (or $SEMCACHE_PROTO_DIR); nothing is generated.
//
//   const { SemcacheClient } = require('./semcache');
//   const cache = new SemcacheClient('127.0.0.1:50051');
//   const r = await cache.lookup('support', 'I forgot my password', { scope: { model: 'gpt-4o' } });
//   if (!r.hit) {
//     const answer = await callTheLlm(...);
//     // r.probe_token is '' unless the miss was EXPLORE (verified mode): always passing it is fine.
//     await cache.store('support', 'I forgot my password', answer, { scope: { model: 'gpt-4o' }, probeToken: r.probe_token });
//   }
//   cache.close();
//
// Results are shaped like the proto's messages (snake_case: miss_reason, probe_token, ...); the
// options of a call are camelCase (ttlSeconds, probeToken, ...).
//
// Verified mode: configureNamespace(name, { error_bound: 0.05 }) serves a hit only while at
// most 5% of lookups are expected to get a wrong answer. Until the namespace has learned
// enough, some misses have miss_reason 'EXPLORE' and a probe_token: call the LLM as on any miss
// and pass the token with the store; storeResult() also says whether the cached answer would
// have been right (probe_correct). feedback() reports a served answer as right or wrong.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = process.env.SEMCACHE_PROTO_DIR || path.resolve(__dirname, '..', '..', 'proto');

const definition = protoLoader.loadSync('semcache/v1/semcache.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names as in the proto: similarity_threshold, miss_reason, ...
  longs: Number, // uint64 counters as JS numbers
  enums: String, // miss_reason: 'MISS_REASON_BELOW_THRESHOLD'
  defaults: true,
  oneofs: true,
});
const proto = grpc.loadPackageDefinition(definition).semcache.v1;

// grpc.health.v1.Health, declared inline (a few lines) rather than another dependency.
const HealthService = grpc.loadPackageDefinition(
  protoLoader.fromJSON(
    {
      nested: {
        grpc: { nested: { health: { nested: { v1: { nested: {
          HealthCheckRequest: { fields: { service: { type: 'string', id: 1 } } },
          HealthCheckResponse: {
            fields: { status: { type: 'ServingStatus', id: 1 } },
            nested: { ServingStatus: { values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 } } },
          },
          Health: { methods: { Check: { requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse' } } },
        } } } } } },
      },
    },
    { enums: String, defaults: true },
  ),
).grpc.health.v1.Health;

/** A failed RPC: `code` is the numeric gRPC status, `codeName` its name, `details` the server's message. */
class SemcacheError extends Error {
  constructor(method, err) {
    const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || String(err.code);
    super(`semcache ${method} failed: ${codeName}: ${err.details || err.message}`);
    this.name = 'SemcacheError';
    this.method = method;
    this.code = err.code;
    this.codeName = codeName;
    this.details = err.details || err.message;
  }
}

/** `context`: an array of earlier turns (hashed by the server) or a string key of your own. */
function contextFields(context) {
  if (context == null) return {};
  if (typeof context === 'string') return context ? { context_key: context } : {};
  return { context: [...context] };
}

class SemcacheClient {
  /** `token`: bearer token for a server that requires one (default $SEMCACHE_TOKEN);
   *  `credentials`: e.g. grpc.credentials.createSsl(fs.readFileSync('ca.pem')) for TLS. */
  constructor(
    address = process.env.SEMCACHE_ADDR || '127.0.0.1:50051',
    { timeoutMs = 10000, token = process.env.SEMCACHE_TOKEN, credentials = grpc.credentials.createInsecure() } = {},
  ) {
    this.address = address;
    this.timeoutMs = timeoutMs;
    this.credentials = credentials;
    this.metadata = new grpc.Metadata();
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
    this.stub = new proto.SemanticCache(address, credentials);
  }

  close() {
    this.stub.close();
  }

  /** The routing header a proxy in front of several nodes hashes to pick the namespace's node
   *  (harmless without one); calls that span namespaces name a node instead. */
  call(method, request, node) {
    const metadata = this.metadata.clone();
    const namespace = request.namespace ?? request.name;
    if (namespace) metadata.set('x-semcache-namespace', namespace);
    if (node) metadata.set('x-semcache-node', node);
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.timeoutMs);
      this.stub[method](request, metadata, { deadline }, (err, response) => {
        if (err) reject(new SemcacheError(method, err));
        else resolve(response);
      });
    });
  }

  /** Waits until the standard gRPC health service reports SERVING for semcache.v1.SemanticCache
   *  (the model has loaded and warmed up). */
  async waitUntilServing(timeoutMs = 60000) {
    const health = new HealthService(this.address, this.credentials);
    const until = Date.now() + timeoutMs;
    let last = 'no answer';
    try {
      for (;;) {
        try {
          const r = await new Promise((resolve, reject) =>
            health.Check({ service: 'semcache.v1.SemanticCache' }, { deadline: new Date(Date.now() + 2000) }, (e, v) =>
              e ? reject(e) : resolve(v),
            ),
          );
          if (r.status === 'SERVING') return;
          last = r.status;
        } catch (e) {
          last = `${e.code}: ${e.details || e.message}`;
        }
        if (Date.now() > until) throw new Error(`semcache at ${this.address} not SERVING after ${timeoutMs} ms (${last})`);
        await new Promise((r) => setTimeout(r, 250));
      }
    } finally {
      health.close();
    }
  }

  /** Resolves to { hit, entry, similarity, nearest_id, threshold, veto, miss_reason, probe_token }; a miss
   *  is not an error. miss_reason: 'EMPTY', 'BELOW_THRESHOLD', 'VETOED', 'NEEDS_CONTEXT' or 'EXPLORE'
   *  (verified mode; probe_token is then non-empty, else ''). */
  async lookup(namespace, query, { scope, threshold, context } = {}) {
    const req = { namespace, query, scope: scope || {}, ...contextFields(context) };
    if (threshold != null) req.similarity_threshold = threshold;
    const r = await this.call('Lookup', req);
    return {
      ...r,
      entry: r.hit ? r.entry : null,
      miss_reason: r.hit ? null : String(r.miss_reason).replace(/^MISS_REASON_/, ''),
      probe_token: r.probe_token || '',
    };
  }

  /** Resolves to the new entry's id once it is durable. usage: { input_tokens, output_tokens, cost_usd }.
   *  probeToken: the lookup's probe_token ('' or unset: none); with it a verified namespace learns
   *  whether its cached answer would have been right, comparing it with `response` after
   *  normalisation, or taking probeVerdict (true/false) when set. A token is used once: reusing
   *  it rejects with a SemcacheError FAILED_PRECONDITION. */
  async store(namespace, query, response, options = {}) {
    return (await this.storeResult(namespace, query, response, options)).id;
  }

  /** store(), resolving to { id, probe_correct }: probe_correct is true/false with a probeToken, null
   *  without one (or when the probed entry has gone since the lookup). */
  async storeResult(namespace, query, response, { scope, metadata, ttlSeconds, usage, context, probeToken, probeVerdict } = {}) {
    const req = { namespace, query, response, scope: scope || {}, metadata: metadata || {}, ...contextFields(context) };
    if (ttlSeconds != null) req.ttl_seconds = ttlSeconds;
    if (usage) req.usage = usage;
    if (probeToken) {
      req.probe_token = probeToken;
      if (probeVerdict != null) req.probe_verdict = Boolean(probeVerdict);
    } else if (probeVerdict != null) {
      throw new TypeError("probeVerdict needs the probeToken of the lookup that answered 'EXPLORE'");
    }
    const r = await this.call('Store', req);
    return { id: r.id, probe_correct: r.probe_correct ?? null };
  }

  /** Reports whether a served answer (lookup(...).entry.id) was right for `query`; resolves to
   *  { observations, deleted }. A wrong answer is never served for that query again (reported wrong
   *  for its own query, the entry is deleted). Needs the write grant. */
  feedback(namespace, entryId, query, correct) {
    return this.call('Feedback', { namespace, entry_id: entryId, query, correct: Boolean(correct) });
  }

  /** settings: { similarity_threshold, ttl_seconds, max_entries, threshold_floor, hit_guards, error_bound };
   *  unset ones keep their value. error_bound in [0, 0.5): 0 = the static threshold, above: verified mode. */
  configureNamespace(name, settings = {}) {
    return this.call('ConfigureNamespace', { name, ...settings });
  }

  /** Counters since start, for one namespace or all (''); through a cluster's proxy, all of
   *  `node`'s (e.g. 'n1'). */
  stats(namespace = '', node = undefined) {
    return this.call('Stats', { namespace }, node);
  }

  async dropNamespace(name) {
    return (await this.call('DropNamespace', { name })).deleted;
  }
}

module.exports = { SemcacheClient, SemcacheError, grpc };
