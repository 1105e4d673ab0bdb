"""Training throughput and successive halving, through kiln-train exactly as the trials' Job runs it.

    python benchmarks/training.py [--trials 8 100] [--store s3|file] [--skip-per-process-100]
                                  [--no-halving] [--halving-rows 4000]

Part 1, throughput (RandomForestClassifier on scikit-learn's breast_cancer, 569 rows x 30 features;
testFraction 0.25 and the default validationFraction 0.2, so every trial fits on 340 rows and is scored
on 86 validation rows; the 143 test rows are scored by the selection step only). For each trial count
(8 and 100 by default) the same trials, drawn by strategy random from a 108-combination space so 100
trials are distinct, run four ways:
  plain Python loop          one process: read the csv once, split as the trials do (test split, then
                             validation split), then fit and score (accuracy) each trial's parameters
                             (search.trial_params), as a notebook would
  one process per trial      `kiln-train trial` per trial index (the Indexed Job before sharding),
                             P = 1 and 2 at a time, then `kiln-train select`
  sharded                    P concurrent `kiln-train trial --shards P` processes with
                             JOB_COMPLETION_INDEX = 0..P-1 (how the operator runs trials now: P pods),
                             P = 1 and 2, then `kiln-train select`
Each row prints the trials' wall time, trials/min, CPU seconds per trial (user + system, which a busy
shared machine distorts far less than wall) and the selection step's wall. --skip-per-process-100
leaves out the one-process-per-trial rows for 100 or more trials (about 5 minutes on 2 CPUs).

Target (100 trials, sharded): the run's wall (P shards, then select) is at most
    1.3 x (plain loop / P) + one process start and import + the selection step
for P = 1 and 2. The loop is the faster of two runs (the stricter bound); "one process start and
import" is measured in the same run: the wall time of a fresh interpreter importing every module a
shard loads (recorded from a real 1-trial shard's sys.modules; a shard with no trials returns before it
imports scikit-learn's estimators or reads data, so it would understate this), median of 3; the
selection step is that run's own select wall. Beside each verdict, the CPU view (the shards' CPU
seconds less P process starts, against the loop's), which a busy machine distorts far less; when the
fits at P=2 ran more than 1.25x slower than at P=1 the CPUs were not free and the line says so. Then
where a sharded trial's time goes: shard 0 of 1 replayed inside this process with timers around data
preparation, fitting, scoring and the stores.

Part 2, successive halving (RandomForestClassifier on a synthetic make_classification table, 4000 rows
x 20 features, random_state=0: breast_cancer's 340 fit rows are too few for subsampled rounds) on a
64-candidate space: strategy halving (factor 3, resource samples, budgets left to scikit-learn) in one
`kiln-train trial --shards 1`, then select, against the full grid (64 ordinary trials in one shard, then
select). Targets: halving's selected model scores within 1% (relative) of the full grid's on the test
split (select's heldOut accuracy; both runs have the same test rows), while fitting at most a third of
the full grid's rows x n_estimators. Fitted rows are counted over every fit: each halving round fits
int(n_resources / (fit + validation rows) x fit rows) rows per candidate (scikit-learn's subsampling of
the PredefinedSplit), the finalists then train as full trials; the full grid fits all its fit rows 64
times. The selection step's one refit of the winner is the same in both and left out. Both walls are
printed too (one process each).

With --store s3 (the default) a moto S3 server runs on 127.0.0.1 and every read and write goes through
it, as in the cluster. Every printed figure names the data it was measured on. The first line names the
date and commit (and any uncommitted change to the runtime or this script), the last lines each
target's PASS or MISS. The default run does everything, about 9 minutes on 2 free CPUs.

"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

KILN_TRAIN = str(Path(sys.executable).with_name("kiln-train"))
ROOT = Path(__file__).resolve().parents[1]
# This checkout's runtime, for the loop's imports and the kiln-train subprocesses alike.
sys.path.insert(0, str(ROOT / "serving_image"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [sys.path[0], os.environ.get("PYTHONPATH")]))
sys.path.insert(1, str(ROOT / "tests"))
from s3_server import moto_server  # noqa: E402  (the test suite's S3 server, shared)

# 3 x 3 x 4 x 3 = 108 combinations: 100 random trials are 100 distinct forests.
SPACE = {"n_estimators": [50, 100, 200], "max_depth": [4, 8, 16], "min_samples_leaf": [1, 2, 4, 8],
         "max_features": ["sqrt", "log2", 0.5]}
# 4 x 4 x 2 x 2 = 64 candidates for the halving comparison.
HALVING_SPACE = {"n_estimators": [50, 100, 200, 400], "max_depth": [4, 8, 16, None], "min_samples_leaf": [1, 4],
                 "max_features": ["sqrt", 0.5]}
EVALUATION = {"testFraction": 0.25, "seed": 7}
BOUND_FACTOR = 1.3
BC = "breast_cancer (569 rows x 30 features)"


def store_env(url: str | None) -> dict:
    return {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench"} if url else {}


class Store:
    """Where the benchmark's datasets and runs live: the moto bucket, or a temporary directory."""

    def __init__(self, kind: str, tmp: Path, env: dict):
        self.kind, self.tmp, self.env = kind, tmp, env
        if kind == "s3":
            import boto3

            self.client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                       aws_access_key_id="bench", aws_secret_access_key="bench")
            self.client.create_bucket(Bucket="bench")
            self.prefix = "s3://bench"
        else:
            self.prefix = f"file://{tmp}/out"

    def dataset(self, name: str, frame) -> tuple[dict, bytes]:
        """Stores `frame` (features, then an integer `label`) as csv; (the Dataset spec, the csv bytes)."""
        data = frame.to_csv(index=False).encode()
        schema = {"columns": [{"name": c, "type": "number"} for c in frame.columns[:-1]]
                  + [{"name": "label", "type": "integer"}]}
        if self.kind == "s3":
            self.client.put_object(Bucket="bench", Key=f"data/{name}.csv", Body=data)
            uri = f"s3://bench/data/{name}.csv"
        else:
            (self.tmp / f"{name}.csv").write_bytes(data)
            uri = f"file://{self.tmp}/{name}.csv"
        return {"source": {"uri": uri}, "target": "label", "schema": schema}, data


