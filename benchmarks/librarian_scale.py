"""Librarian at scale: seeded 1,000 projects x 200 files.

Records the full index time (no index, no patterns.json), an incremental run after one
project's map changed, and search latency p50/p99 over seeded queries.

    .venv/bin/python benchmarks/librarian_scale.py [--projects 1000] [--files 200] [--runs 3]

Output goes to benchmarks/out/librarian/ (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time
from pathlib import Path

from jarvis_kernel.config import LibrarianConfig
from jarvis_kernel.librarian.store import Librarian

OUT = Path(__file__).resolve().parent / "out" / "librarian"

KINDS = [
    (
        "src/pages/api/auth/[...nextauth].ts",
        "NextAuth config with {p} provider and Prisma adapter",
        ["auth", "nextauth"],
        ["authOptions"],
    ),
    (
        "prisma/schema.prisma",
        "Prisma schema: User, {e}, Order models",
        ["database", "prisma"],
        ["User"],
    ),
    (
        "src/lib/stripe.ts",
        "Stripe client and {e} checkout session helpers",
        ["payments"],
        ["createCheckout"],
    ),
    (
        "src/queue/{e}Worker.ts",
        "BullMQ worker processing {e} jobs with retries",
        ["queue"],
        ["start{E}Worker"],
    ),
    (
        "src/scene/{E}Scene.js",
        "three.js scene with {e} model and orbit controls",
        ["threejs"],
        ["{E}Scene"],
    ),
    ("tests/test_{e}.py", "pytest tests for {e} with fixtures", ["testing"], ["test_{e}"]),
    (".github/workflows/{e}.yml", "GitHub Actions workflow running {e} checks", ["ci"], []),
    ("src/components/{E}Card.tsx", "React card component showing a {e}", ["ui"], ["{E}Card"]),
    ("src/api/{e}.ts", "REST endpoint for {e} with zod validation", ["api"], ["{e}Handler"]),
    (
        "src/lib/{e}_cache.py",
        "Redis cache for {e} lookups with TTL",
        ["caching"],
        ["get_{e}", "ERR_{E}_MISSING"],
    ),
]
ENTITIES = [
    "invoice",
    "product",
    "artwork",
    "order",
    "customer",
    "report",
    "email",
    "upload",
    "session",
    "review",
    "booking",
    "ticket",
    "playlist",
    "recipe",
    "course",
    "lesson",
    "shipment",
    "coupon",
]
PROVIDERS = ["GitHub", "Google", "Discord", "Apple", "Credentials"]
QUERIES = [
    "nextauth github provider",
    "prisma schema",
    "stripe checkout",
    "bullmq worker retries",
    "three.js scene",
    "pytest fixtures",
    "github actions workflow",
    "react card component",
    "zod validation endpoint",
    "redis cache ttl",
    "let users sign in",
    "take payments",
    "background jobs",
    "OAuthCallbackError",
    "ERR_INVOICE_MISSING",
    "invoiceHandler",
    "3d model orbit",
    "database schema for orders",
    "send email to customer",
    "cache lookups for products",
]


def _files(rng: random.Random, project: int, n: int, version: int = 0) -> list[dict[str, object]]:
    files = []
    for i in range(n):
        path, summary, tags, symbols = rng.choice(KINDS)
        ent = rng.choice(ENTITIES)
        fmt = {"e": ent, "E": ent.capitalize(), "p": rng.choice(PROVIDERS)}
        files.append(
            {
                "path": f"mod{i}/" + path.format(**fmt),
                "summary": summary.format(**fmt)
                + f" (module {i} of project {project}, v{version})",
                "tags": tags,
                "symbols": [s.format(**fmt) for s in symbols],
            }
        )
    return files


def generate(memory: Path, projects: int, files: int, seed: int = 42) -> None:
    rng = random.Random(seed)
    if memory.exists():
        shutil.rmtree(memory)
    (memory / "projects").mkdir(parents=True)
    (memory / "projects.json").write_text(
        json.dumps({"projects": [{"id": f"proj-{i:04d}"} for i in range(projects)]})
    )
    for i in range(projects):
        pid = f"proj-{i:04d}"
        folder = memory / "projects" / pid
        folder.mkdir()
        cmap = {"projectId": pid, "summary": f"project {i}", "files": _files(rng, i, files)}
        (folder / "context_map.json").write_text(json.dumps(cmap))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_once(memory: Path, files: int, run: int = 1) -> dict[str, float]:
    for name in (
        "librarian.sqlite",
        "librarian.sqlite-wal",
        "librarian.sqlite-shm",
        "patterns.json",
        "global_index.json",
    ):
        (memory / name).unlink(missing_ok=True)
    lib = Librarian(memory, config=LibrarianConfig())
    t0 = time.perf_counter()
    report = lib.index()
    full = time.perf_counter() - t0
    rng = random.Random(7)
    pid = "proj-0500"
    cmap = {"projectId": pid, "files": _files(rng, 500, files, version=run)}
    (memory / "projects" / pid / "context_map.json").write_text(json.dumps(cmap))
    t0 = time.perf_counter()
    inc = lib.index()
    incremental = time.perf_counter() - t0
    assert inc.reread == [pid], inc.reread
    latencies = []
    for _ in range(25):
        for q in QUERIES:
            t0 = time.perf_counter()
            lib.search(q, limit=5)
            latencies.append((time.perf_counter() - t0) * 1000)
    lib.close()
    return {
        "patterns": report.patterns,
        "full_s": full,
        "incremental_s": incremental,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
    }


def semantic_latency(memory: Path) -> dict[str, float]:
    """Search latency of the ``semantic`` mode at this scale (needs the embed extra).

    Embedding 200k patterns with the numpy model takes ~7 ms each on this machine, so the
    stored embeddings are random unit vectors here: the latency does not depend on them.
    Every query is distinct (no query-vector cache hit); the query is embedded for real.
    """
    import numpy as np

    from jarvis_kernel.librarian.embed import DIMS, Embedder
    from jarvis_kernel.librarian.semantic import SemanticRanker

    lib = Librarian(memory, config=LibrarianConfig())
    lib.index()
    index = lib._index  # benchmark only: fill the embedding table directly
    rng = np.random.default_rng(1)
    with index.transaction():
        todo = index.unembedded()
        vecs = rng.standard_normal((len(todo), DIMS)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        index.put_embeddings([(key, v.tobytes()) for (key, _), v in zip(todo, vecs, strict=True)])
    ranker = SemanticRanker(Embedder.load(), lib.taxonomy.glossary)
    with index.transaction():
        ranker.embed_missing(index)  # the glossary's entries only: the patterns have theirs
    t0 = time.perf_counter()
    lib._semantic = ranker
    lib.search("warm up", mode="semantic")
    load_s = time.perf_counter() - t0
    latencies = []
    for i in range(5):
        for q in QUERIES:
            t0 = time.perf_counter()
            lib.search(f"{q} {ENTITIES[i]}", limit=5, mode="semantic")
            latencies.append((time.perf_counter() - t0) * 1000)
    lib.close()
    return {"load_s": load_s, "p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--semantic", action="store_true", help="semantic-mode latency only")
    args = parser.parse_args()
    if args.semantic:
        result = semantic_latency(OUT / "memory")
        print("semantic: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
        return
    memory = OUT / "memory"
    t0 = time.perf_counter()
    generate(memory, args.projects, args.files)
    print(f"generated {args.projects} x {args.files} in {time.perf_counter() - t0:.1f} s")
    results = []
    for run in range(args.runs):
        result = run_once(memory, args.files, run + 1)
        results.append(result)
        print(f"run {run + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k}={v:.4g}" for k, v in medians.items()))
    size = (memory / "patterns.json").stat().st_size
    print(f"patterns.json {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
