"""Synthetic marking of drawn images (unix_cxr.infer.marking): PNG text chunks and the DICOM Secondary Capture."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image

from unix_cxr.infer.marking import DISCLAIMER, read_marking, save_synthetic_dicom, save_synthetic_png, synthetic_png


def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def test_png_keeps_pixels_and_says_synthetic_model_prompt_seed(tmp_path):
    prompt = "Petite épanchement pleural gauche. 左"
    path = save_synthetic_png(tmp_path / "a.png", pixels(), model="UniX demo", prompt=prompt, seed=7)
    assert np.array_equal(np.asarray(Image.open(path)), pixels())
    mark = read_marking(path)
    assert mark["unix-cxr:synthetic"] == "true" and mark["unix-cxr:model"] == "UniX demo"
    assert mark["unix-cxr:prompt"] == prompt and mark["unix-cxr:seed"] == "7"
    assert "not for diagnosis" in mark["Disclaimer"] and prompt in mark["Description"]
    assert read_marking(synthetic_png(pixels()[..., 0], model="m", prompt="p", seed=None))["unix-cxr:seed"] == ""


def test_unmarked_png_has_no_marking(tmp_path):
    Image.fromarray(pixels()).save(tmp_path / "plain.png")
    assert "unix-cxr:synthetic" not in read_marking(tmp_path / "plain.png")


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)])
def test_bad_pixels_are_refused(bad):
    with pytest.raises(ValueError, match="uint8"):
        synthetic_png(bad, model="m", prompt="p", seed=0)


def test_dicom_is_a_derived_secondary_capture_without_identifiers(tmp_path):
    path = save_synthetic_dicom(tmp_path / "a.dcm", pixels(), model="UniX demo", prompt="Small effusion.", seed=3)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.ConversionType == "SYN" and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName) == "" and ds.PatientID == ""
    assert DISCLAIMER in ds.ImageComments and "Small effusion." in ds.DerivationDescription
    luma = np.rint(pixels() @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    assert np.array_equal(ds.pixel_array, luma)