def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = [f"f{i}" for i in range(frame.shape[1])]
    frame["label"] = bunch.target.to_numpy()
    return frame


def synthetic(rows: int):
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=20, n_informative=8, n_redundant=4, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    frame["label"] = y
    return frame


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _check(proc: subprocess.Popen | subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, bytes) else proc.stderr.read()
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {err.decode()[-1500:]}")


def _summary(stdout: bytes) -> dict:
    """kiln-train's summary, whole: the last line of its output (the termination file may be cut)."""
    return json.loads(stdout.decode().strip().splitlines()[-1])


def run_kiln(cfg: dict, tmp: Path, env: dict, mode: str, parallelism: int, trials: int) -> dict:
    """Trials as the Job's pods run them, P at a time, then the selection step; wall and CPU of each."""
    name = cfg["output"].rsplit("/", 1)[-1]
    path = tmp / f"cfg-{name}.json"
    path.write_text(json.dumps(cfg))
    base = {**os.environ, **env, "KILN_TRAIN_CONFIG_FILE": str(path)}
    if mode == "sharded":
        commands = [([KILN_TRAIN, "trial", "--shards", str(parallelism)], s) for s in range(parallelism)]
    else:
        commands = [([KILN_TRAIN, "trial"], i) for i in range(trials)]
    started, cpu_started = time.perf_counter(), _children_cpu()
    running: list[subprocess.Popen] = []
    summaries = []
    while commands or running:
        while commands and len(running) < parallelism:
            argv, index = commands.pop(0)
            running.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            env={**base, "JOB_COMPLETION_INDEX": str(index),
                                                 "KILN_TERMINATION_LOG": str(tmp / f"{name}-{index}.log")}))
        done = running.pop(0)
        out, err = done.communicate()
        if done.returncode != 0:
            raise SystemExit(f"{mode} trial process failed: {err.decode()[-1500:]}")
        summaries.append(_summary(out))
    trials_s, trials_cpu = time.perf_counter() - started, _children_cpu() - cpu_started
    sel = subprocess.run([KILN_TRAIN, "select"], capture_output=True,
                         env={**base, "KILN_TERMINATION_LOG": str(tmp / f"{name}-select.log")})
    _check(sel, "select")
    select_s = time.perf_counter() - started - trials_s
    return {"trials_s": trials_s, "select_s": select_s, "cpu": trials_cpu, "trial_summaries": summaries,
            "select": _summary(sel.stdout), "output": cfg["output"]}


