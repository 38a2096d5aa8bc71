"""Drawing the phantom radiograph of a :class:`~.spec.PhantomSpec`: :func:`render` (numerics, anatomy,
findings, devices, blur, edge enhancement and noise)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .spec import (
    DEVICE_KINDS,
    FINDING_KINDS,
    NORMAL_CTR_RANGE,
    SIDES,
    ZONES,
    Finding,
    PhantomSpec,
    _dual_chamber,
    _route,
)

# --------------------------------------------------------------------------------------------------- numerics

def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge replication (shifted sums: deterministic, no BLAS)."""
    if sigma <= 0.05:
        return img
    k = _gauss_kernel(sigma)
    r = len(k) // 2
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (p[i:i + n] if axis == 0 else p[:, i:i + n])
        out = acc
    return out


def _up2(img: np.ndarray) -> np.ndarray:
    """Twice the size by linear interpolation (pixel centres), edges replicated."""
    for axis in (0, 1):
        p = np.concatenate([np.take(img, [0], axis), img, np.take(img, [-1], axis)], axis=axis)
        n = img.shape[axis]
        lo = np.take(p, range(0, n), axis)
        mid = np.take(p, range(1, n + 1), axis)
        hi = np.take(p, range(2, n + 2), axis)
        even, odd = 0.25 * lo + 0.75 * mid, 0.75 * mid + 0.25 * hi
        img = np.stack([even, odd], axis=axis + 1).reshape(
            (2 * n, img.shape[1]) if axis == 0 else (img.shape[0], 2 * n))
    return img


def _down2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    return img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


