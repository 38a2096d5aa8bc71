"""Image reading for chest radiographs: PNG and JPEG through Pillow, DICOM through pydicom.

`read_image(path)` returns one 2-D float32 array (H, W) in [0, 1] in *display* sense: 0 is black, 1 is white,
lungs dark and bones bright, whatever the file stored. Everything that is not a single greyscale image raises
ValueError naming the file and the problem (FileNotFoundError for a missing file).

The format is detected from the content, not the suffix: PNG signature, JPEG SOI marker, or `DICM` at offset
128 (the DICOM Part 10 preamble). A file with a `.dcm`/`.dicom`/`.dic` suffix but no preamble is tried as a
raw DICOM data set.

PNG / JPEG (Pillow):
  * 8-bit grey -> x / 255; 16-bit grey (`I;16`, `I`) -> x / 65535; 1-bit -> 0 / 1.
  * RGB (and CMYK / YCbCr JPEG, converted to RGB) -> ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B. Pillow reads
    16-bit-per-channel RGB(A) PNGs with 8-bit precision (it has no 16-bit colour mode).
  * RGBA / LA / palette (with or without tRNS transparency) -> composited on WHITE with their alpha.
  * EXIF orientation is not applied (nor is it by the authors' evaluation, which opens JPEGs with plain PIL).
  * animated PNGs (several frames) are rejected like multi-frame DICOM.

DICOM (pydicom >= 3, `pydicom.pixels`):
  * modality LUT / rescale slope and intercept (`apply_modality_lut`);
  * VOI LUT sequence, else window centre / width (LINEAR, LINEAR_EXACT, SIGMOID), first of several views
    (`apply_voi_lut`); the result is scaled by the VOI output range (window: what lies below the window is 0,
    above it 1; LUT: the LUT's lowest and highest entries);
  * without any VOI: min-max scaling of the modality values (as MIMIC-CXR-JPG's conversion did);
  * MONOCHROME1 (and MONOCHROME2 with Presentation LUT Shape INVERSE) is inverted;
  * RGB / YBR colour data -> luma as above; other photometric interpretations (PALETTE COLOR, ...) rejected;
  * multi-frame data, missing pixel data and compressed transfer syntaxes without an installed decoder are
    rejected with a ValueError that names the transfer syntax and the packages that would decode it.
  Not done: Pixel Padding Value masking, histogram equalisation (MIMIC-CXR-JPG equalised its JPEGs; we return
  the radiograph as the DICOM presents it).

Decompression-bomb guard: an image with more than `max_pixels` pixels (default DEFAULT_MAX_PIXELS = 80 MP) is
refused from its header, before any pixel data is decoded (PNG/JPEG: the header size; DICOM: Rows x Columns).
Pillow's own DecompressionBombWarning / DecompressionBombError (above Image.MAX_IMAGE_PIXELS, ~89.5 MP by
default) are turned into ValueError too, so a `max_pixels` above Pillow's limit is capped by it for PNG/JPEG.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_PIXELS", "detect_format", "read_image"]

DEFAULT_MAX_PIXELS = 80_000_000  # 80 MP: far above any radiograph (a 43x43 cm detector at 0.1 mm is ~18.5 MP)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R 601-2, as Pillow's RGB -> L
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PIP_NAMES = {"gdcm": "python-gdcm"}  # pydicom's dependency names that differ from the PyPI names


def _looks_like(head: bytes) -> str:
    """What an unrecognised file seems to be, without echoing its content (which may be a report) into logs."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # perhaps cut in a multi-byte character: judge the part before it
        text = head[:-3].decode("utf-8", "ignore")
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "the content looks like text"
    return "unrecognised content"


