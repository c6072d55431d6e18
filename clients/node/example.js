#!/usr/bin/env node
'use strict';
// semcache from Node.js: store an answer, hit it with a paraphrase, miss with an unrelated
// question, report the served answer right (Feedback), print Stats; then verified mode: in a
// namespace with an error bound the paraphrase is an EXPLORE miss, and the store of the LLM's
// answer with its probe token teaches the namespace whether the cached answer was right.
// Exits 1 if the paraphrase misses or the unrelated question hits, or verified mode does not
// answer as a new verified namespace must (EXPLORE with a token, probe_correct for the same
// answer, a reused token refused, Feedback counted).
//
//   node clients/node/example.js [ADDRESS]      # default: $SEMCACHE_ADDR or 127.0.0.1:50051

const crypto = require('crypto');
const { SemcacheClient, SemcacheError } = require('./semcache');

async function main() {
  const address = process.argv[2] || process.env.SEMCACHE_ADDR || '127.0.0.1:50051';
  const namespace = `example-node-${crypto.randomBytes(4).toString('hex')}`;
  const scope = { model: 'gpt-4o-mini' };
  const cache = new SemcacheClient(address);
  let ok = true;
  try {
    await cache.waitUntilServing();
    console.log(`semcache at ${address}, namespace ${namespace}`);
    const ns = await cache.configureNamespace(namespace, { ttl_seconds: 3600 });
    console.log(`namespace: threshold ${ns.similarity_threshold.toFixed(2)}, ttl ${ns.ttl_seconds}s, model ${ns.embedding_model}`);

    const question = 'How do I reset my password?';
    const answer = 'Open Settings > Security and choose Reset password; we email you a link.';
    const id = await cache.store(namespace, question, answer, {
      scope,
      metadata: { source: 'example.js' },
      usage: { input_tokens: 12, output_tokens: 20, cost_usd: 0.0004 },
    });
    console.log(`stored     ${JSON.stringify(question)} -> id ${id}`);

    const paraphrase = 'I forgot my password, how can I change it?';
    const r = await cache.lookup(namespace, paraphrase, { scope });
    console.log(`lookup     ${JSON.stringify(paraphrase)}: hit=${r.hit} similarity=${r.similarity.toFixed(3)} threshold=${r.threshold.toFixed(2)}`);
    if (r.hit) {
      console.log(`           response: ${JSON.stringify(r.entry.response)} (cached for ${JSON.stringify(r.entry.query)})`);
    } else {
      console.error(`FAIL: the paraphrase missed (${r.miss_reason})`);
      ok = false;
    }

    const unrelated = 'What is the capital of Australia?';
    const m = await cache.lookup(namespace, unrelated, { scope });
    console.log(`lookup     ${JSON.stringify(unrelated)}: hit=${m.hit} similarity=${m.similarity.toFixed(3)} miss_reason=${m.miss_reason}`);
    if (m.hit) {
      console.error(`FAIL: the unrelated question hit: ${JSON.stringify(m.entry.response)}`);
      ok = false;
    }

    if (r.hit) {
      // The user liked the served answer: feedback teaches the namespace.
      const fb = await cache.feedback(namespace, r.entry.id, paraphrase, true);
      console.log(`feedback   served answer right: observations=${fb.observations} deleted=${fb.deleted}`);
      if (fb.observations < 1 || fb.deleted) {
        console.error('FAIL: feedback was not recorded');
        ok = false;
      }
    }

    const s = await cache.stats(namespace);
    console.log(
      `stats      lookups=${s.lookups} hits=${s.hits} misses=${s.misses} stores=${s.stores} entries=${s.entries} ` +
        `saved_tokens=${s.saved_input_tokens}+${s.saved_output_tokens} saved_usd=${s.saved_cost_usd.toFixed(4)} ` +
        `feedback_correct=${s.feedback_correct}`,
    );

    ok = (await verifiedMode(cache, `${namespace}-verified`, scope, question, answer, paraphrase)) && ok;

    try {
      await cache.lookup('bad namespace!', 'x');
    } catch (e) {
      if (!(e instanceof SemcacheError)) throw e;
      console.log(`error      bad namespace -> ${e.codeName}: ${e.details}`);
    }
    console.log(`dropped    ${namespace}: ${await cache.dropNamespace(namespace)} entries`);
  } finally {
    cache.close();
  }
  console.log(ok ? 'OK' : 'FAILED');
  return ok ? 0 : 1;
}

// A namespace with error_bound 0.05 trusts nothing yet: the paraphrase is an EXPLORE miss with a
// probe token; the gateway calls its LLM and stores the answer with the token.
async function verifiedMode(cache, namespace, scope, question, answer, paraphrase) {
  let ok = true;
  console.log('verified mode');
  const ns = await cache.configureNamespace(namespace, { ttl_seconds: 3600, error_bound: 0.05 });
  console.log(`namespace  ${namespace}: error_bound ${ns.error_bound.toFixed(2)}`);
  try {
    await cache.store(namespace, question, answer, { scope });
    const r = await cache.lookup(namespace, paraphrase, { scope });
    console.log(
      `lookup     ${JSON.stringify(paraphrase)}: hit=${r.hit} miss_reason=${r.miss_reason} ` +
        `similarity=${r.similarity.toFixed(3)} probe_token=${r.probe_token ? 'yes' : 'none'}`,
    );
    if (r.hit || r.miss_reason !== 'EXPLORE' || !r.probe_token) {
      console.error('FAIL: a new verified namespace must answer EXPLORE with a probe token');
      return false;
    }
    // On any miss: call the LLM, then store its answer with the token ('' unless EXPLORE).
    const llmAnswer = answer; // what the (stand-in) LLM answers: here the cached answer was right
    const stored = await cache.storeResult(namespace, paraphrase, llmAnswer, { scope, probeToken: r.probe_token });
    console.log(`stored     ${JSON.stringify(paraphrase)} with the probe token -> id ${stored.id}, probe_correct=${stored.probe_correct}`);
    if (stored.probe_correct !== true) {
      console.error('FAIL: the same answer was not judged correct');
      ok = false;
    }

    try {
      await cache.store(namespace, paraphrase, llmAnswer, { scope, probeToken: r.probe_token });
      console.error('FAIL: a reused probe token was accepted');
      ok = false;
    } catch (e) {
      if (!(e instanceof SemcacheError)) throw e;
      console.log(`error      token reused -> ${e.codeName}: ${e.details}`);
      if (e.codeName !== 'FAILED_PRECONDITION') {
        console.error(`FAIL: a reused token should be FAILED_PRECONDITION: ${e.message}`);
        ok = false;
      }
    }

    const s = await cache.stats(namespace);
    console.log(
      `stats      lookups=${s.lookups} hits=${s.hits} explores=${s.explores} probes_correct=${s.probes_correct} ` +
        `probes_wrong=${s.probes_wrong} estimated_error_rate=${s.estimated_error_rate.toFixed(4)}`,
    );
    if (s.explores !== 1 || s.probes_correct !== 1) {
      console.error('FAIL: expected 1 explore and 1 correct probe in Stats');
      ok = false;
    }
  } finally {
    console.log(`dropped    ${namespace}: ${await cache.dropNamespace(namespace)} entries`);
  }
  return ok;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err.stack || String(err));
    process.exit(1);
  },
);
