"""--report-to: the trackers receive exactly what log.jsonl holds. TensorBoard's event files are read back
with tensorboard's own EventAccumulator; wandb's offline run file is read with wandb's own protobuf
definitions; Trackio's local database with sqlite3."""
import importlib.util
import json
import sqlite3
import struct
from pathlib import Path

import pytest

from dlm_bench.cli import main

TINY = {"group_size": 4, "batch_prompts": 2, "gen_length": 8, "steps": 8, "block_length": 8, "lora_r": 0}


def _train(tiny_dir, out, report_to, steps=2, *extra):
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    return main(["train", "trafl", "--task", "testbed", "--model", tiny_dir, "--out", str(out), "--train-steps",
                 str(steps), "--device", "cpu", "--no-progress", "--report-to", report_to, *sets, *extra])


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def _expected(rows, prefix="train") -> dict:
    keys = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    return {f"{prefix}/{k}": [(r["step"], float(r[k])) for r in rows if k in r] for k in keys}


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    texts = {t: [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(t)] for t in acc.Tags()["tensors"]}
    return scalars, texts


def _assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for tag, points in want.items():           # event files hold float32
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6, abs=1e-12), tag


needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason="tensorboard not installed (pip install 'dlm-bench[tensorboard]')")


@needs_tensorboard
def test_train_tensorboard_scalars_equal_log_jsonl_across_a_resume(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_dir, out, "tensorboard", 2) == 0
    from torch.utils.tensorboard import SummaryWriter
    stale = SummaryWriter(str(out / "tensorboard"))      # as a run killed after logging a step it never saved
    stale.add_scalar("train/reward_mean", 123.0, 3)
    stale.close()
    assert _train(tiny_dir, out, "tensorboard", 4) == 0    # resumes at step 2: the stale step 3 is purged
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "seconds" in rows[0]
    scalars, texts = _events(out / "tensorboard")
    _assert_same(scalars, _expected(rows))
    assert '"method": "trafl"' in texts["config/text_summary"][0]      # the resolved config


@needs_tensorboard
def test_pretrain_and_passk_report_to_tensorboard(tiny_dir, tmp_path):
    base = tmp_path / "base"
    assert main(["pretrain", "--out", str(base), "--init", "tiny:1m", "--train-steps", "3", "--batch-size", "4",
                 "--answer-length", "8", "--save-every", "3", "--report-to", "tensorboard"]) == 0
    scalars, _ = _events(base / "tensorboard")
    _assert_same(scalars, _expected(_rows(base)))
    sweep = tmp_path / "sweep"
    assert main(["passk", "--model", tiny_dir, "--method", "m", "--task", "testbed", "--k", "1,2", "--n", "2",
                 "--temps", "0.5", "--lengths", "8", "--block-length", "4", "--limit", "3", "--device", "cpu",
                 "--no-progress", "--out", str(sweep), "--report-to", "tensorboard"]) == 0
    results = json.loads((sweep / "results.json").read_text())
    scalars, texts = _events(sweep / "tensorboard")
    cell = results["cells"][0]
    _assert_same({"p": scalars["passk/T=0.5,L=8/pass_at_k"]},
                 {"p": [(int(k), v["mean"]) for k, v in sorted(cell["pass_at_k"].items())]})
    table = texts["passk/summary/text_summary"][0]
    assert table.startswith("| temperature | gen_length | k | pass_at_k") and table.count("\n") == 3


def _wandb_records(run_file: Path):
    """Records of a wandb run file (LevelDB log format: 32 KiB blocks, 7-byte record headers, after a
    7-byte ':W&B' file header), parsed with wandb's protobuf definitions."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, pos, block, pieces, out = run_file.read_bytes(), 7, 32768, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:                       # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pieces += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                                 # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(pieces)
            out.append(rec)
            pieces = b""
    return out


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_train_wandb_offline_run_folder(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert _train(tiny_dir, out, "wandb", 2) == 0
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    records = _wandb_records(runs[0])
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    got = {}
    for h in history:
        for k, v in h.items():
            if k.startswith("train/"):
                got.setdefault(k, []).append((h["_step"], v))
    _assert_same(got, _expected(_rows(out)))
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    assert json.loads(next(i.value_json for i in config.update if i.key == "train"))["method"] == "trafl"


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed")
def test_pretrain_trackio_local_database(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    import trackio.utils                                   # reads TRACKIO_DIR at import
    monkeypatch.setattr(trackio.utils, "TRACKIO_DIR", tmp_path / "trackio", raising=False)
    base = tmp_path / "base"
    assert main(["pretrain", "--out", str(base), "--init", "tiny:1m", "--train-steps", "2", "--batch-size", "4",
                 "--answer-length", "8", "--save-every", "2", "--report-to", "trackio"]) == 0
    db = sqlite3.connect(tmp_path / "trackio" / "dlm-bench.db")
    got = [(step, json.loads(m)) for step, m in db.execute("select step, metrics from metrics order by step")]
    assert [(s, m["train/loss"]) for s, m in got] == [(r["step"], r["loss"]) for r in _rows(base)]


def test_bad_tracker_settings_are_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    assert _train(tiny_dir, tmp_path / "a", "tensorboard,mlflow") == 2
    err = capsys.readouterr().err.strip()
    assert "unknown tracker mlflow" in err and "\n" not in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    for argv in (["passk", "--model", tiny_dir, "--method", "m", "--task", "testbed", "--report-to", "wandb"],
                 ["pretrain", "--out", str(tmp_path / "p"), "--report-to", "wandb"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("needs the wandb package: pip install 'dlm-bench[wandb]'") and "\n" not in err
    assert _train(tiny_dir, tmp_path / "b", "wandb") == 2
    assert not (tmp_path / "b").exists()               # refused before any file is written
