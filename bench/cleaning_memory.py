"""Peak memory of collect + clean on a large JSONL: streamed in batches versus the whole file as one batch.

Builds a JSONL of about `--mb` megabytes from the MedQuAD sample in ../shared/data (each copy of a row gets a unique
marker so deduplication keeps it), then runs ftcore's collect and clean stages twice in fresh processes on the same
file and steps: with `--batch-rows` rows per batch (ftflow's default streaming), and with one batch holding every
row (what loading the file into a DataFrame amounts to). Prints each run's peak resident memory and the ratio.

    python bench/cleaning_memory.py [--mb 256] [--batch-rows 10000]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDQUAD = REPO.parent / "shared" / "data" / "medquad_sample_every16.jsonl"
STEPS = [{"step": "strip_markup"}, {"step": "normalize_whitespace"}, {"step": "redact_pii"}, {"step": "drop_empty"},
         {"step": "filter_length", "columns": ["completion"], "min_chars": 20}, {"step": "drop_duplicates"}]


def build_corpus(path: Path, megabytes: int) -> int:
    rows = [json.loads(line) for line in MEDQUAD.open(encoding="utf-8")]
    written = n = 0
    with path.open("w", encoding="utf-8") as f:
        while written < megabytes * 2**20:
            row = rows[n % len(rows)]
            line = json.dumps({"prompt": f"[{n}] {row['question']}", "completion": row["answer"]}) + "\n"
            f.write(line)
            written += len(line.encode())
            n += 1
    return n


def measure(corpus: Path, batch_rows: int) -> dict:
    """Run collect + clean in a child process; its own peak RSS comes back with its timings."""
    child = f"""
import json, resource, sys, time
from pathlib import Path
from ftcore.data.config import BalanceConfig, CleanConfig, DataConfig
from ftcore.data.clean import CleanJob, clean_balance_stage
from ftcore.data.collect import CollectJob, collect_stage
out = Path(sys.argv[1])
data = DataConfig(sources=[{{"type": "jsonl", "path": {str(corpus)!r}}}])
started = time.perf_counter()
collected = collect_stage(CollectJob(data=data, sources={{}}), out / "collected", {batch_rows})
job = CleanJob(collected=collected, data=data, clean=CleanConfig(steps={STEPS!r}), balance=BalanceConfig())
cleaned = clean_balance_stage(job, out / "clean", {batch_rows})
print(json.dumps({{"seconds": time.perf_counter() - started, "rows_in": cleaned.metrics["rows_in"],
                  "rows_kept": cleaned.metrics["rows_kept"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-mem-") as out:
        done = subprocess.run([sys.executable, "-c", child, out], capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the generated JSONL in MiB")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args()
    if not MEDQUAD.is_file():
        sys.exit(f"needs {MEDQUAD} (../shared/data beside the repository)")
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-corpus-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        rows = build_corpus(corpus, args.mb)
        print(f"corpus: {corpus.stat().st_size / 2**20:.0f} MiB, {rows} rows; steps: "
              f"{', '.join(s['step'] for s in STEPS)}; {platform.machine()}, Python {platform.python_version()}")
        streamed = measure(corpus, args.batch_rows)
        whole = measure(corpus, rows + 1)
    for name, r in ((f"batches of {args.batch_rows} rows", streamed), ("one batch (whole file)", whole)):
        print(f"{name:28s} peak RSS {r['peak_rss_mib']:7.0f} MiB  {r['seconds']:6.1f} s  "
              f"{r['rows_in']:.0f} rows in, {r['rows_kept']:.0f} kept")
    print(f"peak memory ratio streamed / whole: {streamed['peak_rss_mib'] / whole['peak_rss_mib']:.2f}")


if __name__ == "__main__":
    main()
