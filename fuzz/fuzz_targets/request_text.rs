//! Everything a request's text goes through before the model: validation of the namespace,
//! query and scope, normalisation (the exact-repeat key), the conversation-context key and the
//! generic-follow-up check, the hit guards' word analysis, and the model's tokenizer, on
//! arbitrary bytes. Beyond "never panics", it checks what the cache relies on: normalising
//! twice changes nothing, the guards give the same verdict both ways round, tokenising
//! stays within the model's window, and a long text's prefix short cut gives the same tokens
//! as tokenising all of it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use semcache::cache::guard::{check, Words};
use semcache::cache::{context, validate};
use semcache::text::normalize;
use semcache::embed::{ModelInfo, SentenceModel};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

fn model() -> &'static SentenceModel {
    static MODEL: OnceLock<SentenceModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::var_os("SEMCACHE_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/all-MiniLM-L6-v2")));
        let info = ModelInfo::read(&dir).expect("the model: run models/fetch.sh");
        let cpu = semcache::embed::device(semcache::embed::DeviceKind::Cpu).expect("the CPU");
        SentenceModel::load(&dir, info, cpu).expect("load the model")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Fields separated by 0x1F (unit separator), so one input exercises several at once.
    let mut fields = text.split('\u{1f}');
    let namespace = fields.next().unwrap_or_default();
    let query = fields.next().unwrap_or_default();
    let other = fields.next().unwrap_or_default();
    let scope: BTreeMap<String, String> =
        fields.clone().zip(fields.skip(1)).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();

    let _ = validate::namespace(namespace);
    let limits = validate::Limits::default();
    let _ = validate::text("query", query, limits.max_query_bytes, "--max-query-bytes");
    let _ = validate::map("scope", &scope, limits.scope());
    let _ = validate::incomplete(&scope, false);
    let _ = validate::entry_id(other);

    let normalized = normalize(query);
    assert_eq!(normalize(&normalized), normalized, "normalising twice changes the text: {query:?}");
    let _ = context::is_generic(&normalized);
    let turns = vec![query.to_owned(), other.to_owned()];
    let _ = context::key(&turns, "");
    let _ = context::key(&[], other);

    let (q, o) = (Words::of(query), Words::of(other));
    let there = check(&q, &o).map(|v| v.guard);
    let back = check(&o, &q).map(|v| v.guard);
    assert_eq!(there, back, "the guards disagree with themselves: {query:?} / {other:?}");

    if query.len() <= 32 * 1024 {
        let encoding = model().tokenize(query).expect("the tokenizer accepts any text");
        assert!(encoding.len() <= model().info().max_seq_length, "{} tokens", encoding.len());
    }

    // Past the prefix the tokenizer is given for long texts, the short cut must give the same
    // tokens as tokenising the whole text: the query repeated to just past it. Tokenising
    // 4.6 KB twice costs 20 times the rest of the target, so one input in eight (by its last
    // byte, which the fuzzer mutates as freely as any).
    if !query.is_empty() && data.last().is_some_and(|b| b % 8 == 0) {
        let limit = model().info().max_seq_length * SentenceModel::PREFIX_BYTES_PER_TOKEN;
        let mut long = query.repeat(limit / query.len() + 2);
        long.truncate(long.floor_char_boundary(limit + 512));
        let fast = model().tokenize(&long).expect("tokenize");
        let whole = model().tokenize_whole(&long).expect("tokenize");
        assert_eq!(fast.get_ids(), whole.get_ids(), "the prefix short cut changed the tokens of {query:?} repeated");
    }
});
