"""Image I/O and the model's image transforms (unix_cxr.data.imageio / transforms / preview_cli).

DICOM files are generated here with pydicom; PNG/JPEG files are written here with Pillow (or by hand where
Pillow cannot write the variant). Real data when present: the chest CR of the `pydicom-data` package and the
radiographs in ../shared/data/real_cxr (skipped with a reason otherwise).
"""

from __future__ import annotations

import importlib.metadata
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unix_cxr.cli import main
from unix_cxr.config import VisionConfig, load_config
from unix_cxr.data.imageio import DEFAULT_MAX_PIXELS, detect_format, read_image
from unix_cxr.data.transforms import (
    as_uint8_grey,
    siglip_image,
    siglip_to_uint8,
    siglip_transform,
    vae_image,
    vae_to_uint8,
    vae_transform,
)

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

REAL_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_cxr"
VISION = VisionConfig()
S = VISION.image_size
MEAN, STD = VISION.pixel_mean, VISION.pixel_std


# ---- helpers -------------------------------------------------------------------------------------------
def ramp(h: int = 24, w: int = 20, bits: int = 12) -> np.ndarray:
    """A deterministic (h, w) uint16 image spanning 0 .. 2**bits - 1 (both ends present)."""
    rng = np.random.default_rng(bits * 1000 + h * 10 + w)
    arr = rng.integers(0, 2 ** bits, size=(h, w), dtype=np.int64)
    arr.flat[0], arr.flat[-1] = 0, 2 ** bits - 1
    return arr.astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                signed: bool = False, frames: int = 1, tsyntax: UID = ExplicitVRLittleEndian,
                encapsulated: bytes | None = None, **elements: object) -> Path:
    """A minimal CR DICOM Part 10 file; extra keyword arguments become data elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = tsyntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    rows, cols = (pixels.shape[-2:] if pixels is not None else (16, 16))
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in elements.items():
        setattr(ds, key, value)
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    elif pixels is not None:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
        ds["PixelData"].VR = "OW"
    ds.save_as(path, enforce_file_format=True)
    return path


def window_linear(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window as a fraction of the output range."""
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> bytes:
    """A PNG written by hand (for variants Pillow cannot write, and for lying headers)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw_rows))
            + png_chunk(b"IEND", b""))


def authors_siglip(path: Path, size: int = S) -> np.ndarray:
    """The authors' evaluation preprocessing, literally (spec 4.1): uint8 (size, size, 3)."""
    with Image.open(path) as src:
        img = src.convert("RGBA")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas.convert("RGB"))


def pydicom_data_file(name: str) -> Path:
    try:
        dist = importlib.metadata.distribution("pydicom-data")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data, or the project's [test] extra)")
    path = Path(dist.locate_file(f"data_store/data/{name}"))
    if not path.is_file():
        pytest.skip(f"pydicom-data {dist.version} has no data_store/data/{name}")
    return path


def real_images(folder: str) -> list[Path]:
    files = sorted((REAL_CXR / folder).glob("*.png"))
    if not files:
        pytest.skip(f"real radiographs not present: {REAL_CXR / folder} (../shared/data is not in a fresh clone)")
    return files


# ---- DICOM (generated) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_dicom_monochrome2_minmax(tmp_path: Path, bits: int) -> None:
    raw = ramp(bits=bits)
    out = read_image(write_dicom(tmp_path / "a.dcm", raw, bits_stored=bits))
    assert out.dtype == np.float32 and out.shape == raw.shape
    expected = (raw - raw.min()) / float(raw.max() - raw.min())
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    raw = ramp()
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", raw))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[raw == raw.max()].max() == 0.0  # the highest stored value is black in MONOCHROME1


