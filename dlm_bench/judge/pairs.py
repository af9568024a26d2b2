"""The TraFL path-diversity comparison of two methods: judge every shared problem, tally it.

LLM judges favour a position (usually the first set shown), so the side a method is shown on must
not decide its score. `orders="both"` judges every problem twice, method A shown first and then
method B shown first; a problem counts only when both verdicts came back, and its score is their
mean. A judge that always answers "A" thus scores every problem 0 (one win, one loss). `"balanced"`
judges each problem once, with a seeded assignment that shows each method first on half the
problems of a cell (cheaper; position bias cancels on average only, and is not measurable per
problem).

Position bias is reported as how often the two verdicts on one problem name the same position
("A" both times or "B" both times: the verdict followed the position, not the content), and as the
share of decisive verdicts that chose the set shown first (0.5 = no preference). Such a problem has
one win and one loss for A, which say nothing about the methods: in the Win / Tie / Loss columns it
counts as a tie (net is the same either way), and the raw shares, as the verdicts fell, are kept
beside them (`raw_win`, `raw_tie`, `raw_loss`).
"""
from __future__ import annotations

import json
import math
import sys
import zlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import pandas as pd

from dlm_bench.errors import UserError
from dlm_bench.judge.client import Judge, Judgment, JudgeUnreachable
from dlm_bench.stats.metrics import CELL, N_RESAMPLES, bootstrap_ci, cell_tag

ORDERS = ("both", "balanced")
SCORE = {"win": 1.0, "tie": 0.0, "loss": -1.0}
FAILED = ("unavailable", "unparseable")


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), False).astype(bool)


