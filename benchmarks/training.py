"""Training throughput: N trials through kiln-train (one process per trial, as the Indexed Job's pods
run them, parallelism 1 and 2, then the selection step) against the same trials in a plain Python loop.

    python benchmarks/training.py [--trials 8] [--store s3|file] [--estimator RandomForestClassifier]

The data is scikit-learn's breast_cancer (569 rows, 30 features). With --store s3 (the default) a moto
S3 server runs on 127.0.0.1 and every read and write goes through it, as in the cluster. The loop does
what a notebook would: read the csv once, then split, fit and score each trial in one process.
Prints wall times, trials per minute, CPU seconds per trial (user + system, which a busy shared
machine distorts far less than wall time) and the per-trial overhead of the process-per-trial design.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KILN_TRAIN = str(Path(sys.executable).with_name("kiln-train"))
# This checkout's runtime, for the loop's imports and the kiln-train subprocesses alike.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving_image"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [sys.path[0], os.environ.get("PYTHONPATH")]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_server import moto_server  # noqa: E402  (the test suite's S3 server, shared)
SPACE = {"n_estimators": [50, 100, 200], "max_depth": [4, 8, 16], "min_samples_leaf": [1, 2, 4]}


def store_env(url: str | None) -> dict:
    return {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench"} if url else {}


def write_data(store: str, tmp: Path, env: dict) -> tuple[str, dict, bytes]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    frame["label"] = bunch.target.to_numpy()
    data = frame.to_csv(index=False).encode()
    schema = {"columns": [{"name": c, "type": "number"} for c in frame.columns[:-1]]
              + [{"name": "label", "type": "integer"}]}
    if store == "s3":
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        client.put_object(Bucket="bench", Key="data/bc.csv", Body=data)
        return "s3://bench", {"source": {"uri": "s3://bench/data/bc.csv"}, "target": "label", "schema": schema}, data
    (tmp / "bc.csv").write_bytes(data)
    return f"file://{tmp}/out", {"source": {"uri": f"file://{tmp}/bc.csv"}, "target": "label",
                                 "schema": schema}, data


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def kiln_run(cfg: dict, tmp: Path, env: dict, parallelism: int, trials: int) -> tuple[float, float, float]:
    path = tmp / f"cfg-{cfg['output'].rsplit('/', 1)[-1]}.json"
    path.write_text(json.dumps(cfg))
    base = {**os.environ, **env, "KILN_TRAIN_CONFIG_FILE": str(path)}
    started, cpu_started = time.perf_counter(), _children_cpu()
    pending = list(range(trials))
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < parallelism:
            i = pending.pop(0)
            running.append(subprocess.Popen([KILN_TRAIN, "trial"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            env={**base, "JOB_COMPLETION_INDEX": str(i),
                                                 "KILN_TERMINATION_LOG": str(tmp / f"t{i}.log")}))
        done = running.pop(0)
        if done.wait() != 0:
            raise SystemExit(f"a trial failed: {done.stderr.read().decode()[-1000:]}")
    trials_done, trials_cpu = time.perf_counter(), _children_cpu() - cpu_started
    sel = subprocess.run([KILN_TRAIN, "select"], capture_output=True,
                         env={**base, "KILN_TERMINATION_LOG": str(tmp / "select.log")})
    if sel.returncode != 0:
        raise SystemExit(f"select failed: {sel.stderr.decode()[-1000:]}")
    return trials_done - started, time.perf_counter() - trials_done, trials_cpu, _fit_seconds(cfg["output"], env, trials)


def _fit_seconds(output: str, env: dict, trials: int) -> float:
    """Mean time inside the trials spent fitting and scoring (result.json's trainSeconds)."""
    from kiln_runtime import store

    os.environ.update(env)  # the store reads its S3 settings from the environment, as in a pod
    return sum(json.loads(store.read_bytes(f"{output}/trials/{i}/result.json"))["trainSeconds"]
               for i in range(trials)) / trials


def plain_loop(data: bytes, cfg: dict, trials: int) -> tuple[float, float]:
    import io

    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    from kiln_runtime.train import search, spec

    pipe = spec.parse_pipeline(cfg["pipeline"])
    started, cpu_started = time.perf_counter(), time.process_time()
    frame = pd.read_csv(io.BytesIO(data))
    X, y = frame.drop(columns="label"), frame["label"].to_numpy()
    for i in range(trials):
        params = search.trial_params(pipe, i)
        X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=pipe.test_fraction,
                                                            random_state=pipe.seed, stratify=y)
        model = RandomForestClassifier(random_state=pipe.seed, **params).fit(X_train, y_train)
        accuracy_score(y_test, model.predict(X_test))
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--store", choices=("s3", "file"), default="s3")
    args = ap.parse_args()
    with (moto_server() if args.store == "s3" else contextlib.nullcontext()) as url, \
            tempfile.TemporaryDirectory() as tmpdir:
        env = store_env(url)
        tmp = Path(tmpdir)
        prefix, dataset, data = write_data(args.store, tmp, env)
        pipeline = {"estimator": {"class": "RandomForestClassifier"},
                    "search": {"strategy": "random", "trials": args.trials, "space": SPACE},
                    "evaluation": {"testFraction": 0.25, "seed": 7}}
        loop, loop_cpu = plain_loop(data, {"pipeline": pipeline}, args.trials)
        results = {}
        for parallelism in (1, 2):
            cfg = {"dataset": dataset, "pipeline": pipeline, "output": f"{prefix}/runs/p{parallelism}"}
            results[parallelism] = kiln_run(cfg, tmp, env, parallelism, args.trials)
    n = args.trials
    print(f"training benchmark: {n} RandomForestClassifier trials on breast_cancer (569x30), store={args.store}, "
          f"{os.cpu_count()} CPUs")
    load = os.getloadavg()[0]
    print(f"  load average at the end: {load:.1f} (on {os.cpu_count()} CPUs; wall times assume the CPUs are free)")
    print(f"  plain Python loop (one process)   {loop:7.2f} s wall  {60 * n / loop:6.1f} trials/min  "
          f"{loop_cpu / n:5.2f} CPU s/trial")
    for p, (trials_s, select_s, cpu, _) in results.items():
        total = trials_s + select_s
        print(f"  kiln-train, parallelism {p}        {trials_s:7.2f} s wall  {60 * n / trials_s:6.1f} trials/min  "
              f"{cpu / n:5.2f} CPU s/trial   + select {select_s:5.2f} s = run {total:6.2f} s "
              f"({total / loop:4.1f}x the loop)")
    fit = results[1][3]
    print(f"  per trial at parallelism 1: {results[1][0] / n:5.2f} s wall, of which fit + score {fit:5.2f} s "
          f"({100 * fit * n / results[1][0]:4.1f}%); the rest is process start, imports and store I/O")
    overhead = (results[1][2] - loop_cpu) / n
    print(f"  per-trial CPU overhead of a process per trial (interpreter, imports, store I/O): {overhead:5.2f} s")
    print(f"  wall-time speed-up from parallelism 2: {results[1][0] / results[2][0]:4.2f}x")


if __name__ == "__main__":
    main()
