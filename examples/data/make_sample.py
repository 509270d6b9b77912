"""Rebuild the small data sample in this folder from the full shared data folder.

    python3 examples/data/make_sample.py ../shared/data

Only the Apache-2.0 parts are sampled: the ``routellm`` source of outcomes/ (lm-sys/RouteLLM)
and latency/llmperf_requests.csv (ray-project/llmperf-leaderboard). RouterBench rows carry no
licence and are never copied. The sample is chosen with a fixed seed, so it is reproducible.
"""

from __future__ import annotations

import csv
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_DATASET = {"mmlu": 300, "gsm8k": 100, "mt": 40}  # prompts per dataset family
LATENCY_PER_GROUP = 110  # requests per (provider, size) group: replay needs 100 successes


def sample_outcomes(full: Path) -> set[str]:
    rows = [r for r in csv.DictReader((full / "outcomes/outcomes.csv").open()) if r["source"] == "routellm"]
    by_family: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        family = row["dataset"].split("-")[0]
        if row["prompt_id"] not in by_family[family]:
            by_family[family].append(row["prompt_id"])
    rng = random.Random(0)
    keep = set()
    for family, ids in by_family.items():
        keep.update(rng.sample(ids, min(len(ids), PER_DATASET[family])))
    out = HERE / "outcomes"
    out.mkdir(exist_ok=True)
    with (out / "outcomes.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["prompt_id"] in keep)
    with (full / "outcomes/prompts.jsonl").open() as source, (out / "prompts.jsonl").open("w") as target:
        for line in source:
            record = json.loads(line)
            if record["source"] == "routellm" and record["prompt_id"] in keep:
                target.write(line)
    return keep


def sample_latency(full: Path) -> None:
    rows = list(csv.DictReader((full / "latency/llmperf_requests.csv").open()))
    seen: dict[tuple[str, str], int] = defaultdict(int)
    (HERE / "latency").mkdir(exist_ok=True)
    with (HERE / "latency/llmperf_requests.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            group = (row["provider"], row["llama2_size"])
            if seen[group] < LATENCY_PER_GROUP:
                seen[group] += 1
                writer.writerow(row)


if __name__ == "__main__":
    full_data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    print(f"{len(sample_outcomes(full_data))} prompts sampled")
    sample_latency(full_data)
