"""Find benchmark data at run time and read it through `datasets.load_dataset`.

Search order: an explicit directory, then $DLM_BENCH_DATA, then ../shared/data beside the checkout,
then the Hugging Face hub (its usual cache). In each directory a task's file (`gsm8k/test.jsonl`) may
be stored as jsonl, json, parquet or csv, or as a folder of such shards (`gsm8k/test/`); an explicit
directory may also hold a dataset downloaded from the hub (`main/test-00000-of-00001.parquet`).
Data is never copied into the repository. `datasets` is imported only when rows are read, so listing
tasks stays fast.
"""
from __future__ import annotations

import contextlib
import csv
import os
import socket
from pathlib import Path

from dlm_bench.errors import UserError

ENV_VAR = "DLM_BENCH_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]
# file suffix -> the `datasets` builder that reads it
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    dirs += [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    seen, out = set(), []
    for d in dirs:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def shards(folder: Path) -> list[Path]:
    """The data files directly in `folder`, of the first format (jsonl, json, parquet, csv) it holds."""
    if not folder.is_dir():
        return []
    for suffix in FORMATS:
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix == suffix)
        if files:
            return files
    return []


def _in_place(path: Path) -> list[Path]:
    """The data at `path`: that file, the same name in another format, or a folder of shards."""
    stem = path.with_suffix("") if path.suffix in FORMATS else path
    for candidate in [path] + [stem.with_suffix(s) for s in FORMATS if s != path.suffix]:
        if candidate.is_file():
            return [candidate]
    return shards(stem)


def _hub_layout(data_dir: Path, stem: str, config: str | None) -> list[Path]:
    """Shards of a dataset downloaded from the hub into `data_dir`: CONFIG/, data/ or the top level,
    named STEM-00000-of-00001.parquet (`huggingface-cli download --repo-type dataset`)."""
    for sub in [config, "data", "."] if config else ["data", "."]:
        folder = data_dir / sub
        for suffix in FORMATS:
            files = sorted(folder.glob(f"{stem}-*{suffix}"))
            if files:
                return files
    return []


def find_files(relpath: str, data_dir: str | os.PathLike | None = None, split: str | None = None,
               config: str | None = None) -> list[Path]:
    """The data files of `relpath` in the first place that has them; UserError naming every place."""
    tries = [d / relpath for d in candidate_dirs(data_dir)]
    if data_dir:  # a user's own folder may hold the file without the sub-folder
        tries.insert(1, Path(data_dir) / Path(relpath).name)
    for p in tries:
        found = _in_place(p)
        if found:
            return found
    if data_dir:
        found = _hub_layout(Path(data_dir), split or Path(relpath).stem, config)
        if found:
            return found
    where = "; ".join(str(p) for p in tries)
    raise UserError(f"data file {relpath!r} not found (as jsonl, json, parquet, csv or a folder of them); "
                    f"looked in: {where}. Pass --data-dir or set ${ENV_VAR}.")


def find_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The first data file of `relpath` (see `find_files`)."""
    return find_files(relpath, data_dir)[0]


@contextlib.contextmanager
def _quiet_datasets():
    """No 'Generating train split' bars or cache notices: a task's data is read many times."""
    import datasets
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield datasets
    finally:
        datasets.logging.set_verbosity(level)
        if bars_were_on:
            datasets.enable_progress_bars()


def read_files(files: list[Path], columns: list[str] | None = None) -> list[dict]:
    """Rows of local data files (one format) through `datasets.load_dataset`. CSV columns are read as
    text, as the csv module reads them (a Sudoku grid keeps its leading zeros)."""
    builder = FORMATS[files[0].suffix]
    kwargs: dict = {}
    with _quiet_datasets() as datasets:
        if builder == "csv":
            with open(files[0], newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            kwargs["features"] = datasets.Features({c: datasets.Value("string") for c in header})
        if builder == "parquet" and columns:
            kwargs["columns"] = columns
        try:
            ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
        except Exception as e:  # noqa: BLE001 - malformed file, mixed types, ...
            raise UserError(f"cannot read {files[0]}: {_first_line(e)}") from None
    return ds.to_list()


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def hub_dataset(dataset_id: str, split: str, config: str | None = None) -> list[dict]:
    """A split from the hub, or from the usual local cache where the hub cannot be reached."""
    offline = bool(os.environ.get("HF_HUB_OFFLINE")) or not _hub_resolves()
    with _quiet_datasets() as datasets:
        try:
            with (_offline(datasets) if offline else contextlib.nullcontext()):
                return datasets.load_dataset(dataset_id, config, split=split).to_list()
        except Exception as e:  # noqa: BLE001 - network, missing split, not cached, ...
            if offline:
                raise UserError(f"the Hugging Face hub cannot be reached from here and {dataset_id!r} is not "
                                f"in the local cache") from None
            raise UserError(f"could not load {dataset_id!r} split {split!r} from the hub: {_first_line(e)}") from None


@contextlib.contextmanager
def _offline(datasets):
    """Offline mode for one call (datasets and huggingface_hub read the variable at import): the cache
    answers at once instead of five retries per file against an unreachable host."""
    import huggingface_hub.constants as hub_constants
    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _hub_resolves() -> bool:
    """A fast check (no retries) that the hub's name resolves: offline machines fail at once."""
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False


def load_rows(relpath: str, data_dir, hub_id: str | None, split: str, config: str | None = None,
              columns: list[str] | None = None) -> list[dict]:
    """Rows of the task's data found locally (any format); if it is missing, from the hub; if both
    fail, one line with every place looked in and why the hub did not answer."""
    try:
        files = find_files(relpath, data_dir, split, config)
    except UserError as local_err:
        if not hub_id:
            raise
        try:
            return hub_dataset(hub_id, split, config)
        except UserError as hub_err:
            raise UserError(f"{local_err} Hub: {hub_err}") from None
    return read_files(files, columns)


MODELS_ENV_VAR = "DLM_BENCH_MODELS"


def models_dir() -> Path | None:
    """The folder of weightless real-model snapshots (LLaDA, Dream code + configs): $DLM_BENCH_MODELS,
    then ../shared/models beside the checkout; None where neither exists."""
    cands = ([Path(os.environ[MODELS_ENV_VAR])] if os.environ.get(MODELS_ENV_VAR) else []) + \
        [_REPO_ROOT.parent / "shared" / "models", Path.cwd().parent / "shared" / "models"]
    return next((d for d in cands if d.is_dir()), None)