def read_json(uri: str, env: dict):
    from kiln_runtime import store

    os.environ.update(env)  # the store reads its S3 settings from the environment, as in a pod
    return json.loads(store.read_bytes(uri))


def results_of(output: str, env: dict, trials) -> list[dict]:
    return [read_json(f"{output}/trials/{i}/result.json", env) for i in trials]


def shard_modules(cfg: dict, tmp: Path, env: dict) -> list[str]:
    """Every module a real shard (one trial) has loaded when it ends: what a shard process imports."""
    path = tmp / "cfg-modules.json"
    path.write_text(json.dumps(cfg))
    code = ("import json, sys\nfrom kiln_runtime.train import cli\nrc = cli.main(['trial', '--shards', '1'])\n"
            "print('MODULES ' + json.dumps(sorted(m for m in sys.modules if m != '__main__')))\nsys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env={**os.environ, **env, "KILN_TRAIN_CONFIG_FILE": str(path), "JOB_COMPLETION_INDEX": "0",
                               "KILN_TERMINATION_LOG": str(tmp / "modules.log")})
    _check(proc, "the module-recording shard")
    line = next(li for li in proc.stdout.decode().splitlines() if li.startswith("MODULES "))
    return json.loads(line.removeprefix("MODULES "))


def start_and_import(modules: list[str], repeats: int = 3) -> tuple[float, list[float], int, float]:
    """(median wall, all walls, modules that failed to import by name, mean CPU s): a fresh interpreter
    importing `modules`."""
    code = ("import importlib, json, sys\nfailed = 0\nfor m in json.loads(sys.argv[1]):\n"
            "    try:\n        importlib.import_module(m)\n    except Exception:\n        failed += 1\n"
            "print(failed)")
    runs, failed, cpu_started = [], 0, _children_cpu()
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(modules)], capture_output=True)
        runs.append(time.perf_counter() - started)
        _check(proc, "the import timing")
        failed = int(proc.stdout.decode().strip().splitlines()[-1])
    return statistics.median(runs), runs, failed, (_children_cpu() - cpu_started) / repeats


def plain_loop(data: bytes, pipeline: dict) -> dict:
    """What a notebook does: read the csv once, split as the trials do, fit and score each trial."""
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split

    from kiln_runtime.train import search, spec

    pipe = spec.parse_pipeline(pipeline)
    trials = search.planned_trials(pipe)
    started, cpu_started = time.perf_counter(), time.process_time()
    frame = pd.read_csv(io.BytesIO(data))
    X, y = frame.drop(columns="label"), frame["label"].to_numpy()
    X_train, _, y_train, _ = train_test_split(X, y, test_size=pipe.test_fraction, random_state=pipe.seed, stratify=y)
    X_fit, X_val, y_fit, y_val = train_test_split(X_train, y_train, test_size=pipe.validation_fraction,
                                                  random_state=pipe.seed, stratify=y_train)
    fit_s = 0.0
    for i in range(trials):
        t = time.perf_counter()
        model = RandomForestClassifier(random_state=pipe.seed, **search.trial_params(pipe, i)).fit(X_fit, y_fit)
        fit_s += time.perf_counter() - t
        accuracy_score(y_val, model.predict(X_val))
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu_started, "fit": fit_s,
            "rows": (len(y_fit), len(y_val))}


