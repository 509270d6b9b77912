"""Semantic profile: time to embed a prompt and find its cell, resident memory, package data.

    python3 benchmarks/semantic_profile.py

Prompts: docstrings of the Python standard library (public text, not an evaluation table) joined
and cut to 2,000 characters, and a short one; each timed once after a warm-up pass (the word cache
warm, as on a serving process), in one process. Memory: resident set growth from loading the table
(NumPy already imported, as it is in the router). Writes benchmarks/results/semantic_profile.json.
"""

from __future__ import annotations

import ast
import json
import sysconfig
import time
from pathlib import Path

import numpy as np

from adaptive_router._bench import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "semantic_profile.json"


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 1e6


def public_texts(chars: int, count: int) -> list[str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(lib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        docs += [d for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and (d := ast.get_docstring(n))]
    joined = " ".join(" ".join(d.split()) for d in docs)
    step = max((len(joined) - chars) // count, 1)
    return [joined[i * step : i * step + chars] for i in range(count)]


def timed(fn, texts: list[str]) -> np.ndarray:  # type: ignore[no-untyped-def]
    out = np.empty(len(texts))
    for i, text in enumerate(texts):
        started = time.perf_counter()
        fn(text)
        out[i] = time.perf_counter() - started
    return out * 1e6


def main() -> int:
    before = rss_mb()
    from adaptive_router.core import DEFAULT_TABLE, SemanticCells, StaticEmbedder

    embedder = StaticEmbedder.load()
    cells = SemanticCells(embedder.dims, 3, embedder.centre)
    loaded = rss_mb()
    result: dict[str, object] = {
        "benchmark": "semantic_profile",
        "machine": machine_info(("numpy",)),
        "package_data_bytes": DEFAULT_TABLE.stat().st_size,
        "rss_growth_on_load_mb": round(loaded - before, 1),
    }
    for label, chars in (("2000_chars", 2000), ("200_chars", 200)):
        texts = public_texts(chars, 1000)
        for text in texts:  # warm: the word cache as a serving process has it
            cells.cell(embedder.embed(text))
        us = timed(lambda t: cells.cell(embedder.embed(t)), texts)
        result[label] = {
            "prompts": len(texts),
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p90_us": round(float(np.percentile(us, 90)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
        }
    result["rss_growth_after_use_mb"] = round(rss_mb() - before, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for label in ("2000_chars", "200_chars"):
        r = result[label]
        assert isinstance(r, dict)
        print(f"{label}: embed + cell p50 {r['p50_us']} us, p90 {r['p90_us']} us, p99 {r['p99_us']} us")
    print(
        f"package data {result['package_data_bytes'] / 1e6:.1f} MB; resident memory +"
        f"{result['rss_growth_on_load_mb']} MB on load, +{result['rss_growth_after_use_mb']} MB after use"
    )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
