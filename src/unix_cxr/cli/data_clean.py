"""`unix-cxr data clean INPUT -o OUTPUT`: clean raw reports in bulk (unix_cxr.data.cleaning).

The command line only: arguments, checks and the summary. The job, its input and output formats, its handling
of bad items and its resume file (``OUTPUT.partial``) are `unix_cxr.data.clean_batch`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_clean(args: argparse.Namespace) -> int:
    from ..data.clean_batch import clean_items, folder_files, iter_folder, iter_jsonl, log_summary
    from ..data.cleaning import LLMRewriter, LLMUnavailable, clean_report
    from ..data.records import input_fingerprint

    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"INPUT {source} does not exist")
    if (args.llm_endpoint is None) != (args.llm_model is None):
        raise ValueError("--llm-endpoint and --llm-model go together")
    if args.llm_endpoint is None and (args.llm_allow_http or args.llm_fallback):
        raise ValueError("--llm-allow-http and --llm-fallback need --llm-endpoint")
    if source.is_dir():
        files = folder_files(source)
        total, items = iter_folder(source, files)
        fingerprint = input_fingerprint(source, files)
        if total == 0:
            log.warning("no .txt files under %s", source)
    elif source.suffix.lower() == ".txt":
        raise ValueError(f"INPUT {source} is a single .txt file; give its folder, or a JSONL file")
    elif not source.is_file():
        raise ValueError(f"INPUT {source} is not a regular file or a folder")
    else:
        total, items = iter_jsonl(source)
        fingerprint = input_fingerprint(source)
    cleaner, rewriter, options = clean_report, None, {"cleaner": "rules"}
    if args.llm_endpoint:
        rewriter = LLMRewriter(args.llm_endpoint, args.llm_model, api_key_env=args.llm_api_key_env,
                               timeout=args.llm_timeout, allow_http=args.llm_allow_http, fallback=args.llm_fallback)
        cleaner = rewriter.clean
        options = {"cleaner": "llm", "endpoint": rewriter.url, "model": args.llm_model,
                   "fallback": args.llm_fallback}
        log.info("LLM rewriting through %s (model %s) with the self-check pass", rewriter.url, args.llm_model)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"OUTPUT {output} is a folder; give the JSONL file to write")
    try:
        summary = clean_items(items, output, cleaner, total=total, progress=not args.no_progress,
                              resume={"input": fingerprint, "options": options}, restart=args.no_resume)
    except LLMUnavailable as err:
        raise LLMUnavailable(f"{err}; stopped: run again to resume once it works (the reports done so far are "
                             "kept), or pass --llm-fallback to give the rule-based result when it fails") from None
    log_summary(summary, output)
    if rewriter is not None and rewriter.endpoint_failures:
        log.warning("the LLM endpoint failed for %d report(s): they have the rule-based result (--llm-fallback; "
                    "'llm_error' in their changes)", rewriter.endpoint_failures)
    return 1 if summary.failures else 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean", help="clean raw reports into 'FINDINGS: ... IMPRESSION: ...' JSONL",
        description="Clean raw chest X-ray reports (rule-based, offline; optional LLM rewriting). A run that was "
                    "interrupted continues where it stopped when run again (progress in OUTPUT.partial). "
                    "Exit status: 0 all items processed, 1 some items failed, 2 bad arguments, missing INPUT or "
                    "an LLM endpoint that fails (without --llm-fallback).")
    p.add_argument("input", metavar="INPUT",
                   help="folder of raw report .txt files (searched recursively; id = file stem) or a JSONL file "
                        'of {"id": ..., "text": ...}')
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="JSONL file to write (atomically)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if OUTPUT.partial holds the progress of an interrupted run")
    p.add_argument("--llm-endpoint", metavar="URL", default=None,
                   help="OpenAI-compatible base URL (…/v1) to rewrite reports with an LLM; off by default. https, "
                        "or plain http to a loopback host only (see --llm-allow-http); redirects are not followed")
    p.add_argument("--llm-model", metavar="NAME", default=None, help="model name for --llm-endpoint")
    p.add_argument("--llm-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default: %(default)s; unset: no key sent)")
    p.add_argument("--llm-timeout", type=float, default=60.0, metavar="S", help="seconds per HTTP request")
    p.add_argument("--llm-allow-http", action="store_true",
                   help="allow a plain http:// --llm-endpoint on a host that is not loopback (unencrypted)")
    p.add_argument("--llm-fallback", action="store_true",
                   help="when the endpoint fails (unreachable, HTTP error, timeout), give the rule-based result "
                        "and go on; without it the run stops with exit status 2")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_clean)
