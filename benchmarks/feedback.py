#!/usr/bin/env python3
"""Feedback join rate of kiln-monitor on one core (issue "The loop learns", item 4).

    python benchmarks/feedback.py                 # 200,000 served rows, feedback in batches of 1,000
    python benchmarks/feedback.py --rows 50000 --batch 100

What is timed is FeedbackStore.handle, the whole of POST /feedback minus the HTTP server: parsing the
JSON body, validating each item, looking its id up, and gathering the joined rows for live quality
and for the labelled-rows log (buffered; the upload runs on the writer thread and is not timed).
The served rows are fed in first through the same path the receiver uses (decoded hand-off frames of
256 one-row requests, 20 numeric features). The process is pinned to one core. Target: >= 50,000
labels/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "serving_image"))

from kiln_runtime.handoff import decode_frame, encode_frame  # noqa: E402
from kiln_runtime.monitor.feedback import FeedbackStore  # noqa: E402
from kiln_runtime.monitor.payload_log import ParquetLog  # noqa: E402
from kiln_runtime.monitor.quality import Quality  # noqa: E402
from kiln_runtime.monitor.receiver import detach  # noqa: E402

TARGET = 50_000
FEATURES = [f"f{i}" for i in range(20)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000, help="served rows (one per request) to label")
    ap.add_argument("--batch", type=int, default=1000, help="feedback items per POST /feedback body")
    ap.add_argument("--core", type=int, default=0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    rng = np.random.default_rng(0)
    token = "beefcafe"
    ids = [f"{token}-{i:x}" for i in range(args.rows)]
    # A ParquetLog that is never started: rows gather in its buffer, as they would between flushes.
    labelled = ParquetLog("file:///dev/null/never", "m", "1", token, flush_rows=args.rows + 1, flush_seconds=3600,
                          buffer_rows=args.rows + 1)
    store = FeedbackStore(Quality(1000), ttl_seconds=3600, max_rows=args.rows, labelled=labelled, wait_seconds=0)
    now = time.time()
    t0 = time.perf_counter()
    for k in range(0, args.rows, 256):
        chunk = ids[k:k + 256]
        x = rng.normal(size=(len(chunk), len(FEATURES)))
        frame = decode_frame(encode_frame("m", "1", FEATURES, x, (x[:, 0] > 0).astype(float), None,
                                          [[rid, 1, now] for rid in chunk]))
        store.add(detach(frame))
    ingest = time.perf_counter() - t0
    labels = rng.integers(0, 2, args.rows).tolist()
    bodies = [orjson.dumps({"feedback": [{"id": rid, "labels": [lab]} for rid, lab in
                                         zip(ids[k:k + args.batch], labels[k:k + args.batch])]})
              for k in range(0, args.rows, args.batch)]
    t0 = time.perf_counter()
    joined = 0
    for body in bodies:
        status, answer = store.handle(body)
        assert status == 200, answer
        joined += answer["joined"]
    seconds = time.perf_counter() - t0
    rate = joined / seconds
    print(f"# feedback join on core {args.core}: {args.rows} served rows held (remembered at "
          f"{args.rows / ingest:,.0f} rows/s), feedback in batches of {args.batch}")
    print(f"joined {joined:,} labels in {seconds:.3f} s: {rate:,.0f} labels/s "
          f"({seconds / joined * 1e6:.2f} us per label); labelled rows buffered {labelled.buffered:,}")
    snap = store.quality.snapshot()
    print(f"live quality over the last {snap['rows']} rows: {snap['metrics']}")
    print(f"[{'PASS' if rate >= TARGET else 'MISS'}] >= {TARGET:,} labels/s on one core: {rate:,.0f}")
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
