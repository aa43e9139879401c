"""One synthetic ultrasound frame in memory: geometry -> anatomy -> B-mode -> scan conversion ->
lesion masks -> optional colour Doppler and burned-in overlays."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shards.synth.anatomy import Extent
from shards.synth.bmode import form_bmode
from shards.synth.doppler import draw_doppler
from shards.synth.geometry import ScanGeometry, place_fan, place_linear
from shards.synth.lesions import LESION_KINDS, draw_lesion, paint_lesion
from shards.synth.overlays import Canvas, draw_calipers, draw_depth_scale, draw_text
from shards.synth.presets import PRESETS, Preset
from sonodistill.errors import UserError

# Margin fractions (top, bottom, left, right) around the scan area: scanner screens leave room
# for text; cropped research datasets (BUSI, DDTI) keep little of it.
SCREEN_MARGINS = ((0.06, 0.13), (0.01, 0.05), (0.03, 0.14), (0.06, 0.14))
TIGHT_MARGINS = ((0.0, 0.03), (0.0, 0.02), (0.0, 0.03), (0.0, 0.03))


@dataclass
class Frame:
    """A rendered frame. ``image`` is uint8 (H, W), or (H, W, 3) when colour was drawn."""

    image: np.ndarray
    mask: np.ndarray  # bool (H, W): union of the lesion masks
    scan_mask: np.ndarray  # bool (H, W): the scan area
    bbox: tuple[int, int, int, int]  # scan area (x0, y0, x1, y1), x1/y1 exclusive
    geometry: str  # 'linear' | 'convex' | 'sector'
    preset: str
    lesion: str  # 'normal' | 'benign' | 'malignant'
    lesion_masks: list[np.ndarray] = field(default_factory=list)  # one bool mask per lesion
    overlays: list[str] = field(default_factory=list)  # what was burned in
    mm_per_px: float = 0.0


def _u(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _geometry(
    p: Preset, rng: np.random.Generator, size: tuple[int, int] | None, tight: bool
) -> tuple[ScanGeometry, Extent]:
    if size is None:
        size = (
            int(rng.integers(p.height[0], p.height[1] + 1)),
            int(rng.integers(p.width[0], p.width[1] + 1)),
        )
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise UserError(f"size: expected (height, width) of at least 32 px each, got {size}")
    margins = tuple(_u(rng, r) for r in (TIGHT_MARGINS if tight else SCREEN_MARGINS))
    shift = float(rng.uniform(-1.0, 1.0)) * (0.3 if tight else 1.0)
    depth = _u(rng, p.depth_mm)
    if p.geometry == "linear":
        g = place_linear(h, w, _u(rng, p.aperture_mm), depth, margins, shift)
        return g, Extent(g.width_mm, g.depth_mm)
    radius, half = _u(rng, p.radius_mm), np.deg2rad(_u(rng, p.half_angle_deg))
    g = place_fan(p.geometry, h, w, depth, radius, half, margins, shift)
    return g, Extent(g.width_mm, g.depth_mm, g.r0 * g.mm_per_px, g.half_angle)


def _lesions(kind: str, p, arng: np.random.Generator, scene, n_lesions: int) -> list:
    """``n_lesions`` lesions of ``kind`` placed apart and painted into ``scene`` (none for normal)."""
    lesions: list = []
    if kind == "normal":
        return lesions
    lo, hi = p.lesion_radius_mm
    radius = (lo, hi) if n_lesions <= 1 else (lo * 0.8, max(lo, hi * 0.6))  # several must fit side by side
    for _ in range(max(1, n_lesions)):
        les = draw_lesion(kind, arng, scene, radius, avoid=lesions)
        if les is not None:
            lesions.append(les)
    for les in lesions:
        paint_lesion(scene, les, arng)
    return lesions


def _beamform(geom, scene, rng, atten: float, dr: float, gain: float, resolution_mm, shift: float, tgc: bool):
    """The scene sampled along the beams, formed into B-mode (speckle, TGC, noise) and scan-converted."""
    ax_mm, lat_mm = resolution_mm
    echo, att = scene.evaluate(geom.beam_points().shifted(shift))
    shape = geom.beam_shape
    if geom.kind == "linear":
        lat_px = lat_mm / geom.mm_per_px
    else:  # lateral sampling is in angle: the beam widens with depth as in a real fan
        r_mid = (geom.r0 + geom.r1) / 2.0 * geom.mm_per_px
        lat_px = lat_mm / (r_mid * 2.0 * geom.half_angle / geom.n_lines)
    depth_cm = geom.beam_depth_mm() / 10.0
    tgc_db = None
    if tgc:
        knots = rng.uniform(-2.0, 2.0, 5)  # the sonographer's TGC sliders
        tgc_db = atten * rng.uniform(0.9, 1.05) * depth_cm + np.interp(depth_cm, np.linspace(0, depth_cm[-1], 5), knots)
    noise = 10.0 ** ((rng.uniform(-32.0, -14.0) - atten * float(depth_cm[-1])) / 20.0)
    beam = form_bmode(
        echo.reshape(shape),
        att.reshape(shape),
        rng,
        dz_mm=geom.dz_mm,
        sigma_axial=max(ax_mm / geom.dz_mm, 0.7),
        sigma_lateral=max(lat_px, 1.0),
        dynamic_range_db=dr,
        gain_db=gain,
        tgc_db=tgc_db,
        noise_amplitude=noise,
    )
    return np.rint(geom.scan_convert(beam)).astype(np.uint8)


def _burn_in(image, geom, scan_mask, rng, preset: str, doppler: bool, overlays: bool, lesion_union):
    """A colour Doppler box and the scanner's overlays (text, depth scale, calipers) burnt into the pixels."""
    drawn: list[str] = []
    if doppler:
        image = draw_doppler(image, geom, scan_mask, rng)
        drawn.append("doppler")
    if overlays:
        c = Canvas(image, scan_mask)
        if rng.random() < 0.9 and draw_text(c, rng, preset, geom):
            drawn.append("text")
        if rng.random() < 0.7 and draw_depth_scale(c, rng, geom):
            drawn.append("depth_scale")
        if rng.random() < (0.6 if lesion_union is not None else 0.25) and draw_calipers(
            c, rng, scan_mask, lesion_union
        ):
            drawn.append("calipers")
        image = c.array()
    return image, drawn