def breakdown(cfg_raw: dict, env: dict) -> dict:
    """Shard 0 of 1 replayed in this process, with timers around each part of a trial's work."""
    from kiln_runtime.train import evaluate, shard, spec, trial
    from kiln_runtime.train import storeio as kio

    os.environ.update(env)
    cfg = spec.parse(cfg_raw, needs_pipeline=True)
    spent: dict[str, float] = defaultdict(float)
    patches = [(trial, "prepare", "prepare (read, validate, split)"), (trial, "fit", "fit"),
               (evaluate, "score", "score (every metric)"), (kio, "write_json", "write result.json"),
               (shard, "stored", "list stored trials")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]

    def timed(fn, label):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t
        return wrapper

    for mod, attr, label in patches:
        setattr(mod, attr, timed(getattr(mod, attr), label))
    try:
        started = time.perf_counter()
        summary = shard.run(cfg, 0, 1)
        total = time.perf_counter() - started
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)
    assert summary["result"] == "Succeeded", summary
    return {"total": total, "spent": dict(spent)}


def throughput(args, store: Store, env: dict, tmp: Path, out: list[str]) -> list[str]:
    """Part 1; returns the PASS/MISS lines."""
    dataset, data = store.dataset("breast_cancer", breast_cancer())
    verdicts = []
    first = {"estimator": {"class": "RandomForestClassifier"},
             "search": {"strategy": "random", "trials": 1, "space": SPACE}, "evaluation": EVALUATION}
    modules = shard_modules({"dataset": dataset, "pipeline": first, "output": f"{store.prefix}/runs/modules"},
                            tmp, env)
    start_s, start_runs, failed, start_cpu = start_and_import(modules)
    out.append(f"Part 1: throughput, RandomForestClassifier trials on {BC}")
    fit_rows, val_rows, test_rows = split_sizes(569, EVALUATION["testFraction"], 0.2)
    out.append(f"  search space {json.dumps(SPACE)} ({_combos(SPACE)} combinations), strategy random, seed 7; "
               f"every trial fits on {fit_rows} rows and is scored (accuracy, validation) on {val_rows} rows; "
               f"select scores the {test_rows} test rows")
    out.append(f"  one process start and import (fresh interpreter importing the {len(modules)} modules a "
               f"1-trial shard on {BC} loaded{f', {failed} not importable by name' if failed else ''}): "
               f"{start_s:.2f} s (median of {', '.join(f'{r:.2f}' for r in start_runs)}), {start_cpu:.2f} CPU s")
    # (a module that fails to import by name, e.g. one a package registers under another name, is loaded
    # by its package anyway)
    for n in args.trials:
        pipeline = {**first, "search": {**first["search"], "trials": n}}
        loops = [plain_loop(data, pipeline) for _ in range(2)]
        loop = min(loops, key=lambda r: r["wall"])
        rows = []
        for mode in ("per-process", "sharded"):
            if mode == "per-process" and n >= 100 and args.skip_per_process_100:
                continue
            for p in (1, 2):
                cfg = {"dataset": dataset, "pipeline": pipeline, "output": f"{store.prefix}/runs/{n}-{mode}-p{p}"}
                r = run_kiln(cfg, tmp, env, mode, p, n)
                found = results_of(r["output"], env, range(n))
                r["fit"] = sum(x["trainSeconds"] for x in found)
                r["shard_fit"] = [sum(x["trainSeconds"] for x in found[s::p]) for s in range(p)]
                rows.append((mode, p, r))
        out.append("")
        out.append(f"  {n} trials on {BC} (loop rows: fit {loop['rows'][0]}, validation {loop['rows'][1]}):")
        out.append(f"    {'':40} {'trials wall':>11} {'trials/min':>10} {'CPU s/trial':>11} {'fit s/trial':>11}"
                   f" {'select':>7} {'run wall':>8} {'x loop':>6}")
        out.append(f"    {'plain Python loop (one process)':40} {loop['wall']:9.2f} s {60 * n / loop['wall']:10.1f}"
                   f" {loop['cpu'] / n:11.3f} {loop['fit'] / n:11.3f} {'':>7} {loop['wall']:6.2f} s {1:6.1f}"
                   f"   (faster of {', '.join('%.2f' % x['wall'] for x in loops)} s)")
        for mode, p, r in rows:
            label = f"kiln-train, {'one process per trial' if mode == 'per-process' else f'{p} shard(s)'}, P={p}"
            run = r["trials_s"] + r["select_s"]
            out.append(f"    {label:40} {r['trials_s']:9.2f} s {60 * n / r['trials_s']:10.1f} {r['cpu'] / n:11.3f}"
                       f" {r['fit'] / n:11.3f} {r['select_s']:5.2f} s {run:6.2f} s {run / loop['wall']:6.1f}")
        by = {(m, p): r for m, p, r in rows}
        if ("per-process", 1) in by:
            pp = by[("per-process", 1)]
            out.append(f"    one process per trial, P=1: {pp['trials_s'] / n:.2f} s wall per trial, of which fit "
                       f"{pp['fit'] / n:.3f} s; per-trial CPU overhead over the loop (interpreter, imports, "
                       f"store I/O): {(pp['cpu'] - loop['cpu']) / n:.2f} s")
        sh = by[("sharded", 1)]
        out.append(f"    sharded, P=1: {sh['trials_s'] / n:.3f} s wall per trial (start and import included), "
                   f"loop {loop['wall'] / n:.3f} s per trial")
        if n >= 100:
            out.append(f"    target ({n} trials, sharded): run wall <= {BOUND_FACTOR} x loop / P + process start and "
                       f"import + select")
            for p in (1, 2):
                r = by[("sharded", p)]
                bound = BOUND_FACTOR * loop["wall"] / p + start_s + r["select_s"]
                run = r["trials_s"] + r["select_s"]
                verdict = "PASS" if run <= bound else "MISS"
                out.append(f"      P={p}: bound {BOUND_FACTOR} x {loop['wall']:.2f} / {p} + {start_s:.2f} + "
                           f"{r['select_s']:.2f} = {bound:.2f} s; measured {run:.2f} s (shards {r['trials_s']:.2f} + "
                           f"select {r['select_s']:.2f}); ratio {run / bound:.2f}  {verdict}")
                # CPU seconds are what a busy machine distorts least: the shards' work beside the loop's.
                work = r["cpu"] - p * start_cpu
                out.append(f"           CPU view: shards {r['cpu']:.2f} CPU s - {p} x {start_cpu:.2f} start and import "
                           f"= {work:.2f} CPU s for the trials, {work / loop['cpu']:.2f} x the loop's "
                           f"{loop['cpu']:.2f} CPU s")
                if p > 1:
                    out.append(f"           fit seconds per shard (trials s, s+{p}, ...): "
                               f"{', '.join(f'{x:.2f}' for x in r['shard_fit'])}; the run waits for the slowest, "
                               f"{max(r['shard_fit']) / (sum(r['shard_fit']) / p):.2f} x the mean")
                if p > 1 and r["fit"] > 1.25 * by[("sharded", 1)]["fit"]:
                    out.append(f"           the {p} CPUs were not free: fit s/trial rose from "
                               f"{by[('sharded', 1)]['fit'] / n:.3f} (P=1) to {r['fit'] / n:.3f}, so this wall "
                               f"measures the contention (load average {os.getloadavg()[0]:.1f}); re-run on an idle "
                               "machine")
                verdicts.append(f"{n} sharded trials on breast_cancer, P={p}: run {run:.2f} s vs bound {bound:.2f} s "
                                f"(ratio {run / bound:.2f}) {verdict}")
            cfg = {"dataset": dataset, "pipeline": pipeline, "output": f"{store.prefix}/runs/{n}-breakdown"}
            b = breakdown(cfg, env)
            out.append(f"    where a sharded trial's time goes (shard 0 of 1, {n} trials on {BC}, replayed in "
                       f"this already-imported process, {b['total']:.2f} s):")
            accounted = 0.0
            for label, seconds in sorted(b["spent"].items(), key=lambda kv: -kv[1]):
                accounted += seconds
                per = f"{1000 * seconds / n:7.1f} ms/trial" if "prepare" not in label and "list" not in label \
                    else f"{seconds:7.3f} s once"
                out.append(f"      {label:34} {per}")
            out.append(f"      {'rest (pipeline build, bookkeeping)':34} {1000 * (b['total'] - accounted) / n:7.1f} "
                       f"ms/trial")
            out.append(f"      {'plain loop, for comparison':34} {1000 * loop['wall'] / n:7.1f} ms/trial "
                       f"(fit {1000 * loop['fit'] / n:.1f} ms)")
    return verdicts


