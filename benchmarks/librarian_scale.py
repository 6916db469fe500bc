"""Librarian at scale: seeded 1,000 projects x 200 files.

Records the full index time (no index, no patterns.json), an incremental run after one
project's map changed, and search latency p50/p99 over seeded queries (20 queries x 25, as
agents repeat themselves; and 100 distinct ones, no cache hit), in one search mode. For the
dense modes, also how much of the exact top 20 the candidate pass keeps (agree@20), and
(``--table``) how long distilling the word table takes.

``--diverse``: each file's summary also gets two words drawn (seeded) from the model's
vocabulary, so that pattern vectors are all distinct. Without it the generated patterns
collapse to a few hundred distinct vectors (numbers are left out of them), which flatters
anything that exploits duplicates; a dense search must be measured on both.

    .venv/bin/python benchmarks/librarian_scale.py [--projects 1000] [--files 200] [--runs 3]
        [--mode expanded|static|semantic|...] [--diverse] [--table]

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
from jarvis_kernel.librarian.search import Mode
from jarvis_kernel.librarian.semantic import QueryModel, SemanticRanker
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


def _files(
    rng: random.Random,
    project: int,
    n: int,
    version: int = 0,
    extra: tuple[random.Random, list[str]] | None = None,
) -> list[dict[str, object]]:
    """`n` seeded files; with `extra` (its own generator, a vocabulary) two more words
    in each summary (`--diverse`), the rest drawn exactly as without it."""
    files = []
    for i in range(n):
        path, summary, tags, symbols = rng.choice(KINDS)
        ent = rng.choice(ENTITIES)
        fmt = {"e": ent, "E": ent.capitalize(), "p": rng.choice(PROVIDERS)}
        more = " ".join(extra[0].sample(extra[1], 2)) + " " if extra else ""
        files.append(
            {
                "path": f"mod{i}/" + path.format(**fmt),
                "summary": summary.format(**fmt)
                + f" ({more}module {i} of project {project}, v{version})",
                "tags": tags,
                "symbols": [s.format(**fmt) for s in symbols],
            }
        )
    return files


def vocabulary() -> list[str]:
    """Words of the model's own vocabulary (4 letters or more): each has a vector in the
    word table, so drawing them costs no model run at index time."""
    from jarvis_kernel.librarian.embed import Embedder
    from jarvis_kernel.librarian.static import _vocabulary

    whole, _ = _vocabulary(Embedder.load().tokenizer)
    return [w for w in whole if len(w) >= 4 and w.isalpha()]


def generate(
    memory: Path, projects: int, files: int, seed: int = 42, diverse: list[str] | None = None
) -> None:
    rng = random.Random(seed)
    extra = (random.Random(seed + 1), diverse) if diverse else None
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
        cmap = {
            "projectId": pid,
            "summary": f"project {i}",
            "files": _files(rng, i, files, extra=extra),
        }
        (folder / "context_map.json").write_text(json.dumps(cmap))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latencies(lib: Librarian, queries: list[str], mode: Mode) -> list[float]:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        lib.search(q, limit=5, mode=mode)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _distinct_queries() -> list[str]:
    """100 queries never asked before in the run (no query-vector cache hit)."""
    return [f"{q} {ENTITIES[i]}" for i in range(5) for q in QUERIES]


def dense_agreement(lib: Librarian, queries: list[str], mode: Mode) -> float:
    """Share of the dense list's top 20 (low-dimensional candidates, then exact) that score
    at least the exact 20th best over every pattern (glossary step included). By score, not
    identity: the generated patterns tie by the thousand."""
    import numpy as np

    ranker = lib._semantic  # benchmark only: look inside
    assert isinstance(ranker, SemanticRanker)
    model: QueryModel = "model" if mode == "semantic" else "static"
    slots = ranker._slots
    agree = []
    for q in queries:
        vec = ranker.query_vector(q, model)
        exact = slots.full[: slots.used] @ vec
        for members, value in ranker._boost(vec, model, slots):
            exact[members] += value
        exact[slots.code[: slots.used] < 0] = -np.inf
        threshold = float(np.sort(exact)[-20]) - 1e-5
        got = ranker.rank(lib._index, q, 20, (None, False), model)
        agree.append(sum(row.rank >= threshold for row in got) / 20)
    return statistics.mean(agree)


def run_once(
    memory: Path,
    files: int,
    run: int = 1,
    mode: Mode = "expanded",
    diverse: list[str] | None = None,
) -> dict[str, float]:
    for name in (
        "librarian.sqlite",
        "librarian.sqlite-wal",
        "librarian.sqlite-shm",
        "patterns.json",
        "global_index.json",
    ):
        (memory / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    lib = Librarian(memory, config=LibrarianConfig(search_mode=mode))
    report = lib.index()
    full = time.perf_counter() - t0
    rng = random.Random(7)
    pid = "proj-0500"
    extra = (random.Random(run), diverse) if diverse else None
    cmap = {"projectId": pid, "files": _files(rng, 500, files, version=run, extra=extra)}
    (memory / "projects" / pid / "context_map.json").write_text(json.dumps(cmap))
    t0 = time.perf_counter()
    inc = lib.index()
    incremental = time.perf_counter() - t0
    assert inc.reread == [pid], inc.reread
    # the first search of a process loads what searches keep in memory (the keyword
    # list's rows): timed on its own, so that the figures below are the steady state
    first = _latencies(lib, ["first search of the process"], mode)[0]
    latencies = _latencies(lib, QUERIES * 25, mode)
    distinct = _latencies(lib, _distinct_queries(), mode)
    result = {
        "patterns": report.patterns,
        "full_s": full,
        "vectors_s": report.embed_s,
        "incremental_s": incremental,
        "first_search_ms": first,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "distinct_p50_ms": _pct(distinct, 0.5),
        "distinct_p99_ms": _pct(distinct, 0.99),
    }
    if mode in ("static", "semantic") and isinstance(lib._semantic, SemanticRanker):
        result["agree@20"] = dense_agreement(lib, _distinct_queries()[:40], mode)
    lib.close()
    return result


def table_build() -> float:
    """Seconds to distil the word table from the model (into a throwaway file)."""
    import tempfile

    from jarvis_kernel.librarian.embed import Embedder
    from jarvis_kernel.librarian.static import WordTable

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        WordTable.open(Path(tmp) / "words.npz", Embedder.load())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--mode", default="expanded", choices=["keyword", "expanded", "fused", "semantic", "static"]
    )
    parser.add_argument(
        "--diverse", action="store_true", help="two vocabulary words more in each summary"
    )
    parser.add_argument("--table", action="store_true", help="time building the word table")
    args = parser.parse_args()
    if args.table:
        print(f"word table built in {table_build():.1f} s")
        return
    memory = OUT / ("memory-diverse" if args.diverse else "memory")
    diverse = vocabulary() if args.diverse else None
    t0 = time.perf_counter()
    generate(memory, args.projects, args.files, diverse=diverse)
    print(f"generated {args.projects} x {args.files} in {time.perf_counter() - t0:.1f} s")
    results = []
    for run in range(args.runs):
        result = run_once(memory, args.files, run + 1, args.mode, diverse)
        results.append(result)
        print(f"run {run + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.items()))
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("median: " + ", ".join(f"{k}={v:.4g}" for k, v in medians.items()))
    size = (memory / "patterns.json").stat().st_size
    print(f"patterns.json {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
