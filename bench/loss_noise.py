"""How far the loss-regression numbers move with the CPU's kernels: the noise that sets the float32
tolerance of tests/test_loss_regression.py (issue 28).

The test's fixture was stored on one CPU. Another CPU sums in another order (ATen dispatches its
vectorised reductions by the CPU's instruction set, oneDNN picks its matmul kernels by it too), and
in float32 that alone moves a value by ~1e-6 relative. This script recomputes every value of the
test (`test_loss_regression._losses`, on the suite's `tiny_dir` model) in a fresh process per
setting and prints, per dtype, the largest relative spread across the settings and the largest
relative difference to the stored fixture (recorded on another CPU). Settings: torch threads 1 and
2 with `torch.use_deterministic_algorithms` off and on; and, at 2 threads, every kernel family this
CPU offers: `ATEN_CPU_CAPABILITY` default / avx2 / avx512 (the vectorised kernels other CPUs get)
with oneDNN (mkldnn) on and off. (float32 and float64 are not compared with each other: the test
perturbs the policy with `randn` in its own dtype, so the two start from different weights.)

Run: .venv/bin/python bench/loss_noise.py   (about 20 s per setting on 2 idle cores)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FLOOR = 1e-6      # values smaller than this (on-policy GRPO losses ~0) count by absolute difference


def child(model: str, threads: int, deterministic: bool, mkldnn: bool, dtype: str) -> None:
    import torch
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.mkldnn.enabled = mkldnn
    from test_loss_regression import _losses
    print(json.dumps(_losses(model, dtype)))


def build_model(root: Path) -> str:
    """The suite's tiny model (tests/conftest.py `tiny_dir`)."""
    import torch
    from dlm_bench.models.chartok import build_char_tokenizer
    from dlm_bench.models.tiny import build_tiny
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny(tok, "1m")
    model.save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def flat(values: dict) -> dict:
    return {(case, i): v for case in sorted(values) for i, v in enumerate(sum(values[case], []))}


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if abs(b) > FLOOR else abs(a - b)


def worst(runs: list[dict], want: dict) -> tuple[float, tuple]:
    pairs = [(rel(r[k], want[k]), k) for r in runs for k in want]
    return max(pairs)


def settings(native: str, capabilities: list[str]) -> list[tuple]:
    """(threads, deterministic, ATen capability, mkldnn) of every process."""
    grid = [(t, d, native, 1) for t in (1, 2) for d in (0, 1)]
    return grid + [(2, 0, cap, m) for cap in capabilities for m in (1, 0) if (2, 0, cap, m) not in grid]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=5, metavar=("MODEL", "THREADS", "DETERMINISTIC", "MKLDNN", "DTYPE"))
    ap.add_argument("--dtypes", default="float32,float64")
    args = ap.parse_args()
    if args.child:
        model, threads, det, mkldnn, dtype = args.child
        return child(model, int(threads), det == "1", mkldnn == "1", dtype)
    import torch
    native = torch.backends.cpu.get_cpu_capability().lower()       # e.g. avx512: every lower one runs too
    caps = ["default", "avx2", "avx512"][: ["default", "avx2", "avx512"].index(native) + 1] \
        if native in ("default", "avx2", "avx512") else ["default", native]
    fixture = json.loads((ROOT / "tests" / "data" / "method_losses.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp))
        for dtype in args.dtypes.split(","):
            runs = []
            for threads, det, cap, mkldnn in settings(native, caps):
                env = dict(os.environ, **({"ATEN_CPU_CAPABILITY": cap} if cap != native else {}))
                out = subprocess.run([sys.executable, __file__, "--child", model, str(threads), str(det), str(mkldnn),
                                      dtype], capture_output=True, text=True, check=True, env=env).stdout
                runs.append(flat(json.loads(out.strip().splitlines()[-1])))
                print(f"{dtype} threads={threads} deterministic={bool(det)} capability={cap} "
                      f"mkldnn={bool(mkldnn)}: done", file=sys.stderr, flush=True)
            spread = max(worst(runs, r) for r in runs)
            stored = worst(runs, flat(fixture[dtype]))
            print(f"{dtype}: {len(runs)} settings: max relative spread {spread[0]:.3g} ({spread[1][0]} "
                  f"#{spread[1][1]}); against the stored fixture: {stored[0]:.3g} ({stored[1][0]} #{stored[1][1]})")


if __name__ == "__main__":
    main()