def test_dicom_window_centre_width(tmp_path: Path) -> None:
    raw = ramp()
    centre, width = 2000.0, 1000.0
    out = read_image(write_dicom(tmp_path / "w.dcm", raw, WindowCenter=centre, WindowWidth=width))
    np.testing.assert_allclose(out, window_linear(raw.astype(np.float64), centre, width), atol=1e-6)
    assert (out[raw < 1400] == 0).all() and (out[raw > 2600] == 1).all()  # outside the window: clipped


@pytest.mark.parametrize("elements, words", [
    ({"WindowCenter": 100.0, "WindowWidth": 0.0}, "cannot apply the DICOM rescale / window .*WindowWidth=0"),
    ({"WindowCenter": 100.0, "WindowWidth": -5.0}, "cannot apply the DICOM rescale / window .*WindowWidth=-5"),
    ({"WindowCenter": 100.0, "WindowWidth": 0.0, "VOILUTFunction": "SIGMOID"}, "cannot apply .*greater than 0"),
    ({"WindowCenter": 100.0, "WindowWidth": "nan"}, "gives non-finite pixel values .*WindowWidth=nan"),
    ({"RescaleSlope": "inf", "RescaleIntercept": 0.0}, "gives non-finite pixel values .*RescaleSlope=inf"),
], ids=["width_0", "width_negative", "sigmoid_width_0", "width_nan", "slope_inf"])
def test_dicom_invalid_window_names_the_file(tmp_path: Path, elements: dict, words: str) -> None:
    path = tmp_path / "bad_window.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about a DS of 'nan' / 'inf', and writes it
        write_dicom(path, ramp(), **elements)
    with pytest.raises(ValueError, match=rf"^{path}: .*{words}"):
        read_image(path)


def test_dicom_rescale_slope_intercept(tmp_path: Path) -> None:
    raw = ramp()
    slope, intercept, centre, width = 2.0, -1024.0, 1500.0, 3000.0  # window in rescaled (modality) units
    out = read_image(write_dicom(tmp_path / "r.dcm", raw, RescaleSlope=slope, RescaleIntercept=intercept,
                                 RescaleType="US", WindowCenter=centre, WindowWidth=width))
    np.testing.assert_allclose(out, window_linear(raw * slope + intercept, centre, width), atol=1e-6)
    # the same window read on the unrescaled values would differ: the rescale was applied
    assert np.abs(out - window_linear(raw.astype(np.float64), centre, width)).max() > 0.1


def test_dicom_signed_with_rescale_and_monochrome1(tmp_path: Path) -> None:
    raw = ramp().astype(np.int32) - 2048  # signed 12-bit
    out = read_image(write_dicom(tmp_path / "s.dcm", raw, signed=True, photometric="MONOCHROME1",
                                 RescaleSlope=1.0, RescaleIntercept=100.0, WindowCenter=100.0, WindowWidth=2000.0))
    np.testing.assert_allclose(out, 1.0 - window_linear(raw + 100.0, 100.0, 2000.0), atol=1e-6)


def test_dicom_12bit_voi_lut_sequence(tmp_path: Path) -> None:
    raw = ramp(bits=12)
    lut = np.round(4095 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)  # a gamma-like VOI LUT
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = lut.tolist()
    item["LUTData"].VR = "US"
    # a window is present as well: the VOI LUT takes precedence (pydicom apply_voi_lut, prefer_lut=True)
    path = write_dicom(tmp_path / "lut.dcm", raw, VOILUTSequence=Sequence([item]), WindowCenter=100.0,
                       WindowWidth=10.0)
    np.testing.assert_allclose(read_image(path), lut[raw] / 4095.0, atol=1e-6)


def test_dicom_multiframe_rejected(tmp_path: Path) -> None:
    frames = np.stack([ramp(), ramp()])
    path = write_dicom(tmp_path / "mf.dcm", frames, frames=2)
    with pytest.raises(ValueError, match=r"mf\.dcm: multi-frame DICOM \(2 frames\)"):
        read_image(path)


