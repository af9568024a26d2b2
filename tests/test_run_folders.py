"""Run folders keyed by the evaluated model: a retrained checkpoint never mixes into the old model's
records by default, and readers that select by label warn when one label covers several models."""
import shutil
from pathlib import Path

import torch

from dlm_bench.cli import main
from dlm_bench.runs.index import read_all_scores, read_index

SWEEP = ["--task", "testbed", "--k", "1,2", "--n", "2", "--temps", "0.5", "--lengths", "8", "--block-length", "4",
         "--steps-per-token", "0.5", "--limit", "3", "--device", "cpu", "--no-progress"]


def _retrained(tiny_dir, tmp_path):
    """The same model folder name with other weights (as after a retraining)."""
    from safetensors.torch import load_file, save_file
    new = tmp_path / "again" / Path(tiny_dir).name
    shutil.copytree(tiny_dir, new)
    w = load_file(new / "model.safetensors")
    save_file({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in w.items()},
              new / "model.safetensors", metadata={"format": "pt"})
    return new


def test_default_folder_is_keyed_by_model_content(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    new = _retrained(tiny_dir, tmp_path)
    assert main(["passk", "--model", tiny_dir, "--method", "m", *SWEEP]) == 0
    assert main(["passk", "--model", str(new), "--method", "m", *SWEEP]) == 0
    folders = sorted((tmp_path / "results/passk/m/testbed").iterdir())
    assert len(folders) == 2 and all(f.name.startswith(new.name + "-") for f in folders)   # readable alias
    models = {e["model"]["hash"] for f in folders for e in read_index(f).values()}
    assert len(models) == 2                                                             # one model each


def test_one_label_several_models_warns_and_keeps_the_newest(tiny_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    new = _retrained(tiny_dir, tmp_path)
    for model in (tiny_dir, new):                   # both into ONE folder, as with an explicit --out
        assert main(["passk", "--model", str(model), "--method", "m", "--out", str(runs / "m"), *SWEEP]) == 0
    assert main(["passk", "--model", tiny_dir, "--method", "b", "--out", str(runs / "b"), *SWEEP]) == 0
    capsys.readouterr()
    df = read_all_scores(runs)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "'m' on 'testbed' labels records of 2 models" in err
    old_model = next(iter(read_index(runs / "b").values()))["model"]["hash"]
    newest = {h for h, e in read_index(runs / "m").items() if e["model"]["hash"] != old_model}
    assert set(df[df["method"] == "m"]["config_hash"]) == newest
    assert len(df[df["method"] == "m"]) == len(df[df["method"] == "b"]) == 3 * 2
    assert main(["compare", "m", "b", "--runs", str(runs), "--k", "2"]) == 0     # no longer refused
