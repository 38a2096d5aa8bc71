"""`unix-cxr data clean INPUT -o OUTPUT`: clean raw reports in bulk (unix_cxr.data.cleaning).

The command line only: arguments, checks and the summary. The job, its input and output formats and its
handling of bad items are `unix_cxr.data.clean_batch`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_clean(args: argparse.Namespace) -> int:
    from ..data.clean_batch import clean_items, iter_folder, iter_jsonl, log_summary
    from ..data.cleaning import LLMRewriter, clean_report

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"INPUT {source} does not exist")
    if (args.llm_endpoint is None) != (args.llm_model is None):
        raise ValueError("--llm-endpoint and --llm-model go together")
    if source.is_dir():
        total, items = iter_folder(source)
        if total == 0:
            log.warning("no .txt files under %s", source)
    elif source.suffix.lower() == ".txt":
        raise ValueError(f"INPUT {source} is a single .txt file; give its folder, or a JSONL file")
    else:
        total, items = iter_jsonl(source)
    cleaner = clean_report
    if args.llm_endpoint:
        cleaner = LLMRewriter(args.llm_endpoint, args.llm_model, api_key_env=args.llm_api_key_env,
                              timeout=args.llm_timeout).clean
        log.info("LLM rewriting through %s (model %s) with the self-check pass", args.llm_endpoint, args.llm_model)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"OUTPUT {output} is a folder; give the JSONL file to write")
    summary = clean_items(items, output, cleaner, total=total, progress=not args.no_progress)
    log_summary(summary, output)
    return 1 if summary.failures else 0
def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean", help="clean raw reports into 'FINDINGS: ... IMPRESSION: ...' JSONL",
        description="Clean raw chest X-ray reports (rule-based, offline; optional LLM rewriting). "
                    "Exit status: 0 all items processed, 1 some items failed, 2 bad arguments or missing INPUT.")
    p.add_argument("input", metavar="INPUT",
                   help="folder of raw report .txt files (searched recursively; id = file stem) or a JSONL file "
                        'of {"id": ..., "text": ...}')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="JSONL file to write (atomically)")
    p.add_argument("--llm-endpoint", metavar="URL", default=None,
                   help="OpenAI-compatible base URL (…/v1) to rewrite reports with an LLM; off by default")
    p.add_argument("--llm-model", metavar="NAME", default=None, help="model name for --llm-endpoint")
    p.add_argument("--llm-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; unset: no key sent)")
    p.add_argument("--llm-timeout", type=float, default=60.0, metavar="S", help="seconds per HTTP request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_clean)
