"""`dlm-bench grade TASK FILE.jsonl [-o OUT.jsonl] [--data-dir DIR]`: grade completions offline."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `dlm-bench tasks`)")
    parser.add_argument("file", help='JSONL rows {"problem_id" or "index", "completion"}')
    parser.add_argument("-o", "--output", default=None, help="output JSONL (default: FILE.graded.jsonl)")
    parser.add_argument("--data-dir", default=None, help="folder holding the benchmark data")
    parser.add_argument("--answer-mode", default="flexible", choices=["flexible", "strict"],
                        help="strict: only the answer form the prompt asks for (e.g. \\boxed{}); "
                             "flexible: also answer lines and fallbacks")


def run(args) -> int:
    from dlm_bench.grading import grade_file
    grade_file(args.task, args.file, out_path=args.output, data_dir=args.data_dir,
               answer_mode=args.answer_mode)
    return 0