def test_dicom_missing_pixel_data_rejected(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ValueError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        read_image(path)


def _undecodable_syntaxes() -> list[UID]:
    candidates = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.70",
                  "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.203"]
    return [UID(uid) for uid in candidates if not get_decoder(UID(uid)).is_available]


def test_dicom_compressed_without_decoder_rejected(tmp_path: Path) -> None:
    missing = _undecodable_syntaxes()
    if not missing:
        pytest.skip("every candidate compressed transfer syntax has a decoder installed here")
    tsyntax = missing[0]
    path = write_dicom(tmp_path / "c.dcm", None, tsyntax=tsyntax, encapsulated=b"\xff\xd8\xff\xf7" + bytes(64))
    with pytest.raises(ValueError) as info:
        read_image(path)
    message = str(info.value)
    assert "c.dcm" in message and tsyntax.name in message and str(tsyntax) in message
    assert "pip install" in message and "pylibjpeg" in message


def test_dicom_bomb_guard_uses_rows_columns(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "big.dcm", ramp(40, 50))
    with pytest.raises(ValueError, match=r"50x40 = 2,000 pixels, more than the limit of 1,999"):
        read_image(path, max_pixels=1999)
    assert read_image(path, max_pixels=2000).shape == (40, 50)


def test_dicom_truncated_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "t.dcm", ramp(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ValueError, match=r"t\.dcm: .*(truncated|corrupt|DICOM)"):
        read_image(path)


def test_dicom_detected_by_content_not_suffix(tmp_path: Path) -> None:
    raw = ramp()
    path = write_dicom(tmp_path / "really_dicom.png", raw)
    assert detect_format(path) == "dicom"
    np.testing.assert_allclose(read_image(path), (raw - raw.min()) / float(raw.max() - raw.min()), atol=1e-6)


def test_dicom_without_preamble_by_suffix(tmp_path: Path) -> None:
    raw = ramp()
    ds = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", raw))
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "raw.dcm", ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert detect_format(tmp_path / "raw.dcm") == "dicom-raw"
    np.testing.assert_array_equal(read_image(tmp_path / "raw.dcm"), read_image(tmp_path / "a.dcm"))


# ---- PNG / JPEG ----------------------------------------------------------------------------------------
def grey8(h: int = 30, w: int = 40) -> np.ndarray:
    arr = (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)
    arr[0, 0], arr[-1, -1] = 0, 255
    return arr


def test_png_8bit_grey(tmp_path: Path) -> None:
    arr = grey8()
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr.astype(np.float32) / 255)


def test_png_16bit_grey(tmp_path: Path) -> None:
    arr = (np.arange(30 * 40).reshape(30, 40) * 54 % 65536).astype(np.uint16)
    arr[0, 0], arr[-1, -1] = 0, 65535
    Image.fromarray(arr).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # really written as 16-bit
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), arr / 65535.0, atol=1e-7)