def _blur_coarse(img: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur computed at half resolution (for low-pass layers: about 4x cheaper)."""
    if img.shape[0] % 2 or img.shape[1] % 2 or sigma < 1.5:
        return _blur(img, sigma)
    return _up2(_blur(_down2(img), math.sqrt(max(sigma * sigma - 0.5, 0.25)) / 2.0))


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Rows of Gaussian weights: maps ``n_in`` coarse samples smoothly onto ``n_out`` points."""
    u = (np.arange(n_out) + 0.5) / n_out * n_in - 0.5
    w = np.exp(-0.5 * ((u[:, None] - np.arange(n_in)[None, :]) / 0.7) ** 2)
    return w / w.sum(1, keepdims=True)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise on an nxn grid with about ``cells`` blobs across."""
    a = _upsample_matrix(n, cells)
    coarse = rng.standard_normal((cells, cells))
    field_ = np.einsum("ik,lk->il", np.einsum("ij,jk->ik", a, coarse), a)  # no BLAS: no thread effects
    return field_ / (field_.std() + 1e-9)


def _catmull_rom_closed(points: np.ndarray, per_segment: int = 16) -> np.ndarray:
    """A closed Catmull-Rom spline through ``points`` (k, 2), sampled ``per_segment`` times per span."""
    k = len(points)
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(k):
        p0, p1, p2, p3 = points[(i - 1) % k], points[i], points[(i + 1) % k], points[(i + 2) % k]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.concatenate(out)


class _Grid:
    """Pixel-centre coordinates of an nxn render, in normalised units."""

    def __init__(self, n: int) -> None:
        self.n = n
        c = (np.arange(n) + 0.5) / n
        self.c = c
        self.X, self.Y = np.meshgrid(c, c)


class _Pen:
    """Collects thin strokes (polylines with tapering width and amplitude) and rasterises them all at once.

    Each segment is evaluated on its bounding box only; overlapping strokes combine by maximum, so joints of a
    polyline do not double up. Profiles: "gauss" (soft: vessels, lines), "rod" (solid cylinder: tubes, leads) and
    "bone" (bright cortex, lighter marrow: ribs, clavicles).
    """

    SIG_MIN = 0.6  # pixels: thinner strokes are drawn this wide with proportionally less contrast

    def __init__(self, g: _Grid) -> None:
        self.g = g
        self.segs: list[np.ndarray] = []

    def line(self, pts: Sequence[tuple[float, float]], widths: Sequence[float] | float,
             amps: Sequence[float] | float) -> None:
        """Add a polyline: points and half-widths in normalised units, one width/amplitude per point or one."""
        p = np.asarray(pts, dtype=np.float64)
        k = len(p)
        w = np.broadcast_to(np.asarray(widths, dtype=np.float64), (k,))
        am = np.broadcast_to(np.asarray(amps, dtype=np.float64), (k,))
        self.segments(p[:-1, 0], p[:-1, 1], p[1:, 0], p[1:, 1], w[:-1], w[1:], am[:-1], am[1:])

    def segments(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray, w0: np.ndarray,
                 w1: np.ndarray, a0: np.ndarray, a1: np.ndarray) -> None:
        """Add straight segments given as arrays (normalised units)."""
        n = self.g.n
        cols = np.broadcast_arrays(x0 * n - 0.5, y0 * n - 0.5, x1 * n - 0.5, y1 * n - 0.5, w0 * n, w1 * n, a0, a1)
        self.segs.append(np.stack(cols, axis=1).reshape(-1, 8))

    def draw(self, canvas: np.ndarray, profile: str = "gauss") -> np.ndarray:
        """Rasterise the collected strokes into ``canvas`` (by maximum) and forget them."""
        if not self.segs:
            return canvas
        n = self.g.n
        s = np.concatenate(self.segs)
        self.segs = []
        x0, y0, x1, y1, w0, w1, a0, a1 = s.T
        sm = self.SIG_MIN
        reach = (1.05 if profile == "bone" else 2.4) * np.maximum(np.maximum(w0, w1), sm) + 0.5
        xa = np.clip(np.floor(np.minimum(x0, x1) - reach), 0, n).astype(np.int64)
        xb = np.clip(np.ceil(np.maximum(x0, x1) + reach) + 1, 0, n).astype(np.int64)
        ya = np.clip(np.floor(np.minimum(y0, y1) - reach), 0, n).astype(np.int64)
        yb = np.clip(np.ceil(np.maximum(y0, y1) + reach) + 1, 0, n).astype(np.int64)
        bw, bh = np.maximum(xb - xa, 0), np.maximum(yb - ya, 0)
        counts = bw * bh
        total = int(counts.sum())
        if total == 0:
            return canvas
        dx, dy = x1 - x0, y1 - y0
        inv_l2 = 1.0 / np.maximum(dx * dx + dy * dy, 1e-12)
        seg = np.repeat(np.arange(len(s)), counts)
        local = np.arange(total, dtype=np.float64) - np.repeat(np.cumsum(counts) - counts, counts)
        wseg = bw[seg].astype(np.float64)
        iy = np.floor((local + 0.5) / wseg)  # float division: exact here, and much faster than integer divmod
        ix = local - iy * wseg + xa[seg]
        iy += ya[seg]
        rx = ix - x0[seg]
        ry = iy - y0[seg]
        sdx, sdy = dx[seg], dy[seg]
        t = np.clip((rx * sdx + ry * sdy) * inv_l2[seg], 0.0, 1.0)
        ex, ey = rx - t * sdx, ry - t * sdy
        dist2 = ex * ex + ey * ey
        w = w0[seg] + (w1 - w0)[seg] * t
        amp = a0[seg] + (a1 - a0)[seg] * t
        if profile == "bone":
            wb = np.maximum(w, 0.5)
            u = np.sqrt(dist2) / wb
            soft = np.maximum(0.12, 1.2 / wb)
            u2 = np.minimum(u, 1.0) ** 2
            val = amp * np.clip((1.0 - u) / soft + 0.5, 0.0, 1.0) * (0.5 + 0.5 * u2 * u2)
        elif profile == "rod":
            val = amp * np.sqrt(np.clip(1.0 - dist2 / np.maximum(w, 0.5) ** 2, 0.0, 1.0))
            val = np.maximum(val, amp * np.exp(-0.5 / (sm * sm) * dist2) * np.minimum(1.0, w / sm))
        else:
            sig = np.maximum(w, sm)
            val = amp * np.minimum(1.0, w / sm) * np.exp(-0.5 * dist2 / (sig * sig))
        np.maximum.at(canvas.reshape(-1), (iy * n + ix).astype(np.int64), val)
        return canvas


# --------------------------------------------------------------------------------------------------- anatomy

# Lung outline control points (d = distance from the midline towards the lung's side, y from the top) for the
# right lung; "dome" and "cp" are replaced by the hemidiaphragm dome and costophrenic-angle heights.
_LUNG_OUTLINE: tuple[tuple[float, str, float], ...] = (
    (0.175, "y", 0.115), (0.265, "y", 0.150), (0.335, "y", 0.230), (0.375, "y", 0.340), (0.395, "y", 0.470),
    (0.405, "y", 0.600), (0.410, "cp", -0.045), (0.413, "cp", 0.0), (0.372, "dome", 0.052), (0.300, "dome", 0.012),
    (0.220, "dome", 0.0), (0.140, "dome", 0.010), (0.085, "dome", 0.030), (0.060, "y", 0.600), (0.052, "y", 0.450),
    (0.056, "y", 0.300), (0.075, "y", 0.200), (0.115, "y", 0.140),
)
_LUNG_CENTRE = (0.22, 0.45)


@dataclass
class _Lung:
    side: str
    sign: float  # image x = cx + sign * d
    theta: np.ndarray  # outline in polar coordinates around the lung centre, sorted by angle
    radius: np.ndarray
    centre: tuple[float, float]  # (d, y)
    lateral_d: np.ndarray  # lateral wall d as a function of y (samples on _Y_SAMPLES)
    width: float  # widest lateral extent (d)
    apex_y: float
    dome_y: float
    cp_y: float
    hilum: tuple[float, float]  # (d, y)


_Y_SAMPLES = np.linspace(0.0, 1.0, 201)


@dataclass
class _Anatomy:
    cx: float
    lungs: dict[str, _Lung]
    thoracic_width: float
    heart_centre: tuple[float, float]  # centre of the polar outline (x, y)
    heart_axes: tuple[float, float]  # half width, half height
    heart_top: float
    heart_theta: np.ndarray  # outline in polar coordinates around heart_centre, sorted by angle
    heart_radius: np.ndarray
    ctr: float
    carina_y: float
    body_scale: float
    contrast: float
    brightness: float
    rib_y0: float
    rib_step: float
    rib_jitter: np.ndarray  # per-rib vertical offsets


def _make_lung(side: str, cx: float, scale_w: float, apex_y: float, dome_y: float, cp_depth: float) -> _Lung:
    sign = -1.0 if side == "right" else 1.0
    pts = []
    for d, base, y in _LUNG_OUTLINE:
        if base == "dome":
            yv = dome_y + y
        elif base == "cp":
            yv = dome_y + cp_depth + y
        else:  # absolute; the upper part is stretched so that the apex sits at apex_y
            yv = apex_y + (y - 0.115) * (dome_y - apex_y) / (0.70 - 0.115) if y < 0.60 else y
        pts.append((d * scale_w, yv))
    outline = _catmull_rom_closed(np.asarray(pts), per_segment=12)
    cd, cy = _LUNG_CENTRE[0] * scale_w, 0.45
    theta = np.arctan2(outline[:, 1] - cy, outline[:, 0] - cd)
    radius = np.hypot(outline[:, 1] - cy, outline[:, 0] - cd)
    order = np.argsort(theta, kind="stable")
    theta, radius = theta[order], radius[order]
    lateral = outline[outline[:, 0] > cd + 0.02]
    lateral = lateral[np.argsort(lateral[:, 1], kind="stable")]
    lateral_d = np.interp(_Y_SAMPLES, lateral[:, 1], lateral[:, 0], left=0.0, right=0.0)
    hilum = (0.10 * scale_w, 0.44 if side == "right" else 0.425)
    return _Lung(side=side, sign=sign, theta=theta, radius=radius, centre=(cd, cy), lateral_d=lateral_d,
                 width=float(outline[:, 0].max()), apex_y=apex_y, dome_y=dome_y, cp_y=dome_y + cp_depth,
                 hilum=hilum)


def _anatomy(rng: np.random.Generator, ctr: float) -> _Anatomy:
    cx = 0.5 + rng.normal(0.0, 0.006)
    scale_w = rng.uniform(0.95, 1.03)
    apex_y = rng.uniform(0.105, 0.125)
    dome_r = rng.uniform(0.68, 0.72)
    dome_l = dome_r + rng.uniform(0.015, 0.035)
    cp_depth = rng.uniform(0.08, 0.10)
    lungs = {"right": _make_lung("right", cx, scale_w, apex_y, dome_r, cp_depth),
             "left": _make_lung("left", cx, scale_w * rng.uniform(0.98, 1.01), apex_y + 0.005, dome_l, cp_depth)}
    thoracic = lungs["right"].width + lungs["left"].width
    heart_w = ctr * thoracic
    bottom = (dome_r + dome_l) / 2 + 0.035
    height = 0.27 + 0.35 * (ctr - 0.45) + rng.uniform(-0.01, 0.01)
    # heart outline in units of (width, height) from the midline and the heart's bottom: the right heart border
    # (right atrium) a third of the width to the image left, the left ventricle and apex to the image right
    unit = np.array([(-0.30, 0.0), (-0.333, 0.35), (-0.29, 0.65), (-0.18, 0.90), (0.05, 1.0), (0.26, 0.93),
                     (0.45, 0.72), (0.62, 0.50), (0.667, 0.30), (0.62, 0.10), (0.40, -0.04), (0.0, -0.05)])
    outline = _catmull_rom_closed(unit, per_segment=10)
    lo, hi = outline[:, 0].min(), outline[:, 0].max()
    hx_pts = cx + (-1 / 3 + (outline[:, 0] - lo) / (hi - lo)) * heart_w  # exactly W wide, 1/3 : 2/3
    hy_pts = bottom - outline[:, 1] * height
    centre = (cx + heart_w / 6.0, bottom - 0.45 * height)
    theta = np.arctan2(hy_pts - centre[1], hx_pts - centre[0])
    radius = np.hypot(hy_pts - centre[1], hx_pts - centre[0])
    order = np.argsort(theta, kind="stable")
    return _Anatomy(
        cx=cx, lungs=lungs, thoracic_width=thoracic, heart_centre=centre, heart_axes=(heart_w / 2.0, height / 2.0),
        heart_top=bottom - height, heart_theta=theta[order], heart_radius=radius[order], ctr=ctr,
        carina_y=rng.uniform(0.30, 0.33), body_scale=rng.uniform(0.97, 1.02), contrast=rng.uniform(0.93, 1.07),
        brightness=rng.uniform(-0.025, 0.025), rib_y0=rng.uniform(0.075, 0.095), rib_step=rng.uniform(0.050, 0.056),
        rib_jitter=rng.uniform(-0.004, 0.004, 12),
    )


def _box(g: _Grid, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
    """Row and column slices of the pixels whose centres may lie in [x0, x1] x [y0, y1] (normalised)."""
    n = g.n
    return (slice(max(0, int(y0 * n)), max(0, min(n, math.ceil(y1 * n)))),
            slice(max(0, int(x0 * n)), max(0, min(n, math.ceil(x1 * n)))))


def _lung_box(g: _Grid, a: _Anatomy, lung: _Lung) -> tuple[slice, slice]:
    reach = lung.width + 0.04
    x0, x1 = sorted((a.cx, a.cx + lung.sign * reach))
    return _box(g, x0 - 0.01, x1 + 0.01, lung.apex_y - 0.04, lung.cp_y + 0.04)


def _lung_field(g: _Grid, a: _Anatomy, lung: _Lung) -> np.ndarray:
    """Approximate signed distance to the lung outline (negative inside; 1 far outside the lung's box)."""
    out = np.ones_like(g.X)
    box = _lung_box(g, a, lung)
    dd = lung.sign * (g.X[box] - a.cx) - lung.centre[0]
    dy = g.Y[box] - lung.centre[1]
    rb = np.interp(np.arctan2(dy, dd), lung.theta, lung.radius, period=2 * np.pi)
    out[box] = np.sqrt(dy * dy + dd * dd) - rb
    return out


def _small_vessels(rng: np.random.Generator, pen: _Pen, a: _Anatomy, lung: _Lung, count: int = 260) -> None:
    """Short, faint, roughly radial strokes scattered through the lung out to the pleura: the small peripheral
    vessels that give normal lung its fine markings (and whose absence marks a pneumothorax)."""
    d = rng.uniform(0.05, lung.width, count)
    y = rng.uniform(lung.apex_y, lung.cp_y, count)
    inside = _lung_field_at(lung, d, y) < -0.006
    d, y = d[inside], y[inside]
    k = len(d)
    ang = np.arctan2(y - lung.hilum[1], d - lung.hilum[0]) + rng.uniform(-0.5, 0.5, k)
    length = rng.uniform(0.01, 0.022, k)
    width = rng.uniform(0.0012, 0.002, k)
    amp = rng.uniform(0.03, 0.05, k)
    x0 = a.cx + lung.sign * d
    x1 = a.cx + lung.sign * (d + length * np.cos(ang))
    pen.segments(x0, y, x1, y + length * np.sin(ang), width, width * 0.7, amp, amp * 0.8)


def _lung_field_at(lung: _Lung, d: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The lung's signed-distance approximation at points given as (d, y)."""
    dd, dy = d - lung.centre[0], y - lung.centre[1]
    return np.hypot(dy, dd) - np.interp(np.arctan2(dy, dd), lung.theta, lung.radius, period=2 * np.pi)


def _side_d(g: _Grid, a: _Anatomy, lung: _Lung) -> np.ndarray:
    return lung.sign * (g.X - a.cx)


def _zone_bounds(lung: _Lung, zone: str) -> tuple[float, float]:
    """Vertical extent of a lung zone: the lung height from apex to dome split in thirds (lower: down to the
    costophrenic angle)."""
    h = lung.dome_y - lung.apex_y
    lo = {"upper": 0.0, "middle": 1 / 3, "lower": 2 / 3}[zone]
    top = lung.apex_y + lo * h
    return top, (top + h / 3) if zone != "lower" else lung.cp_y


# --------------------------------------------------------------------------------------------------- rendering

def _vessel_tree(rng: np.random.Generator, pen: _Pen, a: _Anatomy, lung: _Lung) -> None:
    """Branching pulmonary vessels from the hilum, tapering and fading towards the periphery (generated level by
    level; branches that leave the lung stop)."""
    hd, hy = lung.hilum
    k = 7
    ang = np.linspace(-1.9, 1.7, k) + rng.uniform(-0.15, 0.15, k)
    d = np.full(k, hd) + rng.uniform(-0.01, 0.01, k)
    y = np.full(k, hy) + rng.uniform(-0.02, 0.02, k)
    length = np.where(ang > 0.5, 0.12, np.where(ang > -1.3, 0.1, 0.085)) * rng.uniform(0.85, 1.15, k)
    width = np.full(k, 0.0075)
    amp = np.full(k, 0.085)
    for level in range(5):
        k = len(d)
        bend = rng.uniform(-0.45, 0.45, k)
        mid_d, mid_y = d + 0.5 * length * np.cos(ang), y + 0.5 * length * np.sin(ang)
        ang2 = ang + bend
        end_d, end_y = mid_d + 0.5 * length * np.cos(ang2), mid_y + 0.5 * length * np.sin(ang2)
        xs = (a.cx + lung.sign * d, a.cx + lung.sign * mid_d, a.cx + lung.sign * end_d)
        ys = (y, mid_y, end_y)
        ws, am = (width, width * 0.92, width * 0.84), (amp, amp * 0.95, amp * 0.9)
        for j in range(2):
            pen.segments(xs[j], ys[j], xs[j + 1], ys[j + 1], ws[j], ws[j + 1], am[j], am[j + 1])
        if level == 4:
            break
        spread = rng.uniform(0.25, 0.6, k)
        jitter = rng.uniform(0.4, 1.2, (k, 2))
        shrink = rng.uniform(0.62, 0.82, (k, 2))
        keep = _lung_field_at(lung, end_d, end_y) < -0.01
        sgn = np.array([-1.0, 1.0])
        ang = (ang2[:, None] + sgn * (spread[:, None] * jitter))[keep].ravel()
        length = (length[:, None] * shrink)[keep].ravel()
        d = np.repeat(end_d[keep], 2)
        y = np.repeat(end_y[keep], 2)
        width = np.repeat(width[keep] * 0.7, 2)
        amp = np.repeat(amp[keep] * 0.84, 2)


def _bone_profile(dist: np.ndarray, half: np.ndarray | float, px: float) -> np.ndarray:
    """Cross-section of a tubular bone seen side-on: bright cortex at the edges, lighter marrow, soft 1-px edge."""
    t = dist / half
    soft = np.maximum(0.12, px / half)
    t2 = np.minimum(t, 1.0) ** 2
    return np.clip((1.0 - t) / soft + 0.5, 0.0, 1.0) * (0.5 + 0.5 * t2 * t2)


def _rib_index(yp: np.ndarray, y0: float, step: float, curv: float) -> tuple[np.ndarray, np.ndarray]:
    """Rib k sits at ``y0 + step*k + curv*k**2`` (spacing grows downwards): (nearest k, vertical distance to it)."""
    i = (-step + np.sqrt(np.maximum(step * step + 4.0 * curv * (yp - y0), 0.0))) / (2.0 * curv)
    k = np.round(i)
    return k, (i - k) * (step + 2.0 * curv * k)


def _ribs(g: _Grid, a: _Anatomy, lung: _Lung) -> np.ndarray:
    """Posterior rib arcs (spine → lateral wall, convex upwards, turning down at the wall) and the fainter anterior
    arcs (lateral wall → costochondral junction, sloping down medially), drawn analytically for all ribs at once:
    each pixel finds its nearest rib along a common arc shape."""
    out = np.zeros_like(g.X)
    box = _lung_box(g, a, lung)
    d = lung.sign * (g.X[box] - a.cx)
    y = g.Y[box]
    px = 1.0 / g.n
    lat_row = np.interp(g.c[box[0]], _Y_SAMPLES, lung.lateral_d)[:, None] + 0.014
    span = lung.width + 0.014 - 0.025
    curv = 0.0022
    # posterior
    u = np.clip((d - 0.025) / span, 0.0, 1.0)
    ua = np.clip(u / 0.8, 0.0, 1.0)
    ub = np.clip((u - 0.55) / 0.45, 0.0, 1.0)
    shape = -0.027 * np.sin(np.pi * ua) + 0.07 * ub * ub
    slope = (-0.027 * np.pi / 0.8 * np.cos(np.pi * ua) * (u < 0.8) + 0.14 * ub / 0.45) / span
    k, dy = _rib_index(y - shape, a.rib_y0, a.rib_step, curv)
    dy = dy - a.rib_jitter[np.clip(k, 0, 11).astype(np.int64)]
    half = 0.0095 + 0.0006 * k
    post = 0.07 * _bone_profile(np.abs(dy) / np.sqrt(1.0 + slope * slope), half, px)
    post *= (k >= 0) & (k <= 10)
    post *= _smoothstep((lat_row + 0.004 - d) / 0.008) * _smoothstep((d - 0.02) / 0.01)
    # anterior
    w = np.maximum(lung.width - d, 0.0)
    shape = 0.07 + 0.46 * w + 0.3 * w * w
    slope = 0.46 + 0.6 * w
    k, dy = _rib_index(y - shape, a.rib_y0, a.rib_step + 0.004, curv)
    dy = dy - a.rib_jitter[np.clip(k, 0, 11).astype(np.int64)]
    half = 0.011 + 0.0006 * k
    fade = np.clip(1.6 * (1.0 - (lung.width - 0.005 - d) / max(0.05, lung.width - 0.13)), 0.0, 1.0)
    ant = 0.04 * _bone_profile(np.abs(dy) / np.sqrt(1.0 + slope * slope), half, px) * fade
    ant *= (k >= 0) & (k <= 7)
    ant *= _smoothstep((lat_row - d) / 0.008)
    out[box] = post + ant
    return out


def _render_anatomy(g: _Grid, a: _Anatomy, rng_v: np.random.Generator) -> dict[str, Any]:
    """The layers of a normal chest; findings modify the air, tissue and extra layers before compositing."""
    X, Y = g.X, g.Y
    n = g.n
    yc = g.c[:, None]
    dx = X - a.cx
    adx = np.abs(dx)
    zeros = np.zeros_like  # every layer starts as zeros of the image's shape
    # body outline: neck, shoulders, chest wall; soft tissue thicker in the middle and over the shoulders
    hw = (0.115 + 0.37 * _smoothstep((yc + 0.03) / 0.2) - 0.025 * np.clip((yc - 0.5) / 0.5, 0, 1)) * a.body_scale
    body_t = np.clip(1.0 - (dx / hw) ** 2, 0.0, 1.0) ** 0.3  # thick chest wall: a flat-topped profile
    body = _smoothstep((hw - adx) / 0.012)
    tissue = body * (0.30 + 0.36 * body_t + 0.06 * np.exp(-(((yc - 0.1) / 0.09) ** 2)))
    lay: dict[str, Any] = {"tissue": tissue, "body": body}

    # lungs: air depth with a soft ramp at the pleural surface, less air at the apices (shoulder girdle) and at the
    # bases (breast and chest wall soft tissue)
    air_depth = 0.36 * (0.78 + 0.22 * _smoothstep((yc - 0.10) / 0.3)) * (1.0 - 0.12 * _smoothstep((yc - 0.55) / 0.25))
    for side, lung in a.lungs.items():
        f = _lung_field(g, a, lung)
        lay[f"air_{side}"] = air_depth * _smoothstep(-f / 0.035) ** 0.7
        lay[f"lungmask_{side}"] = _smoothstep(-f / 0.008)

    # cardiomediastinal silhouette: upper mediastinum (SVC border on the image left, aortic knob on the image
    # right) merging into the heart (an ellipse whose apex points to the image right), fading below the diaphragm
    (hx, hy), (rx, ry) = a.heart_centre, a.heart_axes
    dome = 0.5 * (a.lungs["right"].dome_y + a.lungs["left"].dome_y)
    box = _box(g, hx - rx - 0.02, hx + rx + 0.02, a.heart_top - 0.02, hy + ry + 0.06)
    hdx, hdy = X[box] - hx, Y[box] - hy
    rb = np.interp(np.arctan2(hdy, hdx), a.heart_theta, a.heart_radius, period=2 * np.pi)
    fh = np.sqrt(hdx * hdx + hdy * hdy) - rb
    heart = zeros(X)
    heart[box] = _smoothstep(-fh / 0.006)
    heart_t = zeros(X)
    heart_t[box] = _smoothstep(-fh / 0.08) * _smoothstep((dome + 0.02 - Y[box]) / 0.05)
    box = _box(g, a.cx - 0.12, a.cx + 0.12, 0.0, a.heart_top + 0.12)
    ym, dxm = Y[box], dx[box]
    med_r = 0.05 + 0.014 * _smoothstep((ym - 0.12) / 0.2)  # SVC border
    med_l = 0.045 + 0.035 * np.exp(-(((ym - 0.285) / 0.032) ** 2)) + 0.025 * _smoothstep((ym - 0.33) / 0.08)
    upper = _smoothstep((a.heart_top + 0.08 - ym) / 0.05) * _smoothstep((ym - 0.06) / 0.06)
    mediastinum = zeros(X)
    mediastinum[box] = np.where(dxm < 0, _smoothstep((med_r + dxm) / 0.008),
                                _smoothstep((med_l - dxm) / 0.008)) * upper
    lay["heart"] = heart
    lay["mediastinum"] = mediastinum
    blocked = np.maximum(0.9 * heart, mediastinum)
    for side in a.lungs:
        lay[f"air_{side}"] *= 1.0 - blocked
    lay["cardio"] = np.maximum(heart_t, 0.6 * mediastinum)

    # bones: spine (vertebral bodies, discs, pedicles), ribs, clavicles, humeral heads; bone contrast is lower where
    # the beam crosses more soft tissue (outside the lungs)
    bone = zeros(X)
    box = _box(g, a.cx - 0.05, a.cx + 0.05, 0.0, 1.0)
    adxs = adx[box]
    phase = (Y[box] - 0.03) / 0.05
    frac = phase - np.round(phase)
    spine = _smoothstep((0.034 - adxs) / 0.006) * _smoothstep((Y[box] - 0.02) / 0.05)
    disc = np.exp(-((frac / 0.1) ** 2))
    ped = np.exp(-(((adxs - 0.021) / 0.007) ** 2 + ((frac - 0.1) / 0.2) ** 2))
    bone[box] = spine * (0.05 - 0.025 * disc + 0.03 * ped)
    pen = _Pen(g)
    for lung in a.lungs.values():
        bone += _ribs(g, a, lung)
        u = np.linspace(0.0, 1.0, 12)  # clavicle: S-shaped, from the sternal end up and out to the shoulder
        pts = np.stack([a.cx + lung.sign * (0.035 + 0.33 * u), 0.2 - 0.085 * u + 0.012 * np.sin(2 * np.pi * u)],
                       axis=1)
        pen.line(pts, 0.0115 + 0.004 * (1 - u) ** 4, 0.13)
    for s in (-1.0, 1.0):  # humeral heads at the upper corners
        pen.line([(a.cx + s * 0.50 * a.body_scale, 0.16), (a.cx + s * 0.505 * a.body_scale, 0.165)], 0.07, 0.16)
    clav = np.zeros_like(X)
    bone += pen.draw(clav, "bone")
    lay["bone"] = bone * body  # its visibility depends on the aeration behind it (applied when compositing)

    # trachea and main bronchi (air columns)
    airway = zeros(X)
    pen.line([(a.cx + 0.004, 0.0), (a.cx + 0.003, a.carina_y - 0.05), (a.cx, a.carina_y)], 0.013, 1.0)
    for lung in a.lungs.values():
        hd, hy_ = lung.hilum
        pen.line([(a.cx, a.carina_y), (a.cx + lung.sign * 0.035, a.carina_y + 0.035),
                  (a.cx + lung.sign * (hd - 0.02), hy_ - 0.035)], [0.0095, 0.008, 0.005], [1.0, 0.8, 0.0])
    pen.draw(airway, "rod")
    lay["airway"] = airway

    # hila and vessels, fine lung texture
    vessels = zeros(X)
    hila = zeros(X)
    for lung in a.lungs.values():
        hd, hy_ = lung.hilum
        hxc = a.cx + lung.sign * (hd + 0.012)
        box = _box(g, hxc - 0.08, hxc + 0.08, hy_ - 0.14, hy_ + 0.14)
        hila[box] += 0.07 * np.exp(-(((X[box] - hxc) / 0.028) ** 2 + ((Y[box] - hy_) / 0.055) ** 2))
        _vessel_tree(rng_v, pen, a, lung)
        _small_vessels(rng_v, pen, a, lung)
    pen.draw(vessels, "gauss")
    lay["vessels"] = vessels
    lay["hila"] = hila
    half = rng_v.standard_normal((n // 2, n // 2))
    lay["texture"] = _up2(_blur(half, max(0.5, n / 360))) * 2.0
    # gastric bubble under the left hemidiaphragm
    ld = a.lungs["left"].dome_y
    gx = a.cx + 0.16
    box = _box(g, gx - 0.06, gx + 0.06, ld + 0.01, ld + 0.09)
    gb = ((X[box] - gx) / 0.05) ** 2 + ((Y[box] - (ld + 0.05)) / 0.028) ** 2
    gastric = zeros(X)
    gastric[box] = 0.09 * _smoothstep((1.0 - gb) / 0.3) * _smoothstep((ld + 0.06 - Y[box]) / 0.004)
    lay["gastric"] = gastric
    lay["extra"] = zeros(X)  # additive brightness from findings (pleural line, air bronchograms)
    lay["metal"] = zeros(X)
    lay["pen"] = pen
    return lay


def _finding_rng(seed: int, f: Finding, side: str | None) -> np.random.Generator:
    key = [seed, 100, FINDING_KINDS.index(f.kind), SIDES.index(side) if side else 3,
           ZONES.index(f.zone) if f.zone else 3]
    return np.random.default_rng(key)


def _draw_effusion(g: _Grid, a: _Anatomy, lung: _Lung, height: float) -> np.ndarray:
    """Fluid filling the base: a meniscus rising along the lateral wall, density increasing downwards."""
    d = _side_d(g, a, lung)
    h = height * (lung.cp_y - lung.apex_y)
    u = np.clip((d - 0.06) / (lung.width - 0.06), 0.0, 1.0)
    y_lat = lung.cp_y - h
    y_med = y_lat + 0.075 + 0.1 * h
    surface = y_lat + (y_med - y_lat) * (1.0 - u) ** 2
    below = g.Y - surface
    op = np.clip(below / (0.035 + 0.1 * h), 0.0, 1.0) ** 0.8 + 0.18 * np.exp(np.minimum(below, 0.0) / 0.03)
    return np.clip(op, 0.0, 1.0) * (d > -0.01)


def _patch(g: _Grid, a: _Anatomy, rng: np.random.Generator, lung: _Lung, zone: str, radius: float,
           dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """Patchy airspace opacity in one zone of one lung: returns (opacity in [0,1], air-bronchogram lines)."""
    top, bottom = _zone_bounds(lung, zone)
    yc = rng.uniform(top + 0.3 * (bottom - top), bottom - 0.3 * (bottom - top))
    lat = float(np.interp(yc, _Y_SAMPLES, lung.lateral_d))
    d_min = 0.13 if zone == "upper" else max(0.13, 0.9 * _heart_reach(a, lung))  # not hidden by the heart
    dc = rng.uniform(min(d_min, lat - 0.1), max(d_min + 0.01, lat - 0.09))
    xc = a.cx + lung.sign * dc
    fld = np.zeros_like(g.X)
    box = _box(g, xc - 4 * radius, xc + 4 * radius, yc - 4 * radius, yc + 4 * radius)
    xs, ys = g.X[box], g.Y[box]
    for _ in range(7):
        ox, oy = rng.normal(0.0, 0.55 * radius, 2)
        s = radius * rng.uniform(0.35, 0.6)
        fld[box] += np.exp(-0.5 * (((xs - xc - ox) / s) ** 2 + ((ys - yc - oy * 0.8) / s) ** 2))
    patchy = 0.55 + 0.45 * _smooth_noise(rng, g.n, 14)
    fld = fld * np.clip(patchy, 0.2, 1.6)
    op = (1.0 - np.exp(-2.5 * fld)) if dense else 0.75 * (1.0 - np.exp(-1.6 * _blur(fld, g.n * 0.01)))
    window = _smoothstep((g.Y - top) / 0.05) * _smoothstep((bottom - g.Y) / 0.05)  # stays inside the zone
    bronch = np.zeros_like(g.X)
    pen = _Pen(g)
    if dense:
        for _ in range(2):
            ang = rng.uniform(0.2, 1.2) * rng.choice([-1.0, 1.0]) + (0.0 if lung.sign > 0 else np.pi)
            length = radius * rng.uniform(0.9, 1.4)
            x0, y0 = xc - 0.5 * length * math.cos(ang), yc - 0.5 * length * math.sin(ang)
            x1, y1 = xc + 0.5 * length * math.cos(ang), yc + 0.5 * length * math.sin(ang)
            x2 = x1 + 0.4 * length * math.cos(ang + 0.5)
            y2 = y1 + 0.4 * length * math.sin(ang + 0.5)
            pen.line([(x0, y0), (x1, y1), (x2, y2)], [0.004, 0.003, 0.002], [0.6, 1.0, 0.3])
        pen.draw(bronch)
    return op * window, bronch * window


def _heart_reach(a: _Anatomy, lung: _Lung) -> float:
    """How far the heart reaches from the midline into this lung (a third of its width on the right, two thirds
    on the left)."""
    return 2.0 * a.heart_axes[0] * (2.0 / 3.0 if lung.sign > 0 else 1.0 / 3.0)


def _draw_atelectasis(g: _Grid, a: _Anatomy, rng: np.random.Generator, lung: _Lung, zone: str,
                      extent: float) -> np.ndarray:
    """Plate-like (discoid) atelectasis: 1 to 3 thin, nearly horizontal bands of density."""
    top, bottom = _zone_bounds(lung, zone)
    if zone == "lower":
        bottom = lung.dome_y
    canvas = np.zeros_like(g.X)
    pen = _Pen(g)
    n_bands = max(1, min(3, math.ceil(3 * extent - 1e-9)))
    half = 0.0045 + 0.0055 * extent
    for i in range(n_bands):
        yc = top + (bottom - top) * (0.3 + 0.4 * (i + rng.uniform(-0.3, 0.3)) / max(1, n_bands - 1))
        lat = float(np.interp(yc, _Y_SAMPLES, lung.lateral_d))
        length = rng.uniform(0.09, 0.14) * (0.8 + 0.4 * extent)
        d_min = max(0.12, 0.85 * _heart_reach(a, lung)) if zone != "upper" else 0.12
        d0 = rng.uniform(min(d_min, lat - length - 0.04), max(d_min + 0.01, lat - length - 0.03))
        tilt = rng.uniform(-0.18, 0.10)
        p0 = (a.cx + lung.sign * d0, yc)
        p1 = (a.cx + lung.sign * (d0 + length), yc + tilt * length)
        mid = ((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + rng.uniform(-0.006, 0.006))
        pen.line([p0, mid, p1], [half * 0.4, half, half * 0.4], 0.65)
    return pen.draw(canvas)


def _draw_pneumothorax(g: _Grid, a: _Anatomy, lung: _Lung, rim: float) -> tuple[np.ndarray, np.ndarray]:
    """Pleural air between the chest wall and the visceral pleural line: a rim of width ``rim`` (image widths)
    along the apex and the upper lateral wall, tapering towards the base and the mediastinum (upright patient).
    Returns (tissue mask of the remaining lung, the visceral pleural line)."""
    f = _lung_field(g, a, lung)
    th = np.arctan2(g.Y - lung.centre[1], _side_d(g, a, lung) - lung.centre[0])  # 0 lateral, -pi/2 apex
    weight = np.clip((th + 2.9) / 0.5, 0.0, 1.0) * np.clip((1.1 - th) / 0.8, 0.0, 1.0)
    weight = np.where(th > 2.5, 0.0, weight)  # the medial side (angles wrap around at +-pi)
    f_in = f + rim * weight  # the retracted lung: points deeper than the rim inside the outline
    tissue = _smoothstep(-f_in / 0.006)
    width = max(0.0022, 0.9 / g.n)
    inside = _smoothstep(-f / 0.01)
    line = np.exp(-0.5 * (f_in / width) ** 2) * inside * _smoothstep(weight / 0.3)
    return tissue, line


def _draw_edema(g: _Grid, a: _Anatomy, lay: dict[str, Any], rng: np.random.Generator, v: float) -> None:
    """Bilateral perihilar haze (bat-wing), denser towards the bases, with Kerley B lines when moderate or worse."""
    pen: _Pen = lay["pen"]
    for side, lung in a.lungs.items():
        hd, hy = lung.hilum
        hxp = a.cx + lung.sign * (hd + 0.05)
        r = np.hypot((g.X - hxp) / 1.25, g.Y - hy)
        haze = v * (0.75 * np.exp(-((r / 0.17) ** 2)) + 0.25 * _smoothstep((g.Y - 0.35) / 0.4))
        haze *= np.clip(0.8 + 0.35 * _smooth_noise(rng, g.n, 10), 0.3, 1.3)
        lay[f"air_{side}"] *= 1.0 - np.clip(haze, 0.0, 0.85) * lay[f"lungmask_{side}"]
        if v >= 0.5:
            kb = np.zeros_like(g.X)
            for _ in range(int(4 + 6 * v)):
                yk = rng.uniform(lung.cp_y - 0.2, lung.cp_y - 0.05)
                lat = float(np.interp(yk, _Y_SAMPLES, lung.lateral_d))
                d0 = lat - rng.uniform(0.003, 0.01)
                pen.line([(a.cx + lung.sign * d0, yk), (a.cx + lung.sign * (d0 - rng.uniform(0.015, 0.03)), yk)],
                         0.0016, 0.07)
            pen.draw(kb)
            lay["extra"] += kb * lay[f"lungmask_{side}"]


def _draw_devices(g: _Grid, a: _Anatomy, spec: PhantomSpec, lay: dict[str, Any]) -> None:
    """Endotracheal tube, central venous catheter, pacemaker generator and leads: bright (metal) strokes."""
    metal = lay["metal"]
    cx = a.cx
    pen = _Pen(g)
    for f in spec.findings:
        rng = _finding_rng(spec.seed, f, f.side)
        if f.kind == "endotracheal_tube":
            tip = a.carina_y - rng.uniform(0.045, 0.075)
            pts = [(cx + 0.03, 0.0), (cx + 0.012, 0.06), (cx + 0.003, 0.14), (cx + 0.001, tip)]
            pen.line(pts, 0.0075, 0.14)
            pen.draw(metal, "rod")
            pen.line([(x - 0.004, y) for x, y in pts], 0.0024, 0.55)
            pen.draw(metal)
        elif f.kind == "central_line":
            s = -1.0 if f.side == "right" else 1.0
            if _route(spec, f) == "internal jugular":
                pts = [(cx + s * 0.10, 0.0), (cx + s * 0.075, 0.09), (cx + s * 0.045, 0.17)]
            else:
                pts = [(cx + s * 0.30, 0.13), (cx + s * 0.20, 0.15), (cx + s * 0.10, 0.18), (cx + s * 0.05, 0.2)]
            tip_y = rng.uniform(0.33, 0.39)
            pts += [(cx - 0.035, 0.26), (cx - 0.03, tip_y)] if f.side == "right" else [
                (cx + 0.01, 0.23), (cx - 0.03, 0.27), (cx - 0.03, tip_y)]
            pen.line(pts, 0.0024, 0.45)
            pen.draw(metal, "rod")
        elif f.kind == "pacemaker":
            s = -1.0 if f.side == "right" else 1.0
            gx, gy = cx + s * rng.uniform(0.22, 0.27), rng.uniform(0.16, 0.20)
            box = _box(g, gx - 0.06, gx + 0.06, gy - 0.05, gy + 0.05)
            q = np.abs((g.X[box] - gx) / 0.045) ** 4 + np.abs((g.Y[box] - gy) / 0.032) ** 4
            gen = 0.62 * _smoothstep((1.0 - q) / 0.15) - 0.08 * _smoothstep((0.55 - q) / 0.15)
            np.maximum(metal[box], gen, out=metal[box])
            hx, hy = a.heart_centre
            rv = (hx + 0.45 * a.heart_axes[0], hy + 0.6 * a.heart_axes[1])
            lead = [(gx - s * 0.03, gy + 0.01), (cx + s * 0.12, 0.2), (cx - 0.03, 0.26), (cx - 0.04, 0.40),
                    (cx - 0.02, hy), rv]
            pen.line(lead, 0.0026, 0.5)
            pen.line([rv, (rv[0] + 0.004, rv[1] + 0.004)], 0.006, 0.6)
            if _dual_chamber(spec, f):
                ra = (cx - 0.035, a.heart_top + 0.04)
                pen.line([*lead[:4], (cx - 0.05, a.heart_top + 0.06), ra], 0.0024, 0.5)
                pen.line([ra, (ra[0] + 0.006, ra[1] - 0.004)], 0.005, 0.6)
            pen.draw(metal, "rod")


def effective_ctr(spec: PhantomSpec) -> float:
    """The cardiothoracic ratio drawn: the cardiomegaly finding's, else ``spec.ctr``, else one from the seed."""
    normal = float(np.random.default_rng([spec.seed, 3]).uniform(*NORMAL_CTR_RANGE))
    for f in spec.of_kind("cardiomegaly"):
        return f.magnitude
    return float(spec.ctr) if spec.ctr is not None else normal


def render(spec: PhantomSpec) -> np.ndarray:
    """Draw the phantom radiograph of ``spec``: a ``np.uint8`` array (size, size), bright = dense."""
    size = spec.size
    n = size * 2 if size < 128 else size  # small images are drawn at twice the size and averaged down
    g = _Grid(n)
    a = _anatomy(np.random.default_rng([spec.seed, 0]), effective_ctr(spec))
    lay = _render_anatomy(g, a, np.random.default_rng([spec.seed, 1]))
    tissue_mask = {s: lay[f"lungmask_{s}"].copy() for s in a.lungs}
    vessel_gain = 1.0
    extra = lay["extra"]

    for f in spec.findings:
        if f.kind in DEVICE_KINDS or f.kind == "cardiomegaly":  # cardiomegaly is drawn by the anatomy (its CTR)
            continue
        if f.kind == "edema":
            _draw_edema(g, a, lay, _finding_rng(spec.seed, f, None), f.magnitude)
            vessel_gain *= 1.0 - 0.35 * f.magnitude
            continue
        for side in f.sides():
            lung = a.lungs[side]
            rng = _finding_rng(spec.seed, f, side)
            air = lay[f"air_{side}"]
            if f.kind == "pleural_effusion":
                op = _draw_effusion(g, a, lung, f.magnitude)
                air *= 1.0 - op
                extra += 0.05 * op * lay["body"] * _smoothstep((lung.width + 0.02 - _side_d(g, a, lung)) / 0.02)
                tissue_mask[side] = tissue_mask[side] * (1.0 - op)
            elif f.kind in ("consolidation", "lung_opacity"):
                op, bronch = _patch(g, a, rng, lung, f.zone or "lower", f.magnitude, f.kind == "consolidation")
                op = op * lay[f"lungmask_{side}"]
                air *= 1.0 - op
                if f.kind == "consolidation":
                    extra += 0.04 * op - 0.07 * bronch * op ** 2
                tissue_mask[side] = tissue_mask[side] * (1.0 - 0.6 * op)
            elif f.kind == "atelectasis":
                band = _draw_atelectasis(g, a, rng, lung, f.zone or "lower", f.magnitude)
                op = _blur(band, max(0.6, g.n / 220)) * lay[f"lungmask_{side}"]
                air *= 1.0 - op
            elif f.kind == "pneumothorax":
                tissue, line = _draw_pneumothorax(g, a, lung, f.magnitude)
                space = lay[f"lungmask_{side}"] * (1.0 - tissue)
                tissue_mask[side] = tissue_mask[side] * tissue
                extra += 0.10 * line - 0.015 * space
                air *= 1.0 - 0.06 * tissue * lay[f"lungmask_{side}"]  # the collapsed lung is a little denser

    _draw_devices(g, a, spec, lay)
    tmask = np.clip(tissue_mask["right"] + tissue_mask["left"], 0.0, 1.0) * (1.0 - 0.85 * lay["heart"])
    air = lay["air_right"] + lay["air_left"]
    bone_visible = 0.45 + 0.55 * np.clip(air / 0.3, 0.0, 1.0)  # bones show best against aerated lung
    img = (lay["tissue"] + 0.1 * lay["cardio"] + lay["bone"] * bone_visible + lay["hila"] * tmask - air
           - 0.09 * lay["airway"] * lay["body"] - lay["gastric"]
           + (lay["vessels"] * vessel_gain + 0.02 * lay["texture"]) * tmask + extra + lay["metal"])
    img = a.contrast * img + a.brightness

    rng_n = np.random.default_rng([spec.seed, 2])
    img = _blur(img, max(0.5, n * 0.0022))
    img = img + 0.45 * (img - _blur_coarse(img, n * 0.008))  # CR-style unsharp-mask edge enhancement
    img = img * (1.0 + 0.025 * _smooth_noise(rng_n, n, 4))  # exposure non-uniformity
    img = img + 0.012 * rng_n.standard_normal(img.shape) + 0.006 * _up2(rng_n.standard_normal((n // 2, n // 2)))
    img = np.clip(img, 0.0, 1.0) ** 1.1
    if n != size:
        img = img.reshape(size, n // size, size, n // size).mean(axis=(1, 3))
    return np.round(img * 255.0).astype(np.uint8)


