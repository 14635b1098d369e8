"""Vote store under load: N concurrent annotators x V votes each, on SQLite and on PostgreSQL.

Each annotator is a thread (as in the Streamlit server, where every browser session is a thread of one process),
or with --mode processes a process of its own (several app servers on one database). Every annotator walks its
queue like the app does (`next_item`, then `record_vote` for each question) and re-sends every 10th vote (a double
click). Reported per backend: votes acknowledged, lost (acknowledged but not in the database: must be 0),
duplicates (must be 0), items over K votes per question (must be 0), throughput, and p50/p99 latency of
`record_vote` and `next_item`. The reference is the raw driver doing the bare minimum per vote in the same run
(one `INSERT ... ON CONFLICT DO NOTHING` per transaction, same durability settings), so the ratio shows what the
rules (token check, assignment check, idempotency, progress) cost.

    .venv/bin/python benchmarks/perf/vote_store.py      # 50 x 200; SQLite (NORMAL and FULL) and PostgreSQL
    .venv/bin/python benchmarks/perf/vote_store.py --annotators 10 --votes 20 --backends sqlite --out /tmp/x.json

Writes benchmarks/perf/results/vote_store.json (figures, hardware, versions, date); vote_store.md explains them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "sbs"))

OVERLAP = 5


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def _annotate(url: str, token: str, barrier=None, study: str = "perf", think_ms: float = 0.0, seed: int = 0) -> dict:
    """One annotator's session: returns acknowledged votes and latencies (ms). With think_ms > 0 the annotator pauses
    before each answer for an exponential time of that mean (seeded), like a person looking at the images."""
    import random

    import k3eval.sbs as sbs

    rng = random.Random(seed)
    who = sbs.authenticate(token, study, url)
    if barrier is not None:
        barrier.wait()
    acked, vote_ms, next_ms, errors = [], [], [], []
    k = 0
    while True:
        t0 = time.perf_counter()
        view = sbs.next_item(who)
        next_ms.append(1000 * (time.perf_counter() - t0))
        if view is None:
            break
        for q in view.questions:
            answer = ("left", "right", "equal", "both_bad")[(view.item_id + k) % 4]
            if think_ms > 0:
                time.sleep(rng.expovariate(1000.0 / think_ms))
            try:
                t0 = time.perf_counter()
                sbs.record_vote(who, view.item_id, q.key, answer, 1.0)
                vote_ms.append(1000 * (time.perf_counter() - t0))
                acked.append((who.name, view.item_id, q.key))
                if k % 10 == 0:
                    if sbs.record_vote(who, view.item_id, q.key, answer, 1.0).status != "unchanged":
                        errors.append("double click changed a vote")
            except sbs.StoreError as e:
                errors.append(str(e))
                break
            k += 1
    return {"acked": acked, "vote_ms": vote_ms, "next_ms": next_ms, "errors": errors}


def _proc_main(url: str, token: str, barrier, out_q, study: str, think_ms: float, seed: int) -> None:
    out_q.put(_annotate(url, token, barrier, study, think_ms, seed))


def run_backend(url: str, runs: dict, n_annotators: int, mode: str, think_ms: float) -> dict:
    import k3eval.sbs as sbs

    study = f"perf-think{int(think_ms)}"
    created = sbs.create_study(study, runs, n_annotators, overlap=OVERLAP, gold=0.0, repeats=0.0, seed=0,
                               db_url=url)
    results: list[dict] = []
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    if mode == "threads":
        barrier = threading.Barrier(n_annotators)
        lock = threading.Lock()

        def work(tok, k):
            r = _annotate(url, tok, barrier, study, think_ms, k)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=work, args=(t, k)) for k, t in enumerate(created.tokens.values())]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        ctx = mp.get_context("spawn")
        barrier, out_q = ctx.Barrier(n_annotators + 1), ctx.Queue()
        procs = [ctx.Process(target=_proc_main, args=(url, t, barrier, out_q, study, think_ms, k))
                 for k, t in enumerate(created.tokens.values())]
        for p in procs:
            p.start()
        barrier.wait()  # every process has started and logged in: time the voting only
        t_start = time.perf_counter()
        results = [out_q.get() for _ in procs]
        for p in procs:
            p.join()
    wall = time.perf_counter() - t_start
    sbs.dispose_engines()
    df = sbs.votes_frame(study, url)
    acked = [a for r in results for a in r["acked"]]
    stored = set(zip(df["annotator"], df["item_id"].astype(int), df["question"]))
    vote_ms = [x for r in results for x in r["vote_ms"]]
    next_ms = [x for r in results for x in r["next_ms"]]
    return {
        "url": url.split("@")[-1] if "@" in url else "sqlite (temp file)",
        "mode": mode, "think_ms_mean": think_ms, "annotators": n_annotators, "overlap": OVERLAP,
        "votes_acknowledged": len(acked), "votes_in_db": len(df),
        "lost": len(set(acked) - stored), "duplicates": int(df.duplicated(["annotator", "item_id", "question"]).sum()),
        "items_over_k": int((df.groupby(["item_id", "question"]).size() > OVERLAP).sum()),
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
        "wall_s": round(wall, 2), "votes_per_s": round(len(acked) / wall, 1),
        "vote_ms": {"p50": round(_pct(vote_ms, 50), 2), "p99": round(_pct(vote_ms, 99), 2),
                    "mean": round(statistics.fmean(vote_ms), 2) if vote_ms else None},
        "next_item_ms": {"p50": round(_pct(next_ms, 50), 2), "p99": round(_pct(next_ms, 99), 2)},
        # 1-minute load average before and after: the machine is shared, and CPU starvation shows in the tails
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def raw_baseline(url: str, n_threads: int, per_thread: int, sync: str = "NORMAL") -> dict:
    """The reference: the bare driver, one idempotent INSERT per transaction, same threads and durability."""
    lat: list[float] = []
    lock = threading.Lock()
    if url.startswith("sqlite"):
        import sqlite3

        path = url[len("sqlite:///"):]
        setup = sqlite3.connect(path, isolation_level=None)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE v (a INTEGER, i INTEGER, q TEXT, ans TEXT, PRIMARY KEY (a, i, q))")
        setup.close()
        write_lock = threading.Lock()  # the same per-process writer queue as the store

        def conn():
            c = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
            c.execute(f"PRAGMA synchronous={sync}")
            return c

        def one(c, a, i):
            with write_lock:
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT INTO v VALUES (?, ?, 'alignment', 'left') ON CONFLICT DO NOTHING", (a, i))
                c.execute("COMMIT")
    else:
        import psycopg

        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE v (a INTEGER, i INTEGER, q TEXT, ans TEXT, PRIMARY KEY (a, i, q))")

        def conn():
            return psycopg.connect(dsn)

        def one(c, a, i):
            with c.transaction():
                c.execute("INSERT INTO v VALUES (%s, %s, 'alignment', 'left') ON CONFLICT DO NOTHING", (a, i))

    barrier = threading.Barrier(n_threads)

    def work(a):
        c = conn()
        mine = []
        barrier.wait()
        for i in range(per_thread):
            t0 = time.perf_counter()
            one(c, a, i)
            mine.append(1000 * (time.perf_counter() - t0))
        c.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=work, args=(a,)) for a in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"votes": len(lat), "wall_s": round(wall, 2), "votes_per_s": round(len(lat) / wall, 1),
            "vote_ms": {"p50": round(_pct(lat, 50), 2), "p99": round(_pct(lat, 99), 2)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--annotators", type=int, default=50)
    ap.add_argument("--votes", type=int, default=200, help="votes per annotator (two questions per item)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--mode", default="threads", choices=["threads", "processes"])
    ap.add_argument("--think-ms", default="0,1000",
                    help="comma-separated mean pauses before each answer (ms); 0 = saturated, every annotator "
                    "votes back to back (default 0,1000)")
    ap.add_argument("--sqlite-sync", default="NORMAL,FULL",
                    help="SQLite synchronous settings to measure (K3EVAL_SQLITE_SYNC; default NORMAL,FULL)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "perf" / "results" / "vote_store.json"))
    args = ap.parse_args(argv)

    from helpers import PostgresServer, make_run

    from k3eval.utils import hardware_info, now_iso, package_versions

    items_per_annotator = args.votes // 2
    n_items = args.annotators * items_per_annotator // OVERLAP
    prompts = [(f"p-{i:05d}", f"benchmark prompt {i}", f"cat-{i % 8}") for i in range(n_items)]
    tmp = Path(tempfile.mkdtemp(prefix="k3eval-perf-"))
    runs = {n: make_run(tmp / n, f"gen-{n}", prompts=prompts, size=16, seed=i) for i, n in enumerate(["a", "b"])}
    out: dict = {"benchmark": "vote_store", "date": now_iso(), "annotators": args.annotators,
                 "votes_per_annotator": args.votes, "mode": args.mode, "hardware": hardware_info(),
                 "packages": package_versions(["SQLAlchemy", "psycopg", "pandas"]), "backends": {}}
    import sqlite3

    out["packages"]["sqlite"] = sqlite3.sqlite_version
    server = None
    import k3eval.sbs as sbs

    try:
        wanted = []
        for b in [b.strip() for b in args.backends.split(",") if b.strip()]:
            wanted += [f"sqlite_{m.strip().lower()}" for m in args.sqlite_sync.split(",")] if b == "sqlite" else [b]
        for backend in wanted:
            sync = "NORMAL"
            if backend.startswith("sqlite_"):
                sync = backend.split("_", 1)[1].upper()
                os.environ["K3EVAL_SQLITE_SYNC"] = sync
                url = f"sqlite:///{tmp / f'votes-{sync}.db'}"
                base_url = f"sqlite:///{tmp / f'raw-{sync}.db'}"
            elif backend == "postgresql":
                server = PostgresServer()
                server.start()
                url, base_url = server.new_database(), server.new_database()
                import psycopg

                with psycopg.connect(server.url().replace("+psycopg", ""), autocommit=True) as c:
                    out["packages"]["postgresql_server"] = c.execute("SHOW server_version").fetchone()[0]
            else:
                raise SystemExit(f"--backends: unknown backend {backend!r}; expected sqlite, postgresql")
            print(f"[{backend}] raw-driver reference ...", flush=True)
            ref = raw_baseline(base_url, args.annotators, args.votes, sync)
            out["backends"][backend] = {"reference_raw_driver_saturated": ref}
            for think in [float(x) for x in args.think_ms.split(",")]:
                print(f"[{backend}] {args.annotators} annotators x {args.votes} votes ({args.mode}, think "
                      f"{think:.0f} ms) ...", flush=True)
                res = run_backend(url, runs, args.annotators, args.mode, think)
                sbs.dispose_engines()
                if think == 0:
                    res["ratio_p50_vs_raw"] = round(res["vote_ms"]["p50"] / ref["vote_ms"]["p50"], 2)
                    res["ratio_throughput_vs_raw"] = round(res["votes_per_s"] / ref["votes_per_s"], 3)
                out["backends"][backend][f"think_{think:.0f}ms"] = res
                print(json.dumps(res, indent=1), flush=True)
    finally:
        sbs.dispose_engines()
        if server is not None:
            server.stop()
    from k3eval.utils import atomic_write_json

    atomic_write_json(args.out, out)
    print(f"results -> {args.out}")
    ok = all(r["lost"] == 0 and r["duplicates"] == 0 and r["items_over_k"] == 0 and not r["errors"]
             for b in out["backends"].values() for k, r in b.items() if k.startswith("think_"))
    return 0 if ok else 1


if __name__ == "__main__":
    import signal

    # a SIGTERM (e.g. from `timeout`) unwinds through `finally`, so the PostgreSQL server is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("K3EVAL_CACHE", tempfile.mkdtemp(prefix="k3eval-cache-"))
    raise SystemExit(main())
