"""`unix-cxr demo`: the README's first command. Offline, with the model shipped in the package, it reads a bundled
phantom radiograph (writes its report), draws a radiograph from a bundled report, and saves both under
`./unix-cxr-demo/`:

    input.png                 the radiograph it read (the bundled phantom), 8-bit grey
    report.txt                the report the model wrote for it
    report_labels.json        the labeler's reading of that report (14 CheXpert labels) next to the phantom's truth
    drawn.png                 the radiograph drawn from the bundled report (marked synthetic in its metadata)
    drawn_prompt.txt          that report
    drawn_labels.json         the labeler's reading of the prompt: the findings the drawing should show

`--model weights/UniX` runs the same job with the released weights (a release folder) on your own image
(`--image`) and report (`--report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .options import add_model_options, load_pipeline

log = logging.getLogger(__name__)

NOTICE = ("The demo model was trained in minutes on synthetic phantom radiographs (unix-cxr train --config "
          "phantom-tiny), not on patients: its reports and images show what the pipeline does, nothing clinical. "
          "For the released UniX weights: unix-cxr demo --model weights/UniX (a release folder; docs/weights.md). "
          "Research use only; not for diagnosis.")


def _assets() -> Path:
    from importlib.resources import files

    return Path(str(files("unix_cxr").joinpath("assets", "demo")))


def _found(labels: dict) -> str:
    named = {1: "", -1: " (uncertain)"}
    found = [f"{k}{named[v]}" for k, v in labels.items() if v in named and k != "No Finding"]
    return ", ".join(found) if found else "no finding"


def _png(grey) -> bytes:
    import io

    from PIL import Image

    from ..infer.pipeline import as_grey_uint8

    buf = io.BytesIO()
    Image.fromarray(as_grey_uint8(grey)).save(buf, format="PNG")
    return buf.getvalue()


def _cmd_demo(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.imageio import read_image
    from ..infer.marking import save_synthetic_png
    from ..utils.atomic import write_atomic

    assets = _assets()
    image = Path(args.image) if args.image else assets / "phantom.png"
    prompt = Path(args.report).read_text(encoding="utf-8") if args.report else (assets / "report.txt").read_text(
        encoding="utf-8")
    if not image.is_file():
        raise FileNotFoundError(f"--image {image}: no such file")
    if not prompt.strip():
        raise ValueError("the report to draw from is empty")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} exists and is not a folder")
    if args.model == "demo":
        sys.stdout.write(NOTICE + "\n")
    began = time.perf_counter()
    pipe = load_pipeline(args)
    steps = pipe.drawer.sampling.num_timesteps - 1 if args.steps is None else args.steps - 1
    max_tokens = pipe.reporter.decoding.max_new_tokens
    with tqdm(total=max_tokens + steps, desc="demo", unit="step", disable=args.no_progress) as bar:
        bar.set_postfix_str("reading the radiograph")
        [rep] = pipe.report([str(image)], labels=True, on_token=lambda _ids: bar.update(1))
        bar.n = max_tokens
        bar.set_postfix_str("drawing a radiograph")
        [drawn] = pipe.generate([prompt], seed=args.seed, steps=args.steps,
                                on_step=lambda done, _total: bar.update(max_tokens + done - bar.n))
    prompt_labels = pipe.labeler.label(prompt)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "input.png", _png(read_image(image)))
    write_atomic(out / "report.txt", rep.text + "\n")
    truth = assets / "phantom_labels.json"
    reading = {"labels": rep.labels, "found": _found(rep.labels), "finished": rep.finished}
    if not args.image and truth.is_file():
        reading["truth"] = json.loads(truth.read_text(encoding="utf-8"))
    write_atomic(out / "report_labels.json", json.dumps(reading, indent=1) + "\n")
    save_synthetic_png(out / "drawn.png", drawn.pixels, model=pipe.name, prompt=drawn.prompt, seed=drawn.seed)
    write_atomic(out / "drawn_prompt.txt", prompt.strip() + "\n")
    write_atomic(out / "drawn_labels.json", json.dumps({"labels": prompt_labels, "found": _found(prompt_labels)},
                                                       indent=1) + "\n")
    sys.stdout.write(
        f"read {image.name}: {_found(rep.labels)}\n  report: {rep.text}\n"
        f"drew a radiograph of: {_found(prompt_labels)} (seed {drawn.seed})\n"
        f"saved in {out.resolve()}/ (report.txt, report_labels.json, drawn.png, drawn_labels.json) "
        f"in {time.perf_counter() - began:.1f} s\n")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="offline demo: read a bundled phantom radiograph and draw one from a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p, default_batch=1)
    p.add_argument("-o", "--output", default="unix-cxr-demo", help="folder to write (default ./unix-cxr-demo)")
    p.add_argument("--image", help="read this radiograph (PNG, JPEG, DICOM) instead of the bundled phantom")
    p.add_argument("--report", help="draw from the report in this text file instead of the bundled one")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn image")
    p.add_argument("--steps", type=int, default=None, help="sampling time points (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
