//! What a hit guard adds to a semantic hit: analysing both texts and comparing them, next to
//! the forward pass (about 10 ms) that every semantic lookup pays. `cargo bench --bench guard`.

use criterion::{criterion_group, criterion_main, Criterion};
use semcache::cache::guard::{check, Words};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("guard");
    let (query, stored) = ("Is chocolate toxic for dogs to eat?", "Is chocolate safe for dogs to eat?");
    group.bench_function("check_short_pair", |b| b.iter(|| check(&Words::of(query), &Words::of(stored))));
    let long_query = "I forgot my password and I no longer have access to the email address on the account; \
                      how can I reset it without losing the files I stored in the last 3 years?";
    let long_stored = "How do I reset my password when I cannot reach my email, and will my files from the \
                       past 3 years be kept?";
    group.bench_function("check_long_pair", |b| b.iter(|| check(&Words::of(long_query), &Words::of(long_stored))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