def render(
    preset: str,
    rng: np.random.Generator,
    *,
    lesion: str | None = None,
    size: tuple[int, int] | None = None,
    overlays: bool = False,
    doppler: bool = False,
    n_lesions: int = 1,
    tight: bool = False,
    anatomy_rng: np.random.Generator | None = None,
    tgc: bool = True,
) -> Frame:
    """Render one frame of ``preset`` (a key of PRESETS).

    lesion: None/'normal' (no lesion), 'benign' or 'malignant'; ``n_lesions`` of that kind.
    size: (height, width) in pixels; drawn from the preset's range when None.
    overlays: burn in text, depth scale and (sometimes) calipers; doppler: add a colour box.
    tight: small black margins (cropped research datasets) instead of a scanner screen layout.
    anatomy_rng: when given, geometry, machine settings and anatomy come from it and only speckle,
    gain curve, a small probe shift and overlays from ``rng`` (several frames of one patient).
    tgc: apply time-gain compensation (off shows the raw depth attenuation).
    """
    if preset not in PRESETS:
        raise UserError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    kind = "normal" if lesion in (None, "normal") else lesion
    if kind != "normal" and kind not in LESION_KINDS:
        raise UserError(f"lesion: expected None, 'normal', 'benign' or 'malignant', got {lesion!r}")
    p = PRESETS[preset]
    arng = anatomy_rng if anatomy_rng is not None else rng
    geom, extent = _geometry(p, arng, size, tight)
    atten = _u(arng, p.atten_db_cm)
    scene = p.anatomy(arng, extent, atten)
    lesions = _lesions(kind, p, arng, scene, n_lesions)
    dr = _u(arng, p.dynamic_range_db) + rng.uniform(-1.0, 1.0)
    gain = _u(arng, p.gain_db) + rng.uniform(-1.5, 1.5)
    ax_mm, lat_mm = _u(arng, p.axial_mm), _u(arng, p.lateral_mm)
    shift = float(rng.uniform(-4.0, 4.0)) if anatomy_rng is not None else 0.0
    image = _beamform(geom, scene, rng, atten, dr, gain, (ax_mm, lat_mm), shift, tgc)
    scan_mask = geom.scan_mask()
    pix = geom.pixel_points(scan_mask).shifted(shift)
    masks = []
    for les in lesions:
        m = np.zeros_like(scan_mask)
        m[scan_mask] = les.shape.inside(pix)
        masks.append(m)
    union = np.logical_or.reduce(masks) if masks else np.zeros_like(scan_mask)
    image, drawn = _burn_in(image, geom, scan_mask, rng, preset, doppler, overlays, union if masks else None)
    return Frame(
        image=image,
        mask=union,
        scan_mask=scan_mask,
        bbox=geom.bbox(),
        geometry=geom.kind,
        preset=preset,
        lesion=kind if lesions else "normal",
        lesion_masks=masks,
        overlays=drawn,
        mm_per_px=geom.mm_per_px,
    )
