"""Quality of a phantom model trained by `unix-cxr train --config phantom-tiny` (a script that prints figures).

    python benchmarks/phantom_quality.py --run RUN [--release RUN/gen_ft/final] [--json out.json]
        [--quantize int8|int4] [--step-cache taylor] [--steps 50]

On the run's validation phantoms (`RUN/data/phantoms/val`, drawn from another seed than the training phantoms):

1. Reports: the model reads every validation image (greedy); the rule labeler (`unix_cxr.eval.labeler`) labels the
   generated reports; CheXpert F1 against the phantoms' true labels (`labels.jsonl`), uncertain as negative and as
   positive. Macro-14 averages all 14 labels, 5 of which no phantom ever has (they count 0), so the macro over
   the labels that occur in the validation set is printed too. The labeler on the true reports is the ceiling.
   With `--quantize`, the unquantized model's reports too: how many are word for word the same, and the share of
   its tokens that come before each report's first difference.
2. Images: a phantom-finding classifier (`unix_cxr.eval.phantom_classifier`) is trained on phantoms drawn here
   from a third seed (cached in `RUN/eval/classifier`), then scored on the real validation phantoms at the
   model's image size (its own accuracy), on their VAE reconstructions (what the VAE leaves visible), and on the
   images the model draws from the validation reports (one per report, seed 0). Truth: the findings of the specs.
3. FD (Inception, fid-helper weights; images squashed to 299 px as the authors do) of the generated images
   against the real validation phantoms, next to FD of real training phantoms against the same real ones
   (same count, same size).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("phantom_quality")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def grey_images(folder: Path, ids: list[str], size: int) -> np.ndarray:
    """(N, size, size) uint8 phantoms of a folder, resized as the VAE transform does."""
    from unix_cxr.data.transforms import vae_image

    return np.stack([np.asarray(vae_image(folder / "images" / f"{i}.png", size)) for i in ids])


def to_299(images: np.ndarray) -> np.ndarray:
    """(N, H, W[, 3]) uint8 -> (N, 299, 299, 3) uint8: PIL RGB, bilinear squash (as `image_metrics.load_image`)."""
    from PIL import Image

    from unix_cxr.eval.image_metrics import METRIC_IMAGE_SIZE

    h, w = METRIC_IMAGE_SIZE
    return np.stack([np.asarray(Image.fromarray(a).convert("RGB").resize((w, h), Image.Resampling.BILINEAR))
                     for a in images])


def f1_table(pred: dict, ref: dict, present: list[str]) -> dict:
    from unix_cxr.eval.report_metrics import chexpert_f1

    out = {}
    for mode in ("uncertain_as_negative", "uncertain_as_positive"):
        r = chexpert_f1(pred, ref, "CheXpert-rule F1 (unix-cxr labeler)", mode)
        per = r.per_class_dict()
        out[mode] = {**r.summary(), f"macro_{len(present)}_present": float(np.mean([per[n].f1 for n in present])),
                     "per_class": {n: {"f1": per[n].f1, "support": per[n].support} for n in present}}
    return out


def agreement(quantized: list, plain: list) -> dict:
    """Reports identical word for word, reports compared, and the percentage of the plain reports' tokens (EOS
    included) that come before each report's first differing token."""
    same = prefix = total = 0
    for q, p in zip(quantized, plain, strict=True):
        same += q.text == p.text
        a, b = [*q.token_ids, None], [*p.token_ids, None]
        prefix += next((j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        total += len(b)
    return {"identical": same, "reports": len(plain), "token_prefix_pct": round(100 * prefix / total, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the --output folder of the phantom-tiny run")
    parser.add_argument("--release", type=Path, help="release folder (default RUN/gen_ft/final)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N validation phantoms")
    parser.add_argument("--classifier-n", type=int, default=4000, help="phantoms the classifier is trained on")
    parser.add_argument("--classifier-seed", type=int, default=11)
    parser.add_argument("--classifier-epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images")
    parser.add_argument("--steps", type=int, default=None, help="sampling time points (default: the model's)")
    parser.add_argument("--cfg", type=float, default=None, help="text CFG scale (default: the model's)")
    parser.add_argument("--no-fd", action="store_true", help="skip the Inception FD")
    parser.add_argument("--step-cache", choices=("none", "taylor"), default="none",
                        help="taylor: the image loop's step cache (unix_cxr.infer.step_cache) for the images")
    parser.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                        help="int8 / int4: weight-only int8 / int4 decoding (unix_cxr.infer.quantize) for the reports")
    parser.add_argument("--reports-only", action="store_true", help="only part 1 (reports)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("unix_cxr").setLevel(logging.WARNING)

    from unix_cxr.chexpert import CHEXPERT_LABELS
    from unix_cxr.eval.labeler import Labeler
    from unix_cxr.eval.phantom_classifier import PhantomClassifier, finding_scores, finding_targets, train_classifier
    from unix_cxr.infer.pipeline import UniXPipeline

    run = args.run
    release = args.release or run / "gen_ft" / "final"
    val = run / "data" / "phantoms" / "val"
    reports = {r["id"]: r["report"] for r in read_jsonl(val / "reports.jsonl")}
    truth = {r["id"]: r["labels"] for r in read_jsonl(val / "labels.jsonl")}
    specs = {r["id"]: r["spec"] for r in read_jsonl(val / "specs.jsonl")}
    ids = list(reports)[: args.limit or None]
    figures: dict = {"run": str(run), "release": str(release), "n_val": len(ids)}
    pipe = UniXPipeline.from_pretrained(release, batch_size=16, quantize=args.quantize,
                                        sampling={"step_cache": args.step_cache})
    size = pipe.image_size
    labeler = Labeler()

    # ---- 1. reports --------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    generated = pipe.report([str(val / "images" / f"{i}.png") for i in ids])
    seconds = time.perf_counter() - t0
    pred = {i: labeler.label(r.text) for i, r in zip(ids, generated, strict=True)}
    ref = {i: truth[i] for i in ids}
    present = [n for n in CHEXPERT_LABELS if any(ref[i][n] in (1, -1) for i in ids)]
    figures["reports"] = f1_table(pred, ref, present)
    figures["reports"]["ceiling_true_reports"] = f1_table({i: labeler.label(reports[i]) for i in ids}, ref,
                                                          present)["uncertain_as_negative"]["micro_14"]
    figures["reports"]["unfinished"] = sum(not r.finished for r in generated)
    figures["reports"]["seconds"] = round(seconds, 1)
    figures["reports"]["examples"] = [{"id": i, "true": reports[i], "generated": r.text}
                                      for i, r in list(zip(ids, generated, strict=True))[:3]]
    if args.quantize != "none":  # the same reports without quantization: how many are word for word the same
        figures["reports"]["against_unquantized"] = agreement(
            generated, UniXPipeline.from_pretrained(release, batch_size=16).report(
                [str(val / "images" / f"{i}.png") for i in ids]))
        log.info("%s against unquantized: %d of %d reports identical, %.1f %% of the unquantized tokens before a "
                 "report's first difference", args.quantize, *figures["reports"]["against_unquantized"].values())
    uan, uap = figures["reports"]["uncertain_as_negative"], figures["reports"]["uncertain_as_positive"]
    log.info("reports (%d validation phantoms, %.0f s): micro-14 F1 %.3f, macro-14 %.3f, macro over the %d labels "
             "present %.3f (uncertain as negative); uncertain as positive: micro-14 %.3f, macro-%d %.3f",
             len(ids), seconds, uan["micro_14"], uan["macro_14"], len(present), uan[f"macro_{len(present)}_present"],
             uap["micro_14"], len(present), uap[f"macro_{len(present)}_present"])
    for name in present:
        log.info("  %-20s F1 %.3f (support %d)", name, uan["per_class"][name]["f1"], uan["per_class"][name]["support"])

    if args.reports_only:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0

    # ---- 2. images: classifier ------------------------------------------------------------------------------
    cache = run / "eval" / "classifier"
    if (cache / "classifier.json").is_file() and json.loads((cache / "classifier.json").read_text()).get(
            "n") == args.classifier_n and PhantomClassifier.load(cache).size == size:
        clf = PhantomClassifier.load(cache)
        log.info("phantom classifier from %s", cache)
    else:
        t0 = time.perf_counter()
        clf = train_classifier(n=args.classifier_n, seed=args.classifier_seed, size=size,
                               epochs=args.classifier_epochs)
        clf.save(cache, {"n": args.classifier_n, "seed": args.classifier_seed, "epochs": args.classifier_epochs,
                         "seconds": round(time.perf_counter() - t0, 1)})
    targets = np.stack([finding_targets(specs[i]) for i in ids])
    real = grey_images(val, ids, size)
    scores = {"real": finding_scores(clf.predict(real), targets)}
    if pipe.vae is not None:
        x = (torch.from_numpy(real).float() / 127.5 - 1)[:, None].repeat(1, 3, 1, 1)
        with torch.no_grad():
            rec = torch.cat([pipe.vae(x[s:s + 64]) for s in range(0, len(x), 64)])
        rec_u8 = ((rec[:, 0] / 2 + 0.5).clamp(0, 1) * 255).to(torch.uint8).numpy()
        scores["vae_reconstruction"] = finding_scores(clf.predict(rec_u8), targets)
    t0 = time.perf_counter()
    drawn = pipe.generate([reports[i] for i in ids], seed=args.seed, steps=args.steps, cfg=args.cfg)
    draw_seconds = time.perf_counter() - t0
    fake = np.stack([img.pixels for img in drawn])
    scores["generated"] = finding_scores(clf.predict(fake), targets)
    figures["images"] = {k: s.to_dict() for k, s in scores.items()}
    figures["images"]["seconds_drawing"] = round(draw_seconds, 1)
    for what, s in scores.items():
        log.info("classifier on %-19s finding micro-F1 %.3f, macro-F1 %.3f, accuracy %.3f, exact match %.3f", what,
                 s.micro_f1, s.macro_f1, s.accuracy, s.exact_match)
    vae_scores = scores.get("vae_reconstruction", scores["real"])
    for name, row in scores["real"].per_label.items():
        log.info("  %-17s real %.3f  VAE %.3f  generated %.3f (support %d)", name, row["f1"],
                 vae_scores.per_label[name]["f1"], scores["generated"].per_label[name]["f1"], row["support"])
    out_dir = run / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    _contact_sheet(real[:8], fake[:8], out_dir / "real_vs_generated.png")

    # ---- 3. FD ----------------------------------------------------------------------------------------------
    if not args.no_fd:
        from unix_cxr.eval.image_metrics import InceptionEncoder, extract_features, frechet_distance

        train_dir = run / "data" / "phantoms" / "train"
        train_ids = [r["id"] for r in read_jsonl(train_dir / "reports.jsonl")][: len(ids)]
        enc = InceptionEncoder(batch_size=16)
        t0 = time.perf_counter()
        f_val = extract_features(enc, to_299(real), batch_size=16, progress=False)
        f_train = extract_features(enc, to_299(grey_images(train_dir, train_ids, size)), batch_size=16, progress=False)
        f_fake = extract_features(enc, to_299(fake), batch_size=16, progress=False)
        figures["fd"] = {"generated_vs_real": frechet_distance(f_val, f_fake),
                         "real_vs_real": frechet_distance(f_val, f_train), "n": len(ids), "size": size,
                         "encoder": enc.name, "seconds": round(time.perf_counter() - t0, 1)}
        log.info("FD (%s, %d vs %d images of %d px): generated vs real %.1f; real (training) vs real %.1f",
                 enc.name, len(ids), len(ids), size, figures["fd"]["generated_vs_real"], figures["fd"]["real_vs_real"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def _contact_sheet(real: np.ndarray, fake: np.ndarray, path: Path) -> None:
    """Two rows: real validation phantoms, the images drawn from their reports."""
    from PIL import Image

    from unix_cxr.eval.phantom_classifier import as_grey

    rows = [np.concatenate(list(as_grey(real)), axis=1), np.concatenate(list(as_grey(fake)), axis=1)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


if __name__ == "__main__":
    sys.exit(main())
