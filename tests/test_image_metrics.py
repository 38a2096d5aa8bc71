"""Image metrics against closed forms and reference implementations (scipy, torchmetrics, prdc)."""

from __future__ import annotations

import glob
import importlib.util
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, needs_inception

from unix_cxr.chexpert import CHEXPERT_LABELS
from unix_cxr.eval import image_metrics as im

MHH = SHARED / "data" / "real_cxr" / "mhh"
needs_mhh = pytest.mark.skipif(not MHH.is_dir(), reason="../shared/data/real_cxr/mhh is not present")

needs_torchmetrics = pytest.mark.skipif(importlib.util.find_spec("torchmetrics") is None,
                                        reason="torchmetrics (reference implementation) is not installed")
needs_prdc = pytest.mark.skipif(importlib.util.find_spec("prdc") is None,
                                reason="prdc (reference implementation) is not installed")


def _features(seed: int, n: int, d: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / math.sqrt(d)  # correlated features
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


class _Identity(torch.nn.Module):
    """A 'feature extractor' that returns its input: feeds fixed features through torchmetrics' metrics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


# ---------------------------------------------------------------------------------------------------- Fréchet


def test_fd_closed_form_commuting_gaussians():
    # Same eigenvectors: Tr (S1 S2)^1/2 = sum sqrt(d1 d2), so FD = |mu1 - mu2|^2 + sum (sqrt d1 - sqrt d2)^2.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    d1, d2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum())
    got = im.frechet_distance_from_moments(mu1, (q * d1) @ q.T, mu2, (q * d2) @ q.T)
    assert _rel(got, expected) <= 1e-10


def test_fd_closed_form_non_commuting_2d():
    # 2x2: the eigenvalues l1, l2 of A B give Tr (AB)^1/2 = sqrt(l1) + sqrt(l2) = sqrt(tr AB + 2 sqrt(det A det B)).
    a = np.array([[2.0, 0.6], [0.6, 1.0]])
    b = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(a @ b, b @ a)
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_sqrt = math.sqrt(np.trace(a @ b) + 2 * math.sqrt(np.linalg.det(a) * np.linalg.det(b)))
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(a) + np.trace(b) - 2 * tr_sqrt)
    assert _rel(im.frechet_distance_from_moments(mu1, a, mu2, b), expected) <= 1e-12


def test_fd_of_large_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, -1.0])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.diag([2.0, 1.0, 0.5])
    x = rng.multivariate_normal(mu1, s1, size=200_000)
    y = rng.multivariate_normal(mu2, s2, size=200_000)
    expected = 2.0 + 2 * (math.sqrt(2) - 1) ** 2  # |dmu|^2 + sum (sqrt d1 - sqrt d2)^2
    assert abs(im.frechet_distance(x, y) - expected) < 0.03


def test_fd_equals_independent_scipy_computation():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = _features(3, 300, 32), _features(4, 250, 32, shift=0.2, scale=1.3)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    expected = float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))
    got = im.frechet_distance(x, y)
    assert _rel(got, expected) <= 1e-6
    assert im.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


@needs_torchmetrics
def test_fd_equals_torchmetrics_fid_on_fixed_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = _features(5, 200, 24), _features(6, 180, 24, shift=-0.3, scale=0.8)
    metric = FrechetInceptionDistance(feature=_Identity(24))
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    assert _rel(im.frechet_distance(x, y), float(metric.compute())) <= 1e-6


def test_fd_statistics_are_float64():
    x32 = _features(7, 100, 8).astype(np.float32)
    m = im.feature_moments(x32)
    assert m.mean.dtype == np.float64 and m.cov.dtype == np.float64
    assert im.frechet_distance(x32, x32 + 1) == pytest.approx(8.0, rel=1e-5)


def test_fd_bad_inputs():
    x = _features(8, 50, 4)
    with pytest.raises(im.InsufficientSamplesError, match="at least 2"):
        im.frechet_distance(x[:1], x)
    with pytest.raises(im.InsufficientSamplesError):
        im.frechet_distance(np.zeros((0, 4)), x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        im.frechet_distance(bad, x)
    with pytest.raises(ValueError, match="dimension"):
        im.frechet_distance(x, x[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        im.frechet_distance(x[0], x)
    with pytest.raises(ValueError, match="positive semi-definite"):
        im.frechet_distance_from_moments(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        im.frechet_distance_from_moments(np.zeros(2), np.eye(2) * np.inf, np.zeros(2), np.eye(2))


def test_fd_with_fewer_samples_than_dimensions_warns_and_is_finite(caplog):
    x, y = _features(9, 10, 16), _features(10, 12, 16, shift=1.0)
    with pytest.warns(RuntimeWarning, match="N <= D"), caplog.at_level(logging.WARNING):
        fd = im.frechet_distance(x, y)
    assert math.isfinite(fd) and fd > 0


# ---------------------------------------------------------------------------------------------------- kernel


@needs_torchmetrics
def test_kd_equals_torchmetrics_kid_equal_sizes():
    # With N_real = N_fake = subset size every subset is the whole set, so the random draws do not matter.
    from torchmetrics.image.kid import KernelInceptionDistance

    x, y = _features(11, 120, 16), _features(12, 120, 16, shift=0.1)
    metric = KernelInceptionDistance(feature=_Identity(16), subsets=5, subset_size=120)
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    ref_mean, ref_std = (float(v) for v in metric.compute())
    kd = im.kernel_distance(x, y, n_subsets=5)
    assert kd.subset_size == 120
    assert _rel(kd.mean, ref_mean) <= 1e-10
    assert kd.std == pytest.approx(ref_std, abs=1e-12)


@needs_torchmetrics
@pytest.mark.parametrize("cache_entries", [im._KERNEL_CACHE_ENTRIES, 0])
def test_kd_equals_torchmetrics_poly_mmd_on_same_subsets(monkeypatch, cache_entries):
    # Unequal sizes: draw the subsets as kernel_distance does (numpy default_rng, real then fake permutation) and
    # average torchmetrics' own poly_mmd over them. Both the cached-kernel and the per-subset paths are checked.
    from torchmetrics.image.kid import poly_mmd

    monkeypatch.setattr(im, "_KERNEL_CACHE_ENTRIES", cache_entries)
    x, y = _features(13, 90, 12), _features(14, 70, 12, shift=0.2, scale=1.1)
    rng = np.random.default_rng(7)
    ref = []
    for _ in range(20):
        ix, iy = rng.permutation(90)[:70], rng.permutation(70)[:70]
        ref.append(float(poly_mmd(torch.from_numpy(x[ix]), torch.from_numpy(y[iy]))))
    kd = im.kernel_distance(x, y, n_subsets=20, seed=7)
    assert kd.subset_size == 70
    assert _rel(kd.mean, float(np.mean(ref))) <= 1e-10
    assert _rel(kd.std, float(np.std(ref))) <= 1e-8
    assert _rel(im.poly_mmd2(x[:70], y), float(poly_mmd(torch.from_numpy(x[:70]), torch.from_numpy(y)))) <= 1e-10


def test_kd_bad_inputs():
    x = _features(15, 20, 4)
    with pytest.raises(im.InsufficientSamplesError, match="at least 2"):
        im.kernel_distance(x[:1], x)
    with pytest.raises(im.InsufficientSamplesError, match="larger than"):
        im.kernel_distance(x, x, subset_size=21)
    with pytest.raises(ValueError, match="n_subsets"):
        im.kernel_distance(x, x, n_subsets=0)


# ---------------------------------------------------------------------------------------------------- PRDC


@needs_prdc
@pytest.mark.parametrize(("n_real", "n_fake", "k"), [(150, 120, 5), (60, 80, 3)])
def test_prdc_equals_prdc_package(n_real, n_fake, k):
    from prdc import compute_prdc

    x, y = _features(16, n_real, 10), _features(17, n_fake, 10, shift=0.4, scale=1.2)
    ref = compute_prdc(real_features=x, fake_features=y, nearest_k=k)
    got = im.prdc(x, y, k)
    for name in ("precision", "recall", "density", "coverage"):
        assert getattr(got, name) == pytest.approx(float(ref[name]), abs=1e-12), name


def test_prdc_bad_inputs():
    x = _features(18, 5, 3)
    with pytest.raises(im.InsufficientSamplesError, match="more than 5"):
        im.prdc(x, _features(19, 50, 3), k=5)


# ---------------------------------------------------------------------------------------------------- aggregation


def test_four_shards_average_per_shard_values():
    x, y = _features(20, 103, 6), _features(21, 97, 6, shift=0.3)
    got = im.image_metrics(x, y, n_shards=4, n_subsets=10, seed=3)
    assert got.n_shards == 4 and len(got.shards) == 4
    xs, ys = np.array_split(x, 4), np.array_split(y, 4)
    fds = [im.frechet_distance(a, b) for a, b in zip(xs, ys, strict=True)]
    kds = [im.kernel_distance(a, b, n_subsets=10, seed=3 + i).mean for i, (a, b) in enumerate(zip(xs, ys,
                                                                                                strict=True))]
    covs = [im.prdc(a, b).coverage for a, b in zip(xs, ys, strict=True)]
    assert got.fd == pytest.approx(np.mean(fds), rel=1e-12)
    assert got.kd_mean == pytest.approx(np.mean(kds), rel=1e-12)
    assert got.coverage == pytest.approx(np.mean(covs), rel=1e-12)
    assert [s.n_real for s in got.shards] == [26, 26, 26, 25]
    one = im.image_metrics(x, y, n_subsets=10, seed=3)
    assert one.fd == pytest.approx(im.frechet_distance(x, y)) and one.shards == ()
    assert set(got.to_dict()) >= {"fd", "kd_mean", "precision", "shards"}


def test_per_pathology_fd_subsets_by_label():
    n_real, n_fake = 60, 50
    x, y = _features(22, n_real, 4), _features(23, n_fake, 4, shift=0.5)
    rng = np.random.default_rng(0)
    real_labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n_real, 14))
    fake_labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(n_fake, 14))
    real_labels[:, CHEXPERT_LABELS.index("Fracture")] = 0  # no real image with Fracture = 1
    out = im.per_pathology_fd(x, y, real_labels, fake_labels)
    assert list(out) == list(CHEXPERT_LABELS)
    c = CHEXPERT_LABELS.index("Edema")
    expected = im.frechet_distance(x[real_labels[:, c] == 1], y[fake_labels[:, c] == 1])
    assert out["Edema"].fd == pytest.approx(expected, rel=1e-12)
    assert out["Edema"].n_real == int((real_labels[:, c] == 1).sum())
    assert out["Fracture"].fd is None and "0 real" in out["Fracture"].reason
    by_name = im.per_pathology_fd(x, y, {"Edema": real_labels[:, c]}, {"Edema": fake_labels[:, c]})
    assert list(by_name) == ["Edema"] and by_name["Edema"].fd == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="values for"):
        im.per_pathology_fd(x, y, {"Edema": real_labels[:10, c]}, {"Edema": fake_labels[:, c]})


# ---------------------------------------------------------------------------------------------------- images


def test_to_float_nchw_layouts():
    u8 = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5)
    grey = im.to_float_nchw(u8)
    assert grey.shape == (2, 3, 4, 5) and grey.dtype == torch.float32
    assert torch.allclose(grey[:, 0], torch.from_numpy(u8).float() / 255)
    hwc = np.stack([u8, u8, u8], axis=-1)
    assert torch.equal(im.to_float_nchw(hwc), grey)
    assert torch.equal(im.to_float_nchw(torch.from_numpy(hwc).permute(0, 3, 1, 2)), grey)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        im.to_float_nchw(np.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="mixed shapes"):
        im.to_float_nchw([np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)])


def test_load_images_resizes_and_rejects_mixed_sizes(tmp_path):
    from PIL import Image

    paths = []
    for i, size in enumerate([(40, 30), (50, 30)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full(size[::-1], 100 + i, np.uint8)).save(paths[-1])
    imgs = im.load_images(paths)
    assert imgs.shape == (2, 299, 299, 3) and imgs.dtype == np.uint8 and imgs[1, 0, 0, 0] == 101
    with pytest.raises(ValueError, match="mixed sizes"):
        im.load_images(paths, size=None)


def test_torch_module_encoder_and_extract_features():
    conv = torch.nn.Conv2d(3, 7, 3)
    enc = im.TorchModuleEncoder(conv, "tiny conv", input_size=(16, 16), batch_size=3)
    assert isinstance(enc, im.FeatureEncoder)
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 16, 16), dtype=np.uint8)
    feats = im.extract_features(enc, imgs, batch_size=2, progress=False)
    with torch.no_grad():
        expected = conv(im.to_float_nchw(imgs)).mean(dim=(2, 3)).double().numpy()
    assert feats.shape == (5, 7) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


def test_raddino_encoder_from_local_folder_uses_processor_and_pooler(tmp_path):
    from PIL import Image
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, patch_size=14, image_size=42)).eval()
    model.save_pretrained(tmp_path)
    processor = BitImageProcessor(size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42}, resample=3,
                                  image_mean=[0.5307] * 3, image_std=[0.2583] * 3)
    processor.save_pretrained(tmp_path)
    enc = im.RadDinoEncoder(tmp_path, batch_size=2)
    imgs = np.random.default_rng(1).integers(0, 256, size=(3, 299, 299, 3), dtype=np.uint8)
    feats = enc(imgs)
    assert list(enc.processor.image_mean) == pytest.approx([0.5307] * 3)  # the folder's settings are used
    with torch.no_grad():  # enc.processor: the class AutoImageProcessor picks here (PIL or torchvision backend)
        inputs = enc.processor(images=[Image.fromarray(a) for a in imgs], return_tensors="pt")
        expected = model(**inputs).pooler_output.double().numpy()
    assert feats.shape == (3, 32) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        im.RadDinoEncoder(tmp_path / "missing")


@needs_inception
def test_inception_encoder_input_range_and_shape():
    enc = im.InceptionEncoder()
    assert enc.name == "Inception (fid-helper weights)" and enc.input_size == (299, 299)
    imgs = np.random.default_rng(2).integers(0, 256, size=(1, 299, 299), dtype=np.uint8)
    feats = enc(imgs)
    x = torch.from_numpy(imgs).float()[:, None].expand(-1, 3, -1, -1) / 128.0 - 1.0  # TF Inception range
    with torch.no_grad():
        expected = enc.module(x).double().numpy()
    assert feats.shape == (1, 2048) and feats.dtype == np.float64
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)


def _blur(imgs: np.ndarray, radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.stack([np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius))) for a in imgs])


@needs_inception
@needs_mhh
@pytest.mark.filterwarnings("ignore:.*N <= D:RuntimeWarning")
def test_inception_fd_real_vs_blurred_exceeds_real_vs_disjoint_real():
    """The fast version of the next test, without the CLI: the wheel's Inception on 16 images per set, read and
    blurred exactly as there. A blurred copy of real set A is farther from A than a disjoint real set B is. (Over
    300 random draws of A and B this held every time at 16 images per set, FD ratio >= 1.12; at 8 it failed in
    5 % of the draws.)"""
    from PIL import Image

    n = 16
    paths = sorted(glob.glob(str(MHH / "*.png")))
    order = np.random.default_rng(0).permutation(len(paths))
    a, b = [paths[i] for i in order[:n]], [paths[i] for i in order[n:2 * n]]
    blurred = [Image.fromarray(_blur(np.asarray(Image.open(p).convert("L"))[None], 4.0)[0]) for p in a]
    imgs = np.concatenate([im.load_images(a + b),  # authors' reading: RGB, 299 x 299 bilinear
                           np.stack([np.asarray(img.convert("RGB").resize((299, 299), Image.Resampling.BILINEAR))
                                     for img in blurred])])
    feats = im.InceptionEncoder(batch_size=3 * n)(imgs)  # one batch: one TorchScript run
    f_a, f_b, f_blur = feats[:n], feats[n:2 * n], feats[2 * n:]
    assert im.frechet_distance(f_a, f_blur) > im.frechet_distance(f_a, f_b)


@pytest.mark.slow
@needs_inception
@needs_mhh
def test_eval_images_real_vs_blurred_exceeds_real_vs_disjoint_real(tmp_path, capsys):
    """`unix-cxr eval images` with the wheel's Inception: a blurred copy of real set A is farther from A than a
    disjoint real set B is (32 images per set; smaller version of benchmarks/check_fd_real.py)."""
    import json

    from PIL import Image

    from unix_cxr.cli import main

    paths = sorted(glob.glob(str(MHH / "*.png")))
    order = np.random.default_rng(0).permutation(len(paths))
    sets = {"a": order[:32], "b": order[32:64]}
    for name, idx in sets.items():
        (tmp_path / name).mkdir()
        for i in idx:
            Image.open(paths[i]).save(tmp_path / name / Path(paths[i]).name)
    (tmp_path / "a_blur").mkdir()
    for i in sets["a"]:
        Image.fromarray(_blur(np.asarray(Image.open(paths[i]).convert("L"))[None], 4.0)[0]).save(
            tmp_path / "a_blur" / Path(paths[i]).name)

    def fd(fake: str) -> float:
        out = tmp_path / f"out_{fake}"
        rc = main(["eval", "images", "--real", str(tmp_path / "a"), "--fake", str(tmp_path / fake),
                   "--encoder", "inception", "--no-progress", "-o", str(out)])
        assert rc == 0, capsys.readouterr().err
        return json.loads((out / "results.json").read_text())["image_metrics"]["fd"]

    assert fd("a_blur") > fd("b")


def test_fd_of_a_rank_deficient_set_with_itself_is_zero():
    """N < D: the covariance is singular and the square root amplifies rounding; the result must still be ~0."""
    rng = np.random.default_rng(7)
    for _ in range(50):  # with the old 1e-9 bound some of these raised (rounding reaches ~6e-8 of the traces)
        x = rng.normal(size=(8, 64)) * rng.uniform(0.1, 10)
        assert 0.0 <= im.frechet_distance(x, x) < 1e-6 * np.trace(np.cov(x, rowvar=False))


# ---------------------------------------------------------------------------------------------------- FD fast path


def _mp_fd(x: np.ndarray, y: np.ndarray) -> float:
    """FD from features in 40-digit arithmetic (mpmath): the trace term as the nuclear norm of Xc Yc^T."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        xs, ys = mpmath.matrix(x.tolist()), mpmath.matrix(y.tolist())
        (n, d), m = x.shape, y.shape[0]
        mx = [mpmath.fsum(xs[i, j] for i in range(n)) / n for j in range(d)]
        my = [mpmath.fsum(ys[i, j] for i in range(m)) / m for j in range(d)]
        xc, yc = mpmath.matrix(n, d), mpmath.matrix(m, d)
        for j in range(d):
            for i in range(n):
                xc[i, j] = xs[i, j] - mx[j]
            for i in range(m):
                yc[i, j] = ys[i, j] - my[j]
        trace_sqrt = mpmath.fsum(mpmath.svd_r(xc * yc.T, compute_uv=False)) / mpmath.sqrt((n - 1) * (m - 1))
        traces = (mpmath.fsum(v**2 for v in xc) / (n - 1) + mpmath.fsum(v**2 for v in yc) / (m - 1))
        return float(mpmath.fsum((a - b) ** 2 for a, b in zip(mx, my, strict=True)) + traces - 2 * trace_sqrt)


@pytest.mark.filterwarnings("ignore:.*N <= D:RuntimeWarning")
def test_fd_svd_and_eigh_paths_agree_with_fewer_samples_than_dimensions():
    x, y = _features(41, 12, 40), _features(42, 15, 40, shift=0.2, scale=1.3)
    svd, eigh = im.frechet_distance(x, y, method="svd"), im.frechet_distance(x, y, method="eigh")
    assert im.frechet_distance(x, y) == svd  # auto: min(N) < D -> the SVD path
    # The SVD path is exact to rounding; the eigen path of the singular D x D covariances amplifies float64
    # rounding to about sqrt(eps) (measured 2e-8 to 4e-8 relative at D = 64..2048): it meets the SVD path at 1e-6.
    assert _rel(svd, _mp_fd(x, y)) <= 1e-12
    assert _rel(eigh, svd) <= 1e-6
    assert im.trace_sqrt_product_from_features(x, x) == pytest.approx(np.trace(np.cov(x, rowvar=False)), rel=1e-12)


def test_fd_svd_and_eigh_paths_agree_with_more_samples_than_dimensions():
    x, y = _features(43, 300, 32), _features(44, 250, 32, shift=-0.4, scale=0.7)
    svd, eigh = im.frechet_distance(x, y, method="svd"), im.frechet_distance(x, y, method="eigh")
    assert im.frechet_distance(x, y) == eigh  # auto: N > D -> the eigen path
    assert _rel(svd, eigh) <= 1e-9
    with pytest.raises(ValueError, match="method"):
        im.frechet_distance(x, y, method="sqrtm")


def test_fd_auto_path_never_forms_covariances_when_n_below_d(monkeypatch):
    def forbidden(*_: object) -> float:
        raise AssertionError("the D x D eigen path was used")

    monkeypatch.setattr(im, "trace_sqrt_product", forbidden)
    x, y = _features(45, 10, 64), _features(46, 12, 64, shift=1.0)
    with pytest.warns(RuntimeWarning, match="N <= D"):
        assert im.frechet_distance(x, y) > 0
    with pytest.raises(im.InsufficientSamplesError, match="at least 2"):
        im.frechet_distance(x[:1], y)