def _assign_orders(keys: list, cells: int, orders: str, seed: int) -> dict:
    """problem key -> the list of `swapped` flags to judge it with (True: method B shown first)."""
    if orders == "both":
        return {k: [False, True] for k in keys}
    out = {}
    by_cell: dict = {}
    for k in keys:
        by_cell.setdefault(tuple(k[:cells]), []).append(k)
    for cell, ks in by_cell.items():
        rng = np.random.default_rng([int(seed), zlib.crc32(cell_tag(cell).encode())])
        rank = rng.permutation(len(ks))  # half of each cell's problems show B first
        out.update({k: [bool(r < len(ks) // 2)] for k, r in zip(sorted(ks), rank)})
    return out


def judge_methods(df: pd.DataFrame, method_a: str, method_b: str, judge: Judge, cells=CELL,
                  problems: dict | None = None, only_correct: bool = False,
                  max_samples: int | None = None, max_chars: int | None = 4000, seed: int = 0,
                  workers: int = 1, orders: str = "both", progress: bool = False) -> pd.DataFrame:
    """One row per (shared problem, order judged). `outcome` is from method A's side ("win" = A
    more diverse) whichever side A was shown on; `position` is the raw verdict ("A" = the set shown
    first). `problems` maps problem_id to the statement shown to the judge. Endpoint trouble gives
    status "unavailable"/"unparseable" on that row, never an exception; an empty set gives "skipped"."""
    if orders not in ORDERS:
        raise UserError(f"orders must be one of {ORDERS}, got {orders!r}")
    cells = list(cells)
    need = ["method"] + cells + ["problem_id", "sample", "text"] + (["correct"] if only_correct else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"rows lack column(s) {missing}; have {sorted(df.columns)}")
    for m in (method_a, method_b):
        if m not in set(df["method"]):
            raise UserError(f"method {m!r} not in the rows; have {sorted(map(str, df['method'].unique()))}")
    sub = df[df["method"].isin([method_a, method_b])].sort_values("sample", kind="stable")
    kept = sub[_truthy(sub["correct"])] if only_correct else sub
    sets = {}
    for key, grp in sub.groupby(cells + ["problem_id"], dropna=False, sort=True):
        if set(grp["method"]) != {method_a, method_b}:
            continue  # not paired: only one method has this problem
        sel = kept.loc[kept.index.intersection(grp.index)]
        sets[key] = {m: sel.loc[sel["method"] == m, "text"].fillna("").astype(str).tolist()[:max_samples]
                     for m in (method_a, method_b)}
    plan = _assign_orders(list(sets), len(cells), orders, seed)
    jobs = [(key, swapped) for key in sets for swapped in plan[key]]

    def run(job) -> Judgment:
        key, swapped = job
        a, b = sets[key][method_a], sets[key][method_b]
        if not a or not b:
            return Judgment(status="skipped", error="a method has no samples to show")
        first, second = (b, a) if swapped else (a, b)
        try:
            return judge.compare(problems.get(key[-1]) if problems else None, first, second, max_chars)
        except JudgeUnreachable:
            raise
        except Exception as e:  # a bug in a custom client must not sink the whole report
            return Judgment(status="unavailable", error=f"{type(e).__name__}: {e}")

    results = _run_all(run, jobs, judge, workers, progress)
    rows = [_row(key, swapped, j, sets[key], method_a, method_b, cells, judge.cfg.model)
            for (key, swapped), j in zip(jobs, results)]
    return pd.DataFrame(rows)


def _run_all(run, jobs: list, judge: Judge, workers: int, progress: bool) -> list[Judgment]:
    """`run` over the jobs on a thread pool, in their order, under a bar that ticks every second
    with the requests sent so far (retries included), so a slow judge still shows signs of life."""
    from tqdm.auto import tqdm
    bar = tqdm(total=len(jobs), desc="judge", unit="req", file=sys.stderr, disable=not progress)
    failed = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in done:
                    failed += f.result().status in FAILED   # JudgeUnreachable surfaces here
                bar.update(len(done))
                bar.set_postfix(sent=judge.n_requests, failed=failed)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
    return [f.result() for f in futures]


def _row(key, swapped: bool, j: Judgment, texts: dict, method_a: str, method_b: str, cells, model) -> dict:
    shown = {"A": method_b, "B": method_a} if swapped else {"A": method_a, "B": method_b}
    winner = None if j.winner is None else ("TIE" if j.winner == "TIE" else shown[j.winner])
    outcome = (None if winner is None else "tie" if winner == "TIE"
               else "win" if winner == method_a else "loss")
    appr_a, appr_b = ((j.set_b_approaches, j.set_a_approaches) if swapped
                      else (j.set_a_approaches, j.set_b_approaches))
    ok = j.status == "ok"
    return dict(zip(cells + ["problem_id"], key), method_a=method_a, method_b=method_b,
                n_shown_a=len(texts[method_a]), n_shown_b=len(texts[method_b]), swapped=swapped,
                shown_first=shown["A"], status=j.status, position=j.winner, winner=winner,
                outcome=outcome, approaches_a=appr_a, approaches_b=appr_b,
                n_approaches_a=len(appr_a) if ok else math.nan,
                n_approaches_b=len(appr_b) if ok else math.nan, confidence=j.confidence,
                reason=j.reason, cached=j.cached, attempts=j.attempts, error=j.error, raw=j.raw,
                judge_temperature=j.temperature, judge_seed=j.seed,
                tries=json.dumps(j.tries, ensure_ascii=False) if j.tries else None, judge_model=model)


# --------------------------------------------------------------------------- tally

def per_problem(judgments: pd.DataFrame, cells) -> pd.DataFrame:
    """One row per problem: `complete` when every order judged came back ok; then its win/tie/loss
    shares and score over its orders, and whether both verdicts followed the position. A problem
    whose verdicts followed the position (one win and one loss) counts as a tie in win/tie/loss;
    raw_win/raw_tie/raw_loss keep the shares as the verdicts fell."""
    rows = []
    for key, grp in judgments.groupby(list(cells) + ["problem_id"], dropna=False, sort=True):
        ok = grp[grp["status"] == "ok"]
        complete = len(ok) == len(grp) and len(grp) > 0
        score = ok["outcome"].map(SCORE)
        pos = ok["position"].tolist()
        follows = (float(pos[0] == pos[1] and pos[0] != "TIE") if complete and len(pos) == 2 else math.nan)
        raw = {name: float((score == v).mean()) if complete else math.nan
               for name, v in (("win", 1), ("tie", 0), ("loss", -1))}
        shares = {"win": 0.0, "tie": 1.0, "loss": 0.0} if follows == 1.0 else raw
        rows.append(dict(zip(list(cells) + ["problem_id"], key), complete=complete, **shares,
                         net=float(score.mean()) if complete else math.nan, follows_position=follows,
                         **{f"raw_{k}": v for k, v in raw.items()}))
    return pd.DataFrame(rows)


def _tally(rows: pd.DataFrame, probs: pd.DataFrame, confidence: float, n_resamples: int, rng) -> dict:
    done = probs[probs["complete"]]
    out = dict(n_problems=len(probs), n_judged=len(done), n_requests=len(rows),
               **{f"n_{s}": int((rows["status"] == s).sum()) for s in FAILED + ("skipped",)})
    for name in ("win", "tie", "loss", "net"):
        x = done[name].to_numpy(dtype=float)
        out[name] = float(x.mean()) if x.size else math.nan
        ci = bootstrap_ci(x, confidence, n_resamples, rng)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = ci.low, ci.high
    for name in ("raw_win", "raw_tie", "raw_loss"):
        out[name] = float(done[name].mean()) if len(done) else math.nan
    fp = done["follows_position"].dropna()
    out["position_bias"] = float(fp.mean()) if len(fp) else math.nan
    decisive = rows[(rows["status"] == "ok") & rows["position"].isin(["A", "B"])]
    out["prefers_first"] = float((decisive["position"] == "A").mean()) if len(decisive) else math.nan
    ok = rows[rows["status"] == "ok"]
    out["mean_approaches_a"] = float(ok["n_approaches_a"].mean()) if len(ok) else math.nan
    out["mean_approaches_b"] = float(ok["n_approaches_b"].mean()) if len(ok) else math.nan
    return out


def win_rates(judgments: pd.DataFrame, cells=CELL, confidence: float = 0.95,
              n_resamples: int = N_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Per cell and pooled over all cells (the last row, cells = "all"), from method A's side:
    win/tie/loss shares and net = win − loss over the problems judged in every order, each with a
    bootstrap CI over problems; position bias; request counts by status."""
    if judgments.empty:
        raise UserError("no judgments to tally")
    cells = [c for c in cells if c in judgments.columns]
    probs = per_problem(judgments, cells)
    a, b = judgments["method_a"].iloc[0], judgments["method_b"].iloc[0]
    out = []
    groups = list(judgments.groupby(cells, dropna=False, sort=True)) if cells else []
    pkeys = [tuple(k) for k in probs[cells].itertuples(index=False)]
    for key, grp in groups:
        key = key if isinstance(key, tuple) else (key,)
        rng = np.random.default_rng([int(seed), zlib.crc32(cell_tag(key).encode())])
        mine = probs[[k == key for k in pkeys]]
        out.append(dict(zip(cells, key), method_a=a, method_b=b,
                        **_tally(grp, mine, confidence, n_resamples, rng)))
    if len(groups) != 1:  # one cell: the pooled row would repeat it
        rng = np.random.default_rng([int(seed), zlib.crc32(b"all")])
        out.append(dict({c: "all" for c in cells}, method_a=a, method_b=b,
                        **_tally(judgments, probs, confidence, n_resamples, rng)))
    table = pd.DataFrame(out)
    orders = "both" if (judgments.groupby(cells + ["problem_id"]).size() > 1).any() else "one"
    table.attrs.update(confidence=confidence, n_resamples=n_resamples, orders=orders,
                       judge_model=judgments["judge_model"].iloc[0] if "judge_model" in judgments else None)
    return table


def _pct(r: dict, name: str, digits: int) -> str:
    v, lo, hi = r[name], r.get(f"{name}_ci_low", math.nan), r.get(f"{name}_ci_high", math.nan)
    if not math.isfinite(v):
        return "n/a"
    ci = f" [{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]" if math.isfinite(lo) else ""
    return f"{100 * v:.{digits}f}{ci}"


def win_rates_markdown(table: pd.DataFrame, digits: int = 0) -> str:
    """Render `win_rates` as Markdown (rates in %)."""
    at = table.attrs
    a, b = table["method_a"].iloc[0], table["method_b"].iloc[0]
    cells = [c for c in CELL if c in table.columns]
    header = cells + ["Judged / problems", "Win", "Tie", "Loss", "Net (win − loss)",
                      "Follows position", "Raw win / tie / loss", "Prefers first", "Approaches A / B",
                      "Failed requests (unavail. / unparse.)"]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join([":---"] * len(cells) + ["---:"] * (len(header) - len(cells))) + " |"]
    for r in table.to_dict("records"):
        appr = (f"{r['mean_approaches_a']:.1f} / {r['mean_approaches_b']:.1f}"
                if math.isfinite(r["mean_approaches_a"]) else "n/a")
        bias = {k: (f"{100 * r[k]:.{digits}f}" if math.isfinite(r[k]) else "n/a")
                for k in ("position_bias", "prefers_first", "raw_win", "raw_tie", "raw_loss")}
        vals = [str(r[c]) for c in cells] + [
            f"{r['n_judged']} / {r['n_problems']}", _pct(r, "win", digits), _pct(r, "tie", digits),
            _pct(r, "loss", digits), _pct(r, "net", digits), bias["position_bias"],
            " / ".join(bias[k] for k in ("raw_win", "raw_tie", "raw_loss")),
            bias["prefers_first"], appr, f"{r['n_unavailable']} / {r['n_unparseable']}"]
        lines.append("| " + " | ".join(vals) + " |")
    model = at.get("judge_model")
    both = at.get("orders") == "both"
    lines += ["", f"Path-diversity judge{f' ({model})' if model else ''}: {a} (A) vs {b} (B); rates "
              f"in % of judged problems from A's side, {at.get('confidence', 0.95):.0%} bootstrap CIs "
              f"over problems ({at.get('n_resamples', N_RESAMPLES)} resamples); \"all\" pools every cell. "
              + ("Each problem was judged in both orders (A shown first, then B shown first) and "
                 "scores the mean of the two verdicts; a problem counts only when both came back. "
                 if both else "Each problem was judged once; a seeded assignment showed each method "
                 "first on half the problems of a cell. ")
              + "Follows position: % of problems whose two verdicts named the same position (the "
              "verdict followed the order, not the content; n/a with one order); such a problem, one "
              "win and one loss, counts as a tie in Win / Tie / Loss, and Raw win / tie / loss gives "
              "the shares as the verdicts fell. Prefers first: % of decisive verdicts for the set "
              "shown first (50 = no preference)."]
    return "\n".join(lines)


def summary(judgments: pd.DataFrame, n_sent: int) -> tuple[str, float]:
    """A one-line account of the requests and the share of them that came back with a verdict."""
    asked = judgments[judgments["status"] != "skipped"]
    ok = int((asked["status"] == "ok").sum())
    rate = ok / len(asked) if len(asked) else 0.0
    counts = {s: int((asked["status"] == s).sum()) for s in FAILED}
    errors = asked.loc[asked["status"].isin(FAILED), "error"].dropna()
    line = (f"judge: {ok} of {len(asked)} requests judged ({rate:.0%}; "
            f"{int(asked['cached'].sum())} from the cache, {n_sent} sent including retries and the preflight); "
            f"unavailable {counts['unavailable']}, unparseable {counts['unparseable']}, "
            f"skipped {int((judgments['status'] == 'skipped').sum())}"
            + (f"; first error: {errors.iloc[0]}" if len(errors) else ""))
    return line, rate
