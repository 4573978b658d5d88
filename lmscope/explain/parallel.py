"""`lmscope explain --workers N`: label and score chunks of features in N forked processes.

Why fork: the workers inherit, without copying or re-computing, what the parent built once (the
atlas's token embeddings, the labeller's vectors, the phrase cache); spawn would re-load them all.
Only the parent runs torch (the sentence embedder) and only the parent writes, so the results are
the 1-worker path's bit for bit:
- chunk k goes to worker k % N, which reads its profiles (its own read-only SQLite connection),
  splits and labels them and sends back the phrases to embed;
- the parent embeds those phrases in chunk order (the same batches, in the same order, as the
  1-worker path: a phrase's vector can depend on what it was batched with) and sends the vectors
  the worker lacks; the worker scores and sends back the rows;
- the parent writes each chunk in one transaction, in chunk order.
Ctrl-C or a worker's error: the workers are ended, every chunk written so far is complete and the
next run resumes after it (a chunk is never half written).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import wait

from ..errors import UserError


def _worker(conn, work, chunks) -> None:
    # Ctrl-C goes to the whole process group: the parent alone decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 0
    try:
        import sys

        if "torch" in sys.modules:  # a forked torch must not start its own thread pool
            sys.modules["torch"].set_num_threads(1)
        from ..atlas.db import AtlasDB

        db = AtlasDB(work.db_path, readonly=True)
        state: dict = {}
        while True:
            msg = conn.recv()
            if msg is None:
                break
            kind, k, payload = msg
            if kind == "score":
                vecs, nxt = payload
                if work.scoring.emb is not None:
                    work.scoring.emb.cache.update(vecs)
                items, plans = state.pop(k)
                conn.send(("rows", k, work.score(items, plans)))
                k = nxt
            if k is not None:  # "label", or the next chunk after a "score"
                items, plans = state[k] = work.label(db, chunks[k])
                conn.send(("plans", k, [(t, tk) for pl in plans if pl for _, t, tk, _ in pl]))
        db.close()
    except (EOFError, BrokenPipeError):
        code = 1  # the parent is gone
    except BaseException:
        code = 1
        try:
            conn.send(("error", None, traceback.format_exc()))
        except Exception:
            pass
    finally:
        conn.close()
        os._exit(code)  # no atexit/finalizers of the parent's objects in a forked child


def run_parallel(n: int, chunks: list, work, write) -> None:
    """Label and score `chunks` in `n` forked workers; write(rows) each chunk in chunk order."""
    ctx = multiprocessing.get_context("fork")
    conns, procs = [], []
    emb = work.scoring.emb
    known: list[set] = []
    try:
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, work, chunks), daemon=True)
            p.start()
            b.close()
            conns.append(a)
            procs.append(p)
            # what the worker inherited: the phrases cached at its fork
            known.append(set(emb.cache) if emb is not None else set())
        for k in range(min(n, len(chunks))):
            conns[k % n].send(("label", k, None))
        plans: dict = {}
        rows: dict = {}
        next_prep = next_write = 0
        while next_write < len(chunks):
            for c in wait(conns):
                try:
                    kind, k, payload = c.recv()
                except EOFError:
                    raise UserError(
                        "an explain worker process died (out of memory?); rerun the same "
                        "command to resume, or use --workers 1"
                    ) from None
                if kind == "error":
                    raise RuntimeError(f"explain worker failed:\n{payload}")
                (plans if kind == "plans" else rows)[k] = payload
            while next_prep in plans:
                k = next_prep
                phrases = plans.pop(k)
                work.scoring.prepare(phrases)  # the parent's embedder, in chunk order
                vecs = {}
                if emb is not None:
                    from .token_embeddings import label_phrases

                    have = known[k % n]
                    for t, tk in phrases:
                        for ph in label_phrases(t, tk):
                            # (absent only after the cache's size cap cleared it: the worker
                            # then embeds that phrase itself, as the 1-worker path does)
                            if ph not in have and ph in emb.cache:
                                vecs[ph] = emb.cache[ph]
                                have.add(ph)
                nxt = k + n if k + n < len(chunks) else None
                conns[k % n].send(("score", k, (vecs, nxt)))
                next_prep += 1
            while next_write in rows:
                write(rows.pop(next_write))
                next_write += 1
    finally:
        for c in conns:
            try:
                c.send(None)
            except OSError:
                pass
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
        for c in conns:
            c.close()
