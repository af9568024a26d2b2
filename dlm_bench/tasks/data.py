"""Find benchmark data at run time: an explicit directory, then $DLM_BENCH_DATA, then ../shared/data
beside the checkout, then the Hugging Face hub. Data is never copied into the repository."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dlm_bench.errors import UserError

ENV_VAR = "DLM_BENCH_DATA"
_REPO_ROOT = Path(__file__).resolve().parents[2]


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


def find_file(relpath: str, data_dir: str | os.PathLike | None = None, hub: str | None = None) -> Path:
    """Return the first existing `<dir>/<relpath>`; with `data_dir` given, also `<data_dir>/<basename>`.

    `hub` names a Hugging Face dataset id to try last (callers handle loading from the hub
    themselves; this function only raises with every place it looked).
    """
    tries = [d / relpath for d in candidate_dirs(data_dir)]
    if data_dir:  # a user's own folder may hold the file without the sub-folder
        tries.insert(1, Path(data_dir) / Path(relpath).name)
    for p in tries:
        if p.is_file():
            return p
    looked = [str(p) for p in tries]
    where = "; ".join(looked)
    hint = f" (or the hub dataset {hub!r}, unreachable here)" if hub else ""
    raise UserError(f"data file {relpath!r} not found; looked in: {where}{hint}. "
                    f"Pass --data-dir or set ${ENV_VAR}.")


def hub_dataset(dataset_id: str, split: str, config: str | None = None):
    """Load a dataset split from the hub (for users who can reach it); a clear error otherwise."""
    if os.environ.get("HF_HUB_OFFLINE") or not _hub_resolves():
        raise UserError(f"the Hugging Face hub is unreachable from here; cannot load {dataset_id!r}")
    try:
        import datasets  # optional dependency
    except ImportError as e:
        raise UserError(f"the hub fallback for {dataset_id!r} needs the 'datasets' package") from e
    try:
        return list(datasets.load_dataset(dataset_id, config, split=split))
    except Exception as e:  # network, missing split, ...
        raise UserError(f"could not load {dataset_id!r} split {split!r} from the hub: {e}") from e


def _hub_resolves() -> bool:
    """A fast check (no retries) that the hub's name resolves: offline machines fail at once."""
    try:
        socket.getaddrinfo("huggingface.co", 443)
        return True
    except OSError:
        return False


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_rows(relpath: str, data_dir, hub_id: str | None, split: str, config: str | None = None) -> list[dict]:
    """Rows of a JSONL file found locally; if it is missing, from the hub; if both fail, the local error."""
    try:
        path = find_file(relpath, data_dir, hub=hub_id)
    except UserError as local_err:
        if not hub_id:
            raise
        try:
            return hub_dataset(hub_id, split, config)
        except UserError:
            raise local_err from None
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    raise UserError(f"unsupported data file type: {path}")


MODELS_ENV_VAR = "DLM_BENCH_MODELS"


def models_dir() -> Path | None:
    """The folder of weightless real-model snapshots (LLaDA, Dream code + configs): $DLM_BENCH_MODELS,
    then ../shared/models beside the checkout; None where neither exists."""
    cands = ([Path(os.environ[MODELS_ENV_VAR])] if os.environ.get(MODELS_ENV_VAR) else []) + \
        [_REPO_ROOT.parent / "shared" / "models", Path.cwd().parent / "shared" / "models"]
    return next((d for d in cands if d.is_dir()), None)
