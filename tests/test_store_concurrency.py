"""The store under concurrency, with real processes: appends racing merges lose nothing, and a second
writer of a run folder is refused (exit 2, one line naming the holder) or queues with --wait."""
import json
import os
import subprocess
import sys
from pathlib import Path

from dlm_bench.runs.locks import folder_lock
from dlm_bench.runs.store import Store, read_jsonl

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]

_APPENDER = """
import sys
from dlm_bench.runs.store import Store
out, rank, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
st = Store(out, rank=None if rank == "main" else int(rank)).open()
for i in range(0, n, batch):
    recs = [dict(method="m", task="t", temperature=0.5, gen_length=8, problem_id=f"{rank}/{j}", sample=0,
                 seed=j, config_hash="h", prompt_hash="x", text="y" * 50, tokens=[1, 2], nfe=1, length=2,
                 seconds=0.0) for j in range(i, min(n, i + batch))]
    st.append("generations", recs)
"""

_MERGER = """
import os, sys
from dlm_bench.runs.store import Store
out, stop = sys.argv[1], sys.argv[2]
merges = 0
while not os.path.exists(stop) or merges < 3:
    Store(out).merge()
    merges += 1
print(merges)
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_appends_racing_merges_lose_nothing(tmp_path):
    out, stop = tmp_path / "run", tmp_path / "stop"
    out.mkdir()
    n, writers = 300, ["main", "0", "1", "2"]
    merger = subprocess.Popen([PY, "-c", _MERGER, str(out), str(stop)], env=_env(), stdout=subprocess.PIPE,
                              text=True)
    procs = [subprocess.Popen([PY, "-c", _APPENDER, str(out), w, str(n), "3"], env=_env()) for w in writers]
    assert [p.wait(timeout=300) for p in procs] == [0] * len(writers)
    stop.touch()
    assert merger.wait(timeout=300) == 0
    assert int(merger.stdout.read()) >= 3          # merges really ran alongside the appends
    Store(out).merge()
    ids = [r["problem_id"] for r in read_jsonl(out / "generations.jsonl")]
    expected = {f"{w}/{j}" for w in writers for j in range(n)}
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert not Store(out).shard_paths("generations")


def _passk(tiny_dir, out, *extra, temps="0.5"):
    return [PY, "-m", "dlm_bench.cli", "passk", "--model", tiny_dir, "--method", "base", "--task", "testbed",
            "--k", "1,2", "--n", "2", "--temps", temps, "--lengths", "8", "--block-length", "4",
            "--steps-per-token", "0.5", "--limit", "3", "--device", "cpu", "--no-progress", "--out", str(out),
            *extra]


def _run(cmd):
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def test_second_writer_is_refused_naming_the_holder(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(_passk(tiny_dir, out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")}
    with folder_lock(out):                          # this test process is the holder
        r = _run(_passk(tiny_dir, out, temps="0.9"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "--wait" in lines[0], r.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")}
    assert after == before                          # nothing written, nothing damaged


def test_concurrent_sweeps_with_wait_both_finish_with_every_record(tiny_dir, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen(_passk(tiny_dir, out, "--wait", temps=t), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for t in ("0.5", "0.9,1.0")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for kind in ("generations", "scores"):
        rows = read_jsonl(out / f"{kind}.jsonl")
        keys = [(r["config_hash"], r["problem_id"], r["sample"]) for r in rows]
        assert len(keys) == len(set(keys)) == 3 * 3 * 2          # 3 temperatures x 3 problems x n=2
        assert sorted({r["temperature"] for r in rows}) == [0.5, 0.9, 1.0]
    assert json.loads((out / "results.json").read_text())["complete"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("generations.jsonl", "scores.jsonl", "results.json"):   # not mkstemp's 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask
