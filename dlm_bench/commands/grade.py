"""`dlm-bench grade TASK FILE.jsonl [-o OUT.jsonl] [--data-dir DIR] [--unsafe-no-isolation]`: grade offline."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("task", help="task name (see `dlm-bench tasks`)")
    parser.add_argument("file", help='JSONL rows {"problem_id" or "index", "completion"}')
    parser.add_argument("-o", "--output", default=None, help="output JSONL (default: FILE.graded.jsonl)")
    parser.add_argument("--data-dir", default=None, help="folder holding the benchmark data")
    parser.add_argument("--unsafe-no-isolation", action="store_true",
                        help="where bubblewrap is unusable, run generated code anyway with rlimits only "
                             "(it can read your files and reach the network); rows record it")
    parser.add_argument("--answer-mode", default="flexible", choices=["flexible", "strict"],
                        help="strict: only the answer form the prompt asks for (e.g. \\boxed{}); "
                             "flexible: also answer lines and fallbacks")


def run(args) -> int:
    from dlm_bench.tasks.grade_file import grade_file
    if args.unsafe_no_isolation:
        from dlm_bench import sandbox
        sandbox.allow_unisolated()
    grade_file(args.task, args.file, out_path=args.output, data_dir=args.data_dir,
               answer_mode=args.answer_mode)
    return 0