def split_sizes(rows: int, test_fraction: float, validation_fraction: float) -> tuple[int, int, int]:
    """(fit, validation, test) rows as train_test_split cuts them (its test part rounds up)."""
    import math

    test = math.ceil(rows * test_fraction)
    validation = math.ceil((rows - test) * validation_fraction)
    return rows - test - validation, validation, test


def _combos(space: dict) -> int:
    import math

    return math.prod(len(v) for v in space.values())


def halving_part(args, store: Store, env: dict, tmp: Path, out: list[str]) -> list[str]:
    """Part 2; returns the PASS/MISS lines."""
    rows = args.halving_rows
    data_name = f"synthetic make_classification ({rows} rows x 20 features, 8 informative, 4 redundant, random_state=0)"
    dataset, _ = store.dataset("synthetic", synthetic(rows))
    search_full = {"strategy": "grid", "trials": 64, "space": HALVING_SPACE}
    search_halving = {"strategy": "halving", "trials": 64, "space": HALVING_SPACE,
                      "halving": {"factor": 3, "resource": "samples"}}
    runs = {}
    for name, search in (("full grid", search_full), ("halving", search_halving)):
        pipeline = {"estimator": {"class": "RandomForestClassifier"}, "search": search, "evaluation": EVALUATION}
        output = f"{store.prefix}/runs/halving-{name.replace(' ', '-')}"
        cfg = {"dataset": dataset, "pipeline": pipeline, "output": output}
        runs[name] = run_kiln(cfg, tmp, env, "sharded", 1, 64)
    full, halv = runs["full grid"], runs["halving"]
    full_results = results_of(full["output"], env, range(64))
    record = read_json(f"{halv['output']}/search/halving.json", env)
    finalists = [c["trial"] for c in record["candidates"] if c["stoppedIn"] is None]
    final_results = results_of(halv["output"], env, finalists)
    fit_rows = final_results[0]["rows"]["train"]
    # halving.json's rows are the fit + validation rows n_resources counts
    assert record["rows"] == fit_rows + final_results[0]["rows"]["validation"], record["rows"]

    full_total = sum(r["rows"]["train"] * r["params"]["n_estimators"] for r in full_results)
    round_totals: dict[int, int] = defaultdict(int)
    for c in record["candidates"]:
        trees = c["searchParams"]["n_estimators"]
        for s in c["scores"]:
            round_totals[s["round"]] += int(s["resources"] / record["rows"] * fit_rows) * trees
    final_total = sum(r["rows"]["train"] * r["params"]["n_estimators"] for r in final_results)
    halving_total = sum(round_totals.values()) + final_total
    ratio = halving_total / full_total

    def tested(run):
        sel = run["select"]
        return sel["bestTrial"], sel["heldOut"]["accuracy"], sel["score"], sel["measuredOn"]["rows"]

    f_trial, f_acc, f_val, test_rows = tested(full)
    h_trial, h_acc, h_val, _ = tested(halv)
    rel = (f_acc - h_acc) / f_acc
    out.append("")
    out.append(f"Part 2: successive halving vs the full grid, RandomForestClassifier on {data_name}")
    out.append(f"  (breast_cancer's {split_sizes(569, EVALUATION['testFraction'], 0.2)[0]} fit rows are too few "
               f"for subsampled rounds, so this part uses the synthetic table: fit {fit_rows} rows, validation "
               f"{record['rows'] - fit_rows}, test {test_rows})")
    out.append(f"  space {json.dumps(HALVING_SPACE)} ({_combos(HALVING_SPACE)} candidates); halving factor "
               f"{record['factor']}, resource {record['resource']}, minResources {record['minResources']} "
               f"maxResources {record['maxResources']} (of {record['rows']} fit + validation rows), scored on "
               f"{record['on']}")
    out.append(f"  {'round':>7} {'n_resources':>11} {'fit rows':>8} {'candidates':>10} {'kept':>5} "
               f"{'rows x trees':>12}")
    for r in record["rounds"]:
        out.append(f"  {r['round']:7d} {r['resources']:11d} {int(r['resources'] / record['rows'] * fit_rows):8d} "
                   f"{r['candidates']:10d} {r['kept']:5d} {round_totals[r['round']]:12,d}")
    out.append(f"  {'finalists, full trials':>38} {len(finalists):5d} {final_total:12,d}")
    out.append(f"  fitted rows x n_estimators: halving {halving_total:,d}, full grid {full_total:,d} "
               f"(64 x {fit_rows} rows x each candidate's trees); ratio {ratio:.3f} (target <= 1/3)  "
               f"{'PASS' if ratio <= 1 / 3 else 'MISS'}")
    out.append(f"  test accuracy ({test_rows} test rows of the synthetic table, select's heldOut): full grid "
               f"{f_acc:.4f} (trial {f_trial}, validation {f_val:.4f}), halving {h_acc:.4f} (trial {h_trial}, "
               f"validation {h_val:.4f}); halving - full grid = {100 * (h_acc - f_acc) / f_acc:+.2f}% of the "
               f"full grid's (target: no more than 1% below)  {'PASS' if rel <= 0.01 else 'MISS'}")
    out.append(f"  walls on the synthetic table (one process each, then select): full grid {full['trials_s']:.1f} s "
               f"+ select {full['select_s']:.1f} s, {full['cpu']:.1f} CPU s; halving {halv['trials_s']:.1f} s + "
               f"select {halv['select_s']:.1f} s, {halv['cpu']:.1f} CPU s")
    out.append(f"  selected params: full grid {full_results[f_trial]['searchParams']}, halving "
               f"{next(r for r in final_results if r['trial'] == h_trial)['searchParams']}")
    return [f"halving on the synthetic table: fitted rows x trees {ratio:.3f} of the full grid (<= 1/3) "
            f"{'PASS' if ratio <= 1 / 3 else 'MISS'}",
            f"halving on the synthetic table: test accuracy {h_acc:.4f} vs full grid {f_acc:.4f} "
            f"({100 * (h_acc - f_acc) / f_acc:+.2f}%; at most 1% below) {'PASS' if rel <= 0.01 else 'MISS'}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, nargs="+", default=[8, 100])
    ap.add_argument("--store", choices=("s3", "file"), default="s3")
    ap.add_argument("--skip-per-process-100", action="store_true",
                    help="leave out the one-process-per-trial rows for 100 or more trials")
    ap.add_argument("--no-halving", action="store_true", help="leave out part 2")
    ap.add_argument("--halving-rows", type=int, default=4000)
    args = ap.parse_args()
    import sklearn

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip() or "unknown"
    status = subprocess.run(["git", "status", "--porcelain", "--", "serving_image", "benchmarks/training.py"],
                            capture_output=True, text=True, cwd=ROOT).stdout  # "XY path" lines
    dirty = sorted({line[3:] for line in status.splitlines() if line.strip()})
    out = [f"# python benchmarks/training.py {' '.join(sys.argv[1:])}".rstrip() + f", {datetime.date.today()}, "
           f"commit {commit}" + (f" + uncommitted changes to {', '.join(dirty)}" if dirty else ""),
           f"training benchmark: store={args.store}{' (moto on 127.0.0.1)' if args.store == 's3' else ''}, "
           f"{os.cpu_count()} CPUs, scikit-learn {sklearn.__version__}, load average at the start "
           f"{os.getloadavg()[0]:.1f}", ""]
    verdicts = []
    with (moto_server() if args.store == "s3" else contextlib.nullcontext()) as url, \
            tempfile.TemporaryDirectory() as tmpdir:
        env = store_env(url)
        tmp = Path(tmpdir)
        store = Store(args.store, tmp, env)
        verdicts += throughput(args, store, env, tmp, out)
        if not args.no_halving:
            verdicts += halving_part(args, store, env, tmp, out)
    out.append("")
    out.append(f"load average at the end: {os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs; wall times assume "
               "the CPUs are free, CPU seconds do not)")
    out.append("targets:")
    out += [f"  {v}" for v in verdicts] or ["  none: the targets need 100 trials and part 2"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