def test_png_rgb_is_luma(tmp_path: Path) -> None:
    rgb = np.stack([grey8(), grey8()[::-1], np.full((30, 40), 128, np.uint8)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    expected = (rgb / 255.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), expected, atol=1e-6)
    grey_rgb = np.repeat(grey8()[..., None], 3, axis=-1)  # a grey radiograph saved as RGB: exactly its grey
    Image.fromarray(grey_rgb).save(tmp_path / "gr.png")
    np.testing.assert_allclose(read_image(tmp_path / "gr.png"), grey8() / 255.0, atol=1e-6)


def test_png_16bit_rgb_hand_written(tmp_path: Path) -> None:
    h, w = 6, 5
    values = (np.arange(h * w * 3).reshape(h, w, 3) * 2000 % 65536).astype(">u2")
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(h))
    (tmp_path / "c16.png").write_bytes(png_bytes(w, h, 16, 2, rows))
    expected = (values.astype(np.float64) / 65535.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(read_image(tmp_path / "c16.png"), expected, atol=1 / 255)  # Pillow: 8-bit precision


def test_png_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[0, :, 3] = 0  # transparent -> white
    rgba[1, :, 3] = 255  # opaque -> 100 / 255
    rgba[2:, :, 3] = 128  # half -> 100/255 * a + (1 - a)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    a = 128 / 255
    np.testing.assert_allclose(out[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 100 / 255, atol=1e-6)
    np.testing.assert_allclose(out[2:], 100 / 255 * a + (1 - a), atol=1e-6)


def test_png_la_composited_on_white(tmp_path: Path) -> None:
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0] = 50
    la[0, :, 1] = 0
    la[1, :, 1] = 255
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png")
    np.testing.assert_allclose(out, [[1.0] * 3, [50 / 255] * 3], atol=1e-6)


def test_png_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (3, 2))
    img.putpalette([0, 0, 0, 255, 255, 255, 200, 100, 50] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 2, 1, 0])
    img.info["transparency"] = 0  # palette index 0 is transparent -> white
    img.save(tmp_path / "p.png", transparency=0)
    out = read_image(tmp_path / "p.png")
    luma = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(out, [[1.0, 1.0, luma], [luma, 1.0, 1.0]], atol=1e-6)


def test_jpeg_grey_and_rgb(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 64), (48, 1)).round().astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "g.jpg", quality=100)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (48, 64)
    assert np.abs(out - smooth / 255.0).max() < 4 / 255
    Image.fromarray(np.repeat(smooth[..., None], 3, -1)).save(tmp_path / "c.jpeg", quality=100)
    assert np.abs(read_image(tmp_path / "c.jpeg") - smooth / 255.0).max() < 4 / 255


def test_format_by_content(tmp_path: Path) -> None:
    Image.fromarray(grey8()).save(tmp_path / "x.jpg", format="PNG")  # a PNG called .jpg
    assert detect_format(tmp_path / "x.jpg") == "png"
    np.testing.assert_array_equal(read_image(tmp_path / "x.jpg"), grey8() / np.float32(255))


# ---- bad input -----------------------------------------------------------------------------------------
def test_non_image_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(b"FINDINGS: no acute cardiopulmonary process.\n" * 5)
    with pytest.raises(ValueError, match=r"notes\.png: not a PNG, JPEG or DICOM file"):
        read_image(path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match=r"fake\.dcm: not a DICOM image"):
        read_image(tmp_path / "fake.dcm")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="directory"):
        read_image(tmp_path)


def test_truncated_png_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(200, 200), dtype=np.uint8)  # incompressible: truncation hits IDAT
    Image.fromarray(noisy).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png: .*truncated or corrupt"):
        read_image(tmp_path / "cut.png")
    Image.fromarray(noisy).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg: .*truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "head.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # signature, broken header
    with pytest.raises(ValueError, match=r"head\.png"):
        read_image(tmp_path / "head.png")


def test_bomb_guard_png_header_claims_100k_squared(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 101))  # tiny file, 10 gigapixel header
    with pytest.raises(ValueError, match=r"bomb\.png: .*(decompression-bomb|huge)"):
        read_image(path)
    with pytest.raises(ValueError, match=r"bomb\.png"):
        read_image(path, max_pixels=None)  # Pillow's own limit still applies, as a ValueError


def test_bomb_guard_configurable(tmp_path: Path) -> None:
    Image.fromarray(grey8()).save(tmp_path / "g.png")  # 40 x 30
    with pytest.raises(ValueError, match=r"g\.png: image is 40x30 = 1,200 pixels, more than the limit of 1,000"):
        read_image(tmp_path / "g.png", max_pixels=1000)
    assert read_image(tmp_path / "g.png", max_pixels=1200).shape == (30, 40)
    assert DEFAULT_MAX_PIXELS >= 50_000_000  # real radiographs (<= ~20 MP) always pass by default


