#!/usr/bin/env node
'use strict';
// semcache from Node.js: store an answer, hit it with a paraphrase, miss with an unrelated
// question, print Stats. Exits 1 if the paraphrase misses or the unrelated question hits.
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

    const s = await cache.stats(namespace);
    console.log(
      `stats      lookups=${s.lookups} hits=${s.hits} misses=${s.misses} stores=${s.stores} entries=${s.entries} ` +
        `saved_tokens=${s.saved_input_tokens}+${s.saved_output_tokens} saved_usd=${s.saved_cost_usd.toFixed(4)}`,
    );

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

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err.stack || String(err));
    process.exit(1);
  },
);
