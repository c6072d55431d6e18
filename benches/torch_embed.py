"""The reference the embed benchmark is compared with: sentence-transformers on PyTorch, same
model folder, same texts, same thread count. Not part of CI (PyTorch from PyPI is a multi-GB
install); run it by hand next to `cargo bench --bench embed`:

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    /tmp/st/bin/python benches/torch_embed.py [--threads 2] [--model-dir models/all-MiniLM-L6-v2]
"""

import argparse
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

# The texts of benches/embed.rs.
QUERIES = [
    "How do I reset my password if I no longer have access to my email?",
    "What is the capital of France?",
    "Convert 5 miles to kilometers",
    "Explain the difference between TCP and UDP in simple terms",
    "What are the side effects of ibuprofen when taken with alcohol?",
    "python reverse list",
    "How long does shipping to Canada usually take for standard orders?",
    "Is it safe for dogs to eat grapes or raisins?",
]


def measure(model, texts, rounds):
    for _ in range(3):
        model.encode(texts, batch_size=len(texts), normalize_embeddings=True)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        model.encode(texts, batch_size=len(texts), normalize_embeddings=True)
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[0], times[-1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", default="models/all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model_dir, device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cases = [("single_short_query", QUERIES[:1])] + [
        (f"batch/{n}", (QUERIES * (n // len(QUERIES) + 1))[:n]) for n in (8, 32)
    ]
    for name, texts in cases:
        median, low, high = measure(model, texts, args.rounds)
        print(
            f"{name:<20} median {median * 1e3:7.1f} ms [{low * 1e3:.1f}, {high * 1e3:.1f}]"
            f"  {len(texts) / median:6.1f} sentences/s"
        )


if __name__ == "__main__":
    main()
