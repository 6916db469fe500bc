"""The newcomer's demo: a small swarm on the embedded default, fed a realistic mix of tasks.

`demo_config` gives five inline workers of different models and expertise; `demo_tasks`
a seeded stream of tasks like those of the sample projects in `.memory/`. ``python -m
jarvis_kernel run --demo`` runs them for about 20 seconds and shows the market at work.
"""

from __future__ import annotations

import random

from .config import Config, LivenessConfig, MarketConfig, WorkerConfig
from .protocol import Task

__all__ = ["demo_config", "demo_tasks"]

_WORKERS = [
    WorkerConfig(
        id="ada-pro",
        model="gemini:pro",
        capacity=2,
        expertise={"architecture": 0.9, "auth": 0.7, "database": 0.8, "node": 0.6},
    ),
    WorkerConfig(
        id="flash-ui",
        model="gemini:flash",
        capacity=2,
        expertise={"react": 0.9, "css": 0.8, "nextjs": 0.7},
    ),
    WorkerConfig(
        id="flash-api",
        model="gemini:flash",
        expertise={"node": 0.8, "database": 0.6, "auth": 0.5, "payments": 0.6},
    ),
    WorkerConfig(id="mini-qa", model="gpt:mini", expertise={"testing": 0.9, "ci": 0.7}),
    WorkerConfig(id="flash-3d", model="gemini:flash", expertise={"threejs": 0.9, "react": 0.5}),
]

# (description, skills, complexity, files, project)
_TEMPLATES = [
    (
        "Add NextAuth GitHub login",
        ["auth", "nextjs"],
        0.6,
        ["src/pages/api/auth/[...nextauth].ts"],
        "atelier-sam",
    ),
    (
        "Fix OAuthCallbackError on sign-in",
        ["auth"],
        0.5,
        ["src/pages/api/auth/[...nextauth].ts"],
        "atelier-sam",
    ),
    (
        "Stripe checkout webhook handler",
        ["payments", "node"],
        0.6,
        ["src/pages/api/stripe/webhook.ts"],
        "atelier-sam",
    ),
    (
        "Prisma migration for product variants",
        ["database"],
        0.5,
        ["prisma/schema.prisma"],
        "atelier-sam",
    ),
    (
        "Responsive product grid",
        ["react", "css"],
        0.3,
        ["src/components/ProductGrid.tsx"],
        "atelier-sam",
    ),
    ("Fix button padding on mobile", ["css"], 0.1, ["src/styles/button.css"], "atelier-sam"),
    ("Orbit controls for the hero scene", ["threejs"], 0.5, ["src/scene/Hero.tsx"], "portfolio-v1"),
    ("Lazy-load GLTF models", ["threejs", "react"], 0.4, ["src/scene/loader.ts"], "portfolio-v1"),
    ("Unit tests for the award rules", ["testing"], 0.3, ["tests/unit/test_auction.py"], "jarvis"),
    ("CI job for the Redis integration tests", ["ci", "testing"], 0.4, [".ci/run"], "jarvis"),
    (
        "Design the sharded event log",
        ["architecture", "database"],
        0.9,
        ["docs/events.md"],
        "jarvis",
    ),
    ("Rate-limit the public API", ["node", "architecture"], 0.7, ["src/api/limits.ts"], "jarvis"),
    ("Typo in README", [], 0.05, ["README.md"], "jarvis"),
    ("Dark mode toggle", ["react", "css"], 0.2, ["src/components/Theme.tsx"], "portfolio-v1"),
]


def demo_config(*, duration_scale: float = 1.0) -> Config:
    """Five inline `sim` workers on the in-memory bus."""
    workers = [
        WorkerConfig(
            id=w.id,
            model=w.model,
            capacity=w.capacity,
            expertise=w.expertise,
            runtime="inline",
            executor="sim",
            options={"base_s": 1.6 * duration_scale, "seed": i},
        )
        for i, w in enumerate(_WORKERS)
    ]
    return Config(
        workers=workers,
        market=MarketConfig(window_s=0.25),
        liveness=LivenessConfig(heartbeat_s=0.5, dead_after_s=2.0),
    )


def demo_tasks(count: int, *, seed: int = 7) -> list[Task]:
    """`count` tasks drawn (seeded) from realistic templates, with a few priorities."""
    rng = random.Random(seed)
    tasks = []
    for i in range(count):
        text, skills, complexity, files, project = rng.choice(_TEMPLATES)
        tasks.append(
            Task(
                task_id=f"demo-{i:03d}",
                description=text,
                required_skills=skills,
                complexity=complexity,
                files=files,
                project_id=project,
                priority=2 if "Fix" in text else 0,
            )
        )
    return tasks