def detect_format(path: str | Path) -> str:
    """'png', 'jpeg', 'dicom' (Part 10 file with preamble) or 'dicom-raw' (no preamble, by suffix only).

    Raises FileNotFoundError for a missing file and ValueError for a directory, an empty file or content
    that is none of these formats.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an image file")
    if not path.is_file():  # a FIFO would block the read forever, /dev/zero never ends
        raise ValueError(f"{path}: not a regular file (a device, FIFO or socket); refusing to read it")
    with path.open("rb") as fh:
        head = fh.read(132)
    if not head:
        raise ValueError(f"{path}: empty file")
    if head.startswith(_PNG_MAGIC):
        fmt = "png"
    elif head.startswith(_JPEG_MAGIC):
        fmt = "jpeg"
    elif head[128:132] == b"DICM":
        fmt = "dicom"
    elif path.suffix.lower() in _DICOM_SUFFIXES:
        fmt = "dicom-raw"
    else:
        raise ValueError(f"{path}: not a PNG, JPEG or DICOM file ({_looks_like(head)})")
    suffix = path.suffix.lower()
    expected = {"png": (".png",), "jpeg": (".jpg", ".jpeg", ".jpe", ".jfif")}.get(fmt, _DICOM_SUFFIXES)
    if suffix and suffix not in expected and fmt != "dicom-raw":
        log.debug("%s: suffix %r but the content is %s; reading it as %s", path, suffix, fmt, fmt)
    return fmt


def read_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one greyscale radiograph as a 2-D float32 array (H, W) in [0, 1], 0 = black (see the module doc).

    `max_pixels`: refuse images with more pixels than this before decoding them (None: only Pillow's limit).
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt in _PIL_FORMATS:
        image = _read_pil(path, _PIL_FORMATS[fmt], max_pixels)
    else:
        image = _read_dicom(path, max_pixels, force=fmt == "dicom-raw")
    log.debug("%s: %s %dx%d", path, fmt, image.shape[1], image.shape[0])
    return image


# ---- PNG / JPEG ----------------------------------------------------------------------------------------
def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"{path}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"{path}: image is {width}x{height} = {width * height:,} pixels, more than the limit of "
                         f"{max_pixels:,} (decompression-bomb guard; raise max_pixels to read it)")


def _read_pil(path: Path, fmt: str, max_pixels: int | None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path, formats=[fmt])
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: refusing to decode a huge image (decompression-bomb guard): {err}") from None
        except UnidentifiedImageError as err:
            raise ValueError(f"{path}: not a readable {fmt} file ({err})") from None
        except Exception as err:  # Pillow raises OSError, SyntaxError, struct.error, ... on broken headers
            raise ValueError(f"{path}: broken {fmt} header ({type(err).__name__}: {err})") from None
        with img:
            _check_pixels(path, img.width, img.height, max_pixels)
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise ValueError(f"{path}: animated {fmt} with {frames} frames; expected a single image")
            try:
                img.load()
            except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
                raise ValueError(f"{path}: refusing to decode a huge image (decompression-bomb guard): "
                                 f"{err}") from None
            except Exception as err:  # truncated data, bad CRC, broken zlib/huffman stream
                raise ValueError(f"{path}: cannot decode the {fmt} pixel data, the file is truncated or corrupt "
                                 f"({type(err).__name__}: {err})") from None
            return _pil_to_grey(img, path)


def _pil_to_grey(img: Image.Image, path: Path) -> np.ndarray:
    """A loaded Pillow image of any PNG/JPEG mode -> (H, W) float32 in [0, 1]; alpha composited on white."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32) / 65535.0  # 16-bit PNG grey (Pillow uses I;16 or I)
        return np.clip(arr, 0.0, 1.0)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # applies the palette and its tRNS transparency
        mode = "RGBA"
    elif mode not in ("RGB", "RGBA", "LA", "La", "RGBa"):
        try:
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, ...
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: unsupported image mode {mode!r} ({err})") from None
        mode = "RGB"
    if mode == "La":
        img, mode = img.convert("LA"), "LA"
    if mode == "RGBa":
        img, mode = img.convert("RGBA"), "RGBA"
    arr = np.asarray(img, dtype=np.float64) / 255.0
    if mode in ("LA",):
        grey, alpha = arr[..., 0], arr[..., 1]
    else:
        grey = arr[..., :3] @ _LUMA
        alpha = arr[..., 3] if mode == "RGBA" else None
    if alpha is not None:
        grey = grey * alpha + (1.0 - alpha)  # composite on white
    return np.clip(grey, 0.0, 1.0).astype(np.float32)


# ---- DICOM ---------------------------------------------------------------------------------------------
def _install_hint(decoder: object) -> str:
    """Turn pydicom's `missing_dependencies` ('pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1')
    into `pip install ...` suggestions."""
    hints = []
    lines = getattr(decoder, "missing_dependencies", []) or []
    for line in sorted(lines, key=lambda text: not text.startswith("pylibjpeg")):  # pure pip wheels first
        names = [_PIP_NAMES.get(n, n) for n in re.findall(r"([A-Za-z0-9_.-]+)\s*>=", line)]
        if names:
            hints.append("pip install " + " ".join(dict.fromkeys(names)))
    return " or ".join(f"`{h}`" for h in hints) if hints else "a pydicom pixel-data plugin (pylibjpeg or gdcm)"