def test_bomb_guard_pillow_warning_is_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(grey8()).save(tmp_path / "g.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,200 px: above Pillow's warning level, below 2x
    with pytest.raises(ValueError, match=r"g\.png: refusing to decode a huge image"):
        read_image(tmp_path / "g.png", max_pixels=None)


# ---- real DICOM (pydicom-data) -------------------------------------------------------------------------
def test_real_chest_dicom_pydicom_data() -> None:
    path = pydicom_data_file("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    img = read_image(path)
    assert img.shape == (ds.Rows, ds.Columns) == (1955, 1841)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    h, w = img.shape

    def region(y0: float, y1: float, x0: float, x1: float) -> float:
        return float(img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].mean())

    right_lung, left_lung = region(0.3, 0.6, 0.2, 0.35), region(0.3, 0.6, 0.65, 0.8)
    mediastinum, abdomen = region(0.3, 0.6, 0.45, 0.55), region(0.85, 0.95, 0.3, 0.7)
    # MONOCHROME1 inverted: air-filled lungs dark, mediastinum/spine and the abdomen bright
    assert max(right_lung, left_lung) + 0.15 < mediastinum
    assert max(right_lung, left_lung) + 0.15 < abdomen
    # and it is the DICOM window (15000/30000 on 15-bit data), inverted: hand computation on the stored values
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)
    np.testing.assert_allclose(img, 1.0 - window_linear(raw, 15000.0, 30000.0), atol=1e-5)
    x = siglip_transform(img)
    assert x.shape == (3, S, S)
    canvas = siglip_to_uint8(x)
    assert (canvas[:, :10] == 255).all() and (canvas[:, -10:] == 255).all()  # portrait: white columns


def test_real_chest_dicom_jpeg2000_matches_uncompressed() -> None:
    path = pydicom_data_file("RG1_J2KR.dcm")
    tsyntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(tsyntax).is_available:
        with pytest.raises(ValueError, match="JPEG 2000"):
            read_image(path)
        return
    np.testing.assert_array_equal(read_image(path), read_image(pydicom_data_file("RG1_UNCR.dcm")))


# ---- transforms ----------------------------------------------------------------------------------------
def test_siglip_white_pad_matches_authors_recipe_synthetic(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(500, 800), dtype=np.uint8)  # landscape, larger than 384
    Image.fromarray(arr).save(tmp_path / "wide.png")
    x = siglip_transform(tmp_path / "wide.png")
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    expected = authors_siglip(tmp_path / "wide.png")
    np.testing.assert_array_equal(siglip_to_uint8(x), expected)
    ref = (torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255 - MEAN) / STD
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    assert (expected[:60] == 255).all() and (expected[-60:] == 255).all()  # 800x500 -> 384x240, 72 px bands


def test_siglip_black_and_squash(tmp_path: Path) -> None:
    arr = grey8(500, 800)
    black = siglip_to_uint8(siglip_transform(arr, pad="black"))
    assert (black[:60] == 0).all() and (black[-60:] == 0).all()
    squash = siglip_to_uint8(siglip_transform(arr, pad="squash"))
    demo = np.asarray(Image.fromarray(arr).convert("RGB").resize((S, S), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(squash, demo)  # the gradio demo's plain resize
    with pytest.raises(ValueError, match="pad"):
        siglip_transform(arr, pad="crop")  # type: ignore[arg-type]


def test_siglip_small_image_framed_unless_upscale() -> None:
    arr = np.zeros((100, 200), np.uint8)  # black, smaller than 384
    framed = np.asarray(siglip_image(arr))
    assert (framed == 0).sum() == 100 * 200  # the thumbnail never enlarges (authors' code)
    up = np.asarray(siglip_image(arr, upscale=True))
    assert (up == 0).sum() == S * (S // 2)  # longer side scaled to 384 -> 384 x 192


def test_siglip_size_from_config() -> None:
    cfg = load_config("tiny").vision
    x = siglip_transform(np.full((50, 70), 0.25, np.float32), cfg)
    assert x.shape == (3, cfg.image_size, cfg.image_size)


def test_float_input_range_checked() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_uint8_grey(np.full((4, 4), 1.5, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        as_uint8_grey(np.zeros((4, 4, 3), np.float32))


def test_vae_transform_range_shape_and_pad() -> None:
    arr = grey8(300, 200)  # portrait
    x = vae_transform(arr)  # default: the released generation size
    assert x.shape == (3, 512, 512) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1  # the image's black reaches -1
    u8 = vae_to_uint8(x)
    assert (u8[:, :40] == 255).all() and (u8[:, -40:] == 255).all()  # 200x300 -> 341x512: white side bands
    small = vae_transform(arr, 256)
    assert small.shape == (3, 256, 256)
    crop = vae_image(arr, 256, pad="crop")
    assert crop.size == (256, 256) and np.asarray(crop).min() < 255
    for bad in (100, 1024):
        with pytest.raises(ValueError, match="VAE image size"):
            vae_transform(arr, bad)
    np.testing.assert_array_equal(vae_to_uint8(vae_transform(arr, 256, pad="black")),
                                  np.repeat(np.asarray(vae_image(arr, 256, pad="black"))[..., None], 3, -1))


# ---- real radiographs (../shared/data/real_cxr) --------------------------------------------------------
def test_real_cxr_siglip_pads_white_and_matches_hand_computation() -> None:
    sizes = {}
    for p in real_images("mhh"):
        with Image.open(p) as im:
            sizes[p] = im.size
    path = next(p for p, (w, h) in sizes.items() if w > h)
    w, h = sizes[path]
    x = siglip_transform(path)
    u8 = siglip_to_uint8(x)
    np.testing.assert_array_equal(u8, authors_siglip(path))
    th = round(h * S / w)  # landscape 640 x h -> 384 x th
    band = (S - th) // 2
    assert band > 0 and (u8[:band] == 255).all() and (u8[band + th:] == 255).all()
    assert (u8[band:band + th] != 255).any(axis=(1, 2)).mean() > 0.9  # the radiograph is inside


def test_real_cxr_square_and_vae() -> None:
    for path in real_images("nih"):
        x = siglip_transform(path)
        np.testing.assert_array_equal(siglip_to_uint8(x), authors_siglip(path))
        v = vae_transform(path, 256)
        assert v.shape == (3, 256, 256) and -1 <= v.min() < v.max() <= 1
        grey = read_image(path)
        ref = np.asarray(Image.fromarray(as_uint8_grey(grey)).resize((256, 256), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(vae_to_uint8(v)[..., 0], ref)  # square: plain resize, no padding


# ---- preview CLI ---------------------------------------------------------------------------------------
def test_preview_cli_writes_model_input(tmp_path: Path) -> None:
    src = tmp_path / "wide.dcm"
    write_dicom(src, ramp(300, 500), photometric="MONOCHROME1")
    out = tmp_path / "preview" / "p.png"
    assert main(["data", "preview", str(src), "-o", str(out)]) == 0
    with Image.open(out) as im:
        written = np.asarray(im)
    np.testing.assert_array_equal(written, siglip_to_uint8(siglip_transform(src)))
    assert written.shape == (S, S, 3) and (written[:20] == 255).all()

    out_vae = tmp_path / "v.png"
    assert main(["data", "preview", str(src), "-o", str(out_vae), "--kind", "vae", "--size", "256",
                 "--pad", "black"]) == 0
    with Image.open(out_vae) as im:
        np.testing.assert_array_equal(np.asarray(im), vae_to_uint8(vae_transform(src, 256, pad="black")))


def test_preview_cli_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert main(["data", "preview", str(bad), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.png" in err[0] and "not a PNG, JPEG or DICOM" in err[0]
    assert main(["data", "preview", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png")]) == 2