def _read_dicom(path: Path, max_pixels: int | None, *, force: bool) -> np.ndarray:
    try:
        import pydicom
        from pydicom.dataset import FileMetaDataset
        from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
        from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    except ImportError as err:  # pydicom < 3 has no pydicom.pixels
        raise ValueError(f"{path}: reading DICOM needs pydicom >= 3.0 (`pip install -U pydicom`): {err}") from None

    try:
        # Elements above 64 KB (the pixel data) are read only when used: the header checks come first.
        ds = pydicom.dcmread(path, defer_size="64 KB", force=force)
    except Exception as err:  # InvalidDicomError, EOFError, struct errors on truncated headers, ...
        raise ValueError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None

    if not any(key in ds for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if force:
            raise ValueError(f"{path}: not a DICOM image (no 'DICM' marker at offset 128 and no pixel data)")
        sop = ds.get("SOPClassUID")
        what = f" (SOP class {UID(str(sop)).name})" if sop else ""
        raise ValueError(f"{path}: DICOM file has no pixel data{what}")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols:
        raise ValueError(f"{path}: DICOM pixel data without Rows/Columns")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise ValueError(f"{path}: multi-frame DICOM ({frames} frames); expected a single radiograph")
    _check_pixels(path, int(cols), int(rows), max_pixels)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in _MONOCHROME + _COLOUR:
        raise ValueError(f"{path}: unsupported DICOM photometric interpretation {photometric!r}")

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:  # raw data set without a file meta header
        implicit, _ = ds.original_encoding
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ValueError(f"{path}: pydicom has no decoder for transfer syntax {tsyntax.name} ({tsyntax})") from None
    if not decoder.is_available:
        raise ValueError(f"{path}: pixel data is compressed with {tsyntax.name} ({tsyntax}) and no installed "
                         f"package can decode it; install one: {_install_hint(decoder)}")

    try:
        arr = ds.pixel_array
    except Exception as err:  # short pixel data, corrupt codestream, ...
        raise ValueError(f"{path}: cannot decode the DICOM pixel data ({tsyntax.name}), the file is truncated "
                         f"or corrupt ({type(err).__name__}: {err})") from None
    if arr.ndim == 3 and photometric in _COLOUR:
        bits = int(ds.get("BitsStored", 8) or 8)
        grey = (arr.astype(np.float64) @ _LUMA) / (2.0 ** bits - 1)
        return np.clip(grey, 0.0, 1.0).astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected one 2-D greyscale image, got pixel array of shape {arr.shape}")

    try:  # pydicom refuses e.g. WindowWidth 0 (< 1 for LINEAR) with a ValueError that does not name the file
        with np.errstate(invalid="ignore", divide="ignore"):
            values = apply_modality_lut(arr, ds)
            if values.dtype.kind == "f" and np.all(values == np.round(values)):
                values = values.astype(np.int64)  # integral after rescale: keep apply_voi's integer LUT indexing
            lo_hi = _voi_output_range(ds, apply_voi_lut)
            if lo_hi is None:
                values = values.astype(np.float64)
                lo, hi = float(values.min()), float(values.max())
                log.debug("%s: no VOI LUT or window; min-max scaling [%g, %g]", path, lo, hi)
            else:
                values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
                lo, hi = lo_hi
    except Exception as err:  # invalid window, broken LUT descriptor, ...
        raise ValueError(f"{path}: cannot apply the DICOM rescale / window ({_voi_elements(ds)}): "
                         f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(values).all()):
        raise ValueError(f"{path}: the DICOM rescale / window gives non-finite pixel values ({_voi_elements(ds)})")
    if hi == lo:
        log.warning("%s: the image is constant after VOI; returning a flat image", path)
        out = np.zeros(values.shape, dtype=np.float64)
    else:
        out = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out
    return out.astype(np.float32)


def _voi_elements(ds: object) -> str:
    """`WindowCenter=.., WindowWidth=.., ...`: the elements of the rescale and VOI transforms present in `ds`."""
    names = ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction")
    shown = [f"{n}={ds.get(n)}" for n in names if ds.get(n) is not None]  # type: ignore[attr-defined]
    if ds.get("VOILUTSequence"):  # type: ignore[attr-defined]
        shown.append("VOILUTSequence")
    return ", ".join(shown) or "no rescale or window elements"


def _voi_output_range(ds: object, apply_voi_lut: object) -> tuple[float, float] | None:
    """(black, white) output values of the VOI transform that pydicom's apply_voi_lut(prefer_lut=True) applies,
    or None when there is none. Found by probing the transform itself, so it follows pydicom's rules exactly:
    a window maps -inf to its black and +inf to its white level; a LUT is probed over all its entries."""
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq and lut_seq[0].get("LUTDescriptor") is not None and lut_seq[0].get("LUTData") is not None:
        entries, first, _ = (int(v) for v in lut_seq[0].LUTDescriptor)
        probe = np.arange(first, first + (entries or 2 ** 16), dtype=np.int64)
        out = np.asarray(apply_voi_lut(probe, ds, index=0, prefer_lut=True), dtype=np.float64)
        return float(out.min()), float(out.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = np.asarray(apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0, prefer_lut=True), dtype=np.float64)
        return float(out[0]), float(out[1])
    return None
