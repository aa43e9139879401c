"""Annotations inside the scan area (issue 17): found on real frames and on marks planted on real crops,
told apart by kind, inpainted without a trace, listed in every sample's JSON, acted on per source."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageDraw

import shards.build as build_mod
from shards.annotations import detect_marks, inpaint, marks_mask, stroke_pixels
from shards.build import BuildSettings, build_shards
from shards.catalogue import SourceConfig
from shards.clean import Cleaned, clean_frame
from shards.decode import decode_image, to_gray
from shards.faint_calipers import _contrast
from shards.inspect import with_boxes
from shards.mark_shapes import Piece, dotted_curves
from shards.options import SourceOptions
from shards.readers import open_media
from shards.scan_area import crop_to_scan_area, frame_scan_area, region_area
from shards.synth import render
from shards.synth.marks import KINDS, covered, plant
from shards.thresholds import FAINT_CONTRAST, FAINT_SHAPES, FAINT_SIDE, MARK_MIN_FRAME
from shards.tint import residual_colour
from sonodistill.errors import UserError

CLEAN = ("interson-phantom.png", "clarius_axial-lateral-resolution-2020.png")  # real, nothing drawn inside


def real_crop(pocus_dir: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(grey crop of the scan area, its mask) of a real frame."""
    px = decode_image((pocus_dir / name).read_bytes()).pixels
    gray = to_gray(px)
    area = frame_scan_area(gray, px if px.ndim == 3 else None)
    return crop_to_scan_area(gray, area), area.mask_in_bbox()


def found(img: np.ndarray, mask: np.ndarray) -> list:
    if img.ndim == 3:
        return detect_marks(to_gray(img), mask, residual_colour(img, mask))
    return detect_marks(img, mask)


def test_clean_real_crops_have_no_marks_and_planted_marks_are_found(pocus_dir):
    hits, total = Counter(), Counter()
    for name in CLEAN:
        crop, mask = real_crop(pocus_dir, name)
        assert found(crop, mask) == [], name
        for seed in range(6):
            img, truth = plant(crop, mask, np.random.default_rng(seed), grey_only=seed % 2 == 0)
            marks = found(img, mask)
            for kind, box in truth:
                total[kind] += 1
                hits[kind] += covered(img, crop, box, marks)
    assert set(total) == set(KINDS)
    assert sum(hits.values()) >= 0.9 * sum(total.values()), (hits, total)
    assert all(hits[k] >= 0.75 * total[k] for k in KINDS), (hits, total)


def speckle(h: int = 160, w: int = 200) -> np.ndarray:
    frame = render("thyroid", np.random.default_rng(3), size=(h, w), tight=True)
    return frame.image if frame.image.ndim == 2 else frame.image[..., 0]


def test_each_kind_of_mark_is_told_apart():
    base = speckle()
    mask = np.ones(base.shape, bool)
    img = Image.fromarray(base)
    d = ImageDraw.Draw(img)
    d.line([(20, 30), (30, 30)], fill=255)
    d.line([(25, 25), (25, 35)], fill=255)  # a '+' caliper
    for x in range(60, 130, 5):
        d.point((x, 30), fill=255)  # a dotted line
    d.text((40, 120), "RT LOBE", fill=255)
    d.ellipse([150, 100, 180, 122], outline=255)  # a body mark
    d.line([(150, 130), (160, 140)], fill=255)
    d.line([(100, 60), (100, 100)], fill=255)  # a straight line
    kinds = {m.kind for m in detect_marks(np.asarray(img), mask)}
    assert {"caliper", "dotted_line", "text", "body_mark", "line"} <= kinds
    assert detect_marks(base, mask) == []


def test_a_caliper_pair_cutting_each_others_arms_and_a_drawn_trace_are_marks():
    """Two calipers a wall's thickness apart, drawn as bars around an open centre with a black edge
    (an ATL intima-media pair), cut each other's facing arm to a stub; a curved trace one pixel wide
    is a drawn line. Two bars alone on one row are no caliper."""
    base = speckle()
    mask = np.ones(base.shape, bool)

    def bars(img: np.ndarray, cy: int, up: int, down: int) -> None:
        for y0, y1, x0, x1 in ((cy, cy + 1, 95, 99), (cy, cy + 1, 102, 106), (cy - up - 1, cy - 1, 100, 101)):
            img[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 0
            img[y0:y1, x0:x1] = 176
        img[cy + 2 : cy + 2 + down, 99:102] = 0
        img[cy + 2 : cy + 2 + down, 100] = 176

    img = base.copy()
    bars(img, 60, up=4, down=2)  # the upper caliper: its lower arm cut to 2 pixels ...
    bars(img, 68, up=0, down=4)  # ... the lower one: no upper arm left
    marks = detect_marks(img, mask)
    assert sorted(m.box for m in marks if m.kind == "caliper") == [(95, 55, 106, 64), (95, 68, 106, 74)]
    img = base.copy()
    bars(img, 60, up=0, down=0)
    assert [m.kind for m in detect_marks(img, mask)] == []
    trace = Image.fromarray(base)
    ImageDraw.Draw(trace).arc([40, 60, 150, 150], 200, 340, fill=255)
    assert [m.kind for m in detect_marks(np.asarray(trace), mask)] == ["line"]


def test_small_text_over_bright_tissue_is_text_when_enough_glyphs_line_up():
    """Text standing 57 grey levels above bright tissue (BUSI at 256 px: 55) is text when at least
    three glyphs line up; two glyphs, or text standing 47 above, are not enough."""
    rng = np.random.default_rng(0)
    base = (150 + rng.normal(0, 1, (60, 200))).clip(0, 255).astype(np.uint8)
    mask = np.ones(base.shape, bool)

    def kinds(text: str, level: int) -> list[str]:
        img = Image.fromarray(base)
        ImageDraw.Draw(img).text((40, 25), text, fill=level)
        return [m.kind for m in detect_marks(np.asarray(img), mask)]

    assert kinds("RT AXILLA", 207) == ["text"]
    assert kinds("RT", 207) == []
    assert kinds("RT AXILLA", 197) == []


def tissue(h: int, w: int, level: float = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((level + rng.normal(0, 10, (h, w))).astype(np.float32), (0, 0), 1.0)
    return base.clip(0, 255).astype(np.uint8)


def block_text(word: str, bars: dict, pitch: int) -> np.ndarray:
    """``word`` in block letters (``bars``: each letter's filled boxes) at x 40, y 30 over speckle."""
    img = tissue(80, 300)
    for i, ch in enumerate(word):
        for x0, y0, x1, y1 in bars[ch]:
            img[30 + y0 : 30 + y1, 40 + pitch * i + x0 : 40 + pitch * i + x1] = 255
    return img


def test_bold_scanner_text_is_text():
    """Block capitals 18 px tall in 4 px strokes (a bold scanner font: "Rt Kidney", "RIF TX" on
    clinical screens), where a bar meets a stem wider still, are text."""
    bars = {
        "L": [(0, 0, 4, 18), (0, 15, 12, 18)],
        "E": [(0, 0, 4, 18), (0, 0, 12, 3), (0, 8, 10, 11), (0, 15, 12, 18)],
        "F": [(0, 0, 4, 18), (0, 0, 12, 3), (0, 8, 10, 11)],
        "T": [(0, 0, 13, 3), (5, 0, 9, 18)],
    }
    img = block_text("LEFT", bars, 18)
    marks = detect_marks(img, np.ones(img.shape, bool))
    assert [(m.kind, m.box) for m in marks] == [("text", (40, 30, 107, 48))]


def test_mixed_case_text_is_text():
    """Capitals and lower case on one baseline (captions such as "RLQ TX Trans UP", "Left") hold two
    glyph heights, the x-height and the capitals'; they are one line of text."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((40 + rng.normal(0, 10, (90, 360))).astype(np.float32), (0, 0), 1.0)
    base = base.clip(0, 255).astype(np.uint8)
    for word, box in (("RLQ TX Trans UP", (3, 36, 228, 60)), ("Left", (3, 36, 51, 60))):
        glyphs = Image.new("L", (120, 14))
        ImageDraw.Draw(glyphs).text((0, 0), word, fill=255)
        img = base.copy()
        img[30:72] = np.maximum(img[30:72], np.asarray(glyphs.resize((360, 42), Image.Resampling.NEAREST)))
        marks = detect_marks(img, np.ones(img.shape, bool))
        assert [(m.kind, m.box) for m in marks] == [("text", box)], word


def test_as_many_lower_case_glyphs_as_capitals_are_text():
    """Capitals 18 px tall and lower case 10 px, two of each ("LoLo"): the middle height (14) is
    neither, so the line's two most common heights are its two."""
    bars = {
        "L": [(0, 0, 3, 18), (0, 15, 11, 18)],
        "o": [(0, 8, 3, 18), (8, 8, 11, 18), (0, 8, 11, 11), (0, 15, 11, 18)],
    }
    img = block_text("LoLo", bars, 15)
    marks = detect_marks(img, np.ones(img.shape, bool))
    assert [(m.kind, m.box) for m in marks] == [("text", (40, 30, 96, 48))]


@pytest.mark.parametrize("level", [40, 90])
@pytest.mark.parametrize(
    "word, scale, found_before",
    [("LT", 0.45, []), ("RT", 0.55, []), ("SAG", 0.45, ["dotted_line"]), ("RT 2.31cm LCCA", 0.4, ["text"])],
)
def test_two_capitals_and_anti_aliased_captions_are_one_line_of_text(word, scale, found_before, level):
    """OpenCV's font is anti-aliased: a glyph's edges spread over many grey levels and peeling breaks
    thin glyphs into bits ("SAG" was read as a dotted line); a two-capital caption ("LT": 1.18 times
    wider than tall) was under the old 1.5. Each is now one text mark over the caption."""
    img = tissue(60, 240, level)
    (w, h), base = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(img, word, (20, 35), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
    marks = detect_marks(img, np.ones(img.shape, bool))
    assert [m.kind for m in marks] == ["text"], (word, found_before)
    x0, y0, x1, y1 = marks[0].box
    assert 18 <= x0 <= 23 and 35 - h - 2 <= y0 and x1 >= 20 + w - 4 and y1 <= 35 + base + 1, marks[0].box


def test_a_bright_fascia_in_pieces_is_no_text():
    """Three segments of a wavy bright band (a fascia broken by speckle) are glyph-tall pieces on one
    baseline, but each is 6-7 times wider than tall: streaks, not letters (no text, peeled or not)."""
    img = tissue(60, 240, 80).astype(np.float32)
    band = np.zeros_like(img)
    for x0, x1 in ((20, 66), (72, 118), (124, 170)):
        for x in range(x0, x1):
            band[int(round(30 + 3 * np.sin(x / 9))), x] = 1
    for sigma in (1.0, 1.5):
        soft = cv2.GaussianBlur(band, (0, 0), sigma)
        img2 = np.maximum(img, 200 * soft / soft.max()).clip(0, 255).astype(np.uint8)
        assert detect_marks(img2, np.ones(img2.shape, bool)) == [], sigma


@pytest.mark.parametrize("length", [16, 18, 25])
def test_a_diagonal_arrow_is_long_enough_along_its_axis(length):
    """The shortest line is measured along its axis: a diagonal arrow in an 18 px box is 25 px long.
    Its head is read where it is widest, one bin in from the tip of a short arrow (a 16 px one was a
    line before)."""
    img = tissue(80, 80)
    cv2.arrowedLine(img, (20, 20), (20 + length, 20 + length), 255, 1, cv2.LINE_8, 0, 0.35)
    marks = detect_marks(img, np.ones(img.shape, bool))
    assert [m.kind for m in marks] == ["arrow"]
    assert marks[0].box == (20, 20, 21 + length, 21 + length)


@pytest.mark.parametrize("colour", [(0, 220, 0), (255, 255, 0), (0, 255, 255)])
def test_a_coloured_caliper_touching_bright_grains_is_a_caliper(colour):
    """Bright speckle grains touching a coloured caliper's arms joined its piece, whose shape was then
    no cross (a coloured "line" at best); coloured and grey strokes are pieces apart now."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((150 + rng.normal(0, 12, (80, 120))).astype(np.float32), (0, 0), 1.0)
    yy, xx = np.mgrid[:80, :120]
    for cy, cx in ((35, 56), (41, 62), (31, 63)):
        base += 90 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    grey = base.clip(0, 255).astype(np.uint8)
    mask = np.ones(grey.shape, bool)
    assert detect_marks(grey, mask) == []  # the grains alone are no mark
    img = np.repeat(grey[..., None], 3, axis=2)
    cv2.line(img, (52, 37), (68, 37), colour, 1)
    cv2.line(img, (60, 29), (60, 45), colour, 1)
    assert [(m.kind, m.box) for m in found(img, mask)] == [("caliper", (52, 29, 69, 46))]


@pytest.mark.parametrize("side", [MARK_MIN_FRAME - 32, MARK_MIN_FRAME + 16])
def test_a_frame_resampled_below_screen_size_is_searched_for_coloured_marks_only(side):
    """EchoNet-Dynamic's 112 px clips: at that size anatomy has the size and contrast of glyphs and
    calipers, so grey strokes are not searched there (and the sample says so); coloured ones are."""
    small = render("thyroid", np.random.default_rng(0), size=(side, side * 4 // 3)).image
    rgb = np.repeat(small[..., None], 3, axis=2)
    y, x = small.shape[0] // 2, small.shape[1] // 2
    grey, coloured = rgb.copy(), rgb.copy()
    for img, colour in ((grey, (255, 255, 255)), (coloured, (255, 255, 0))):
        cv2.line(img, (x - 6, y), (x + 6, y), colour, 1)
        cv2.line(img, (x, y - 6), (x, y + 6), colour, 1)
    kinds = {}
    for name, img in (("grey", grey[..., 0].copy()), ("coloured", coloured), ("clean", small)):
        res = clean_frame(img, 96, annotations="keep")
        assert isinstance(res, Cleaned), name
        assert res.meta.get("grey_marks_searched", True) is (side >= MARK_MIN_FRAME)
        kinds[name] = [a["kind"] for a in res.meta["annotations"]]
    assert kinds == {"grey": ["caliper"] if side >= MARK_MIN_FRAME else [], "coloured": ["caliper"], "clean": []}


def faint_caliper(img: np.ndarray, cx: int, cy: int, arm: int, diagonal: bool, gap: int, lift: int) -> None:
    """Draw a 1-px ``+`` or ``x`` caliper ``lift`` grey levels above the tissue under it (in place)."""
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1)) if diagonal else ((1, 0), (-1, 0), (0, 1), (0, -1)):
        for t in range(gap, arm + 1):
            y, x = cy + t * dy, cx + t * dx
            img[y, x] = min(int(np.median(img[cy - 8 : cy + 9, cx - 8 : cx + 9])) + lift, 255)


@pytest.mark.parametrize("enlarged", [False, True])
def test_faint_grey_calipers_are_calipers(pocus_dir, enlarged):
    """A grey caliper 40 levels above the tissue is under the stroke rule's level (DDTI's calipers were
    all missed); four arms at right angles, each brighter than both its sides, make it a caliper,
    drawn crisp or blurred by a crop enlarged 2x (DDTI's nodule crops). Real crops alone have none."""
    crop, mask = real_crop(pocus_dir, CLEAN[1])
    assert found(crop, mask) == []
    h, w = crop.shape
    img, centres = crop.copy(), []
    rng = np.random.default_rng(1)
    # crisp: 6-px arms 40 levels up, some with a gap in the middle; enlarged: 4-px arms 60 up, blurred
    # by the enlargement to 25-35 levels above the tissue (DDTI's: 40-60)
    arm, lift, gaps = (4, 60, (1, 0)) if enlarged else (6, 40, (1, 2))
    for i, (diagonal, gap) in enumerate([(False, gaps[0]), (True, gaps[0]), (False, gaps[1]), (True, 0)] * 2):
        cx, cy = int(w * (0.2 + 0.2 * (i % 4))), int(h * (0.3 + 0.35 * (i // 4)))
        cx, cy = cx + int(rng.integers(-5, 6)), cy + int(rng.integers(-5, 6))
        faint_caliper(img, cx, cy, arm, diagonal, gap, lift)
        centres.append((cx, cy))
    assert (stroke_pixels(img, mask) != stroke_pixels(crop, mask)).sum() < 10  # too faint for step 1
    if enlarged:
        img, crop = (cv2.resize(a, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR) for a in (img, crop))
        mask = cv2.resize(mask.astype(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST) > 0
        centres = [(2 * x, 2 * y) for x, y in centres]
        assert found(crop, mask) == []
    marks = found(img, mask)
    assert [m.kind for m in marks] == ["caliper"] * len(centres)
    for x, y in centres:  # one mark centred on each
        assert sum(m.box[0] <= x < m.box[2] and m.box[1] <= y < m.box[3] for m in marks) == 1, (x, y)
    assert found(inpaint(img, marks), mask) == []  # inpainted, no caliper is left to find


def caliper_contrast(gray: np.ndarray, mask: np.ndarray, y: int, x: int, diagonal: bool, start: int, end: int) -> int:
    """The module doc's steps 2-3 at one centre, read pixel by pixel: a reference for the vectorised,
    early-leaving ``_contrast``."""
    arms, levels = [], []
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1)) if diagonal else ((1, 0), (-1, 0), (0, 1), (0, -1)):
        sy, sx = (1, 0) if dy == 0 else (0, 1)
        px = [(y + t * dy, x + t * dx) for t in range(start, end + 1)]
        across = [max(int(gray[a - sy, b - sx]), int(gray[a, b]), int(gray[a + sy, b + sx])) for a, b in px]
        sides = [[(a + k * sy, b + k * sx) for a, b in px] for k in (FAINT_SIDE, -FAINT_SIDE)]
        if not all(mask[q] for side in sides for q in side):
            return -1
        side_level = max(sum(int(gray[q]) for q in side) / len(side) for side in sides)
        arms.append(int(min(across) - side_level))  # truncated toward zero, as an int16 cast does
        levels.append(sum(across) / len(across))
    lowest = min(arms)
    return lowest if lowest >= FAINT_CONTRAST and max(levels) - min(levels) <= lowest else -1


def test_faint_caliper_contrast_matches_a_pixel_by_pixel_reading(pocus_dir):
    """Every centre's contrast (or -1) is what the module doc's rule gives read pixel by pixel, for both
    orientations and every arm shape: on planted calipers (hits), speckle and the scan area's edge
    (a caliper whose side line leaves the area is none)."""
    crop, full = real_crop(pocus_dir, CLEAN[1])
    img = crop.copy()
    h, w = img.shape
    mask = full.copy()
    mask[: h // 2, : w // 4] = False  # an edge of the scan area among the centres
    centres = [(int(h * 0.6), int(w * (0.25 + 0.15 * i))) for i in range(4)] + [(h // 4, w // 4 + 2)]
    for (cy, cx), diagonal in zip(centres, (False, True, False, True, False)):
        faint_caliper(img, cx, cy, 6, diagonal, 1, 40)
    reach = max(end for _, end in FAINT_SHAPES) + FAINT_SIDE + 1
    rng = np.random.default_rng(0)
    ys = np.concatenate([rng.integers(reach, h - reach, 3000), [c[0] for c in centres]])
    xs = np.concatenate([rng.integers(reach, w - reach, 3000), [c[1] for c in centres]])
    planted = []
    for diagonal in (False, True):
        for start, end in FAINT_SHAPES:
            got = _contrast(img, mask, ys, xs, diagonal, start, end)
            want = [caliper_contrast(img, mask, int(y), int(x), diagonal, start, end) for y, x in zip(ys, xs)]
            assert got.tolist() == want, (diagonal, start, end)
            planted.append(got[-5:] >= FAINT_CONTRAST)
    assert np.any(planted, axis=0).tolist() == [True] * 4 + [False]  # the one across the edge is no hit
    y, x = centres[-1]
    assert _contrast(img, full, np.array([y]), np.array([x]), False, *FAINT_SHAPES[0])[0] >= FAINT_CONTRAST
    # on the limits: every arm exactly FAINT_CONTRAST over a flat surround, then one arm brighter by
    # exactly that much (its levels' spread equal to the contrast): both calipers
    flat = np.full((41, 41), 100, np.uint8)
    flat[20, 13:28] = flat[13:28, 20] = 100 + FAINT_CONTRAST
    assert _contrast(flat, np.ones_like(flat, bool), np.array([20]), np.array([20]), False, 2, 5).tolist() == [
        FAINT_CONTRAST
    ]
    flat[20, 21:28] = 100 + 2 * FAINT_CONTRAST
    assert caliper_contrast(flat, np.ones_like(flat, bool), 20, 20, False, 2, 5) == FAINT_CONTRAST
    assert _contrast(flat, np.ones_like(flat, bool), np.array([20]), np.array([20]), False, 2, 5).tolist() == [
        FAINT_CONTRAST
    ]


def test_a_short_faint_streak_along_the_tissue_grain_is_no_mark():
    """Over layered tissue (muscle, fascia: parallel bright streaks) a short faint grey line running
    with the layers is a fibre, not a mark; the same line across them, a longer one or a brighter
    one is drawn."""
    rng = np.random.default_rng(0)
    y = np.arange(160)[:, None]
    layers = 90 + 40 * np.sin(2 * np.pi * y / 9.0 + 0.3 * np.sin(np.arange(200)[None, :] / 40))
    base = cv2.GaussianBlur((layers + rng.normal(0, 12, (160, 200))).astype(np.float32), (0, 0), 0.8)
    base = base.clip(0, 255).astype(np.uint8)
    mask = np.ones(base.shape, bool)

    def kinds(a: tuple[int, int], b: tuple[int, int], level: int) -> list[str]:
        img = base.copy()
        cv2.line(img, a, b, level, 1)
        return [m.kind for m in detect_marks(img, mask)]

    assert detect_marks(base, mask) == []
    assert kinds((80, 84), (104, 84), 200) == []  # 25 px along the layers, 60-90 above them
    assert kinds((100, 70), (100, 94), 200) == ["line"]  # across them
    assert kinds((60, 84), (100, 84), 200) == ["line"]  # 41 px long
    assert kinds((80, 84), (104, 84), 250) == ["line"]  # bright


def test_saturated_fascia_in_a_contrast_stretched_frame_are_no_lines():
    """A contrast-stretched frame (the Kaggle brachial-plexus set) saturates its fascia: thin, straight,
    at 255 and 60-100 above the tissue beside them. Where the tissue itself reaches a line's level a
    grey line must stand 100 above it; a white line drawn over that tissue does, a closed box is drawn
    whatever its step, and the same fascia in a frame whose tissue stays darker are still lines."""
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.normal(150, 30, (200, 240)).astype(np.float32), (0, 0), 1.2)
    base = np.clip(base, 0, 255).astype(np.uint8)
    mask = np.ones(base.shape, bool)
    img = base.copy()
    for y, x0, x1 in ((60, 30, 90), (120, 120, 200), (160, 40, 110)):  # fascia: 2 px, saturated, ~80 above
        img[y : y + 2, x0:x1] = 255
        img[y - 1, x0:x1] = img[y + 2, x0:x1] = 180
    img[20:34, 180:200] = 252  # thick saturated tissue: the frame reaches 250+ beyond its strokes
    assert detect_marks(img, mask) == []
    drawn = img.copy()
    drawn[92, 40:120] = 255  # a white line drawn over the darker tissue stands > 100 above it
    drawn[90:94, 40:120] = np.where(drawn[90:94, 40:120] == 255, 255, 40)
    assert [m.kind for m in detect_marks(drawn, mask)] == ["line"]
    boxed = img.copy()
    cv2.rectangle(boxed, (140, 20), (175, 50), 255, 1)  # a box outline: closed, drawn
    assert "line" in [m.kind for m in detect_marks(boxed, mask)]
    darker = img.copy()
    darker[20:34, 180:200] = 170  # no tissue at the fascia's level: the old rule, lines
    assert [m.kind for m in detect_marks(darker, mask)] == ["line"] * 3
    grey = np.clip(base.astype(np.int16) - 60, 0, 255).astype(np.uint8)
    grey[150:170, 20:220] = 175  # a thick bright echo: the tissue reaches the line's level
    grey[100, 30:200] = 165  # a grey measurement line 60-100 above it (BUSI's are 154-162): drawn
    assert [m.kind for m in detect_marks(grey, mask)] == ["line"]


def test_the_face_of_an_endocavity_probe_and_a_sectors_rim_are_no_marks():
    """The convex hull closes over an endocavity probe's black footprint (a half disc at the top): its
    face echo, a bright arc broken into dots, lies inside the mask, as does the bright rim of a fan a
    few pixels inside the mask's edge. Neither is a dotted line; a measurement across the tissue is."""
    rng = np.random.default_rng(4)
    h, w = 240, 320
    img = np.clip(cv2.GaussianBlur(rng.normal(90, 25, (h, w)).astype(np.float32), (0, 0), 1.0), 0, 255)
    img = img.astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(xx - 160, yy + 10)
    img[r < 70] = 1  # the footprint
    ring = (r >= 70) & (r < 72) & ((np.arctan2(yy + 10, xx - 160) * 40).astype(int) % 3 != 0)
    img[ring] = 235  # the face echo, dotted by speckle
    img[h - 3 :, :] = 0  # the black margin the working resolution adds under the fan's rim
    img[h - 5, ::6] = 230  # its rim: bright dots
    mask = np.ones(img.shape, bool)
    assert detect_marks(img, mask) == []
    measured = img.copy()
    measured[150, 60:260:8] = 255  # a dotted measurement line across the tissue
    measured[149:152, 60:260:8] = 255
    assert [m.kind for m in detect_marks(measured, mask)] == ["dotted_line"]


def test_face_echo_border_lines_and_tinted_highlights_are_not_marks():
    """A level line in the top rows (the skin or the transducer face), a line along the crop's border
    and a wide coloured area are no marks; the same line deeper and a thin coloured trace are."""
    base = speckle()
    mask = np.ones(base.shape, bool)

    def kinds(draw) -> list[str]:
        img = Image.fromarray(np.stack([base] * 3, -1))
        draw(ImageDraw.Draw(img))
        return [m.kind for m in found(np.asarray(img), mask)]

    assert kinds(lambda d: d.line([(40, 2), (160, 2)], fill=(255, 255, 255))) == []  # face zone: 4 rows
    assert kinds(lambda d: d.line([(199, 20), (199, 140)], fill=(255, 255, 255))) == []  # the right border
    assert kinds(lambda d: d.line([(40, 80), (160, 80)], fill=(255, 255, 255))) == ["line"]
    assert kinds(lambda d: d.ellipse([60, 50, 100, 90], fill=(230, 120, 230))) == []  # a tint's highlight
    assert kinds(lambda d: d.line([(40, 110), (90, 130), (150, 100)], fill=(230, 120, 230), width=2)) == ["line"]


def test_marks_near_the_crops_border_are_still_marks():
    """The ruler rule (a level line within 2 % of the border) leaves marks near the border alone: a
    caliper, a slanted measurement line and one short line standing on the border (a cut label)."""
    base = speckle(400, 400)
    mask = np.ones(base.shape, bool)

    def kinds(draw) -> list[str]:
        img = Image.fromarray(base)
        draw(ImageDraw.Draw(img))
        return sorted(m.kind for m in detect_marks(np.asarray(img), mask))

    assert kinds(lambda d: (d.line([(92, 390), (102, 390)], fill=255), d.line([(97, 385), (97, 395)], fill=255))) == [
        "caliper"
    ]
    assert kinds(lambda d: d.line([(40, 395), (100, 375)], fill=255)) == ["line"]
    assert kinds(lambda d: d.line([(60, 1), (60, 21)], fill=255, width=2)) == ["line"]


def test_real_marks_are_found(pydicom_data_dir, pocus_dir):
    # the Philips CX50 frame is a probe in air (no_tissue), but its DICOM region holds real marks
    media = open_media(str(pydicom_data_dir / "OBXXXX1A.dcm"), "OBXXXX1A.dcm", SourceOptions())
    gray = to_gray(next(media.frames).pixels)
    area = region_area(gray, media.region)
    kinds = Counter(m.kind for m in detect_marks(crop_to_scan_area(gray, area), area.mask_in_bbox()))
    assert kinds["caliper"] >= 2 and kinds["dotted_line"] >= 1 and kinds["text"] >= 2  # "+ ... +", "Dist 1.06 cm"
    # the SonoSite eye still: a caliper pair over the globe and its measurement text, in output pixels
    res = clean_frame(decode_image((pocus_dir / "sonosite-anon-eye1.jpg").read_bytes()).pixels, 128)
    assert isinstance(res, Cleaned)
    kinds = Counter(a["kind"] for a in res.meta["annotations"])
    assert kinds["caliper"] >= 2 and kinds["text"] >= 1, kinds
    assert all(0 <= v <= 128 for a in res.meta["annotations"] for v in a["box"])
    (res,) = [clean_frame(decode_image((pocus_dir / "interson-image-annotation.jpg").read_bytes()).pixels, 128)]
    assert isinstance(res, Cleaned) and res.meta["annotations"]


def test_inpaint_leaves_no_mark_pixels(pocus_dir):
    crop, mask = real_crop(pocus_dir, CLEAN[0])
    img, truth = plant(crop, mask, np.random.default_rng(7), grey_only=True)
    marks = found(img, mask)
    assert len(marks) >= len(truth) - 1
    out = inpaint(img, marks)
    under = marks_mask(img.shape, marks)
    drawn = under & (img >= 215)  # the planted marks are drawn at 215-255
    assert drawn.sum() > 50 and (out[drawn] >= 215).mean() < 0.02  # where a mark was, tissue now
    assert not (out[~under] != img[~under]).any()  # nothing else touched
    again = detect_marks(out, mask)
    assert not any(under[m.box[1] : m.box[3], m.box[0] : m.box[2]].any() for m in again)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def marked_folder(pocus_dir, tmp_path_factory) -> Path:
    """Six real crops on a black surround: three with planted marks, three clean."""
    out = tmp_path_factory.mktemp("marked")
    for name in CLEAN:
        crop, mask = real_crop(pocus_dir, name)
        for i in range(3):
            rng = np.random.default_rng(i)
            # shifted copies: distinct frames for the near-duplicate index
            base = np.roll(crop, 40 * i, axis=1) * mask
            img = plant(base, mask, rng, grey_only=True)[0] if i else base
            framed = np.zeros((img.shape[0] + 40, img.shape[1] + 40), np.uint8)
            framed[20:-20, 20:-20] = img
            (out / f"{Path(name).stem}_{i}.png").write_bytes(png(framed))
    return out


def build(folder: Path, out: Path, action: str) -> dict:
    src = SourceConfig("marked", str(folder), SourceOptions(annotations=action))
    settings = BuildSettings(size=96, workers=1, near_duplicate_distance=-1, clip_duplicate_distance=-1)
    return build_shards([src], out, settings, progress=False)


def samples(out: Path, manifest: dict) -> list[dict]:
    ds = wds.WebDataset([str(out / s) for s in manifest["shards"]], shardshuffle=False)
    return [{"meta": json.loads(s["json"]), "png": np.asarray(Image.open(io.BytesIO(s["png"])))} for s in ds]


def test_annotations_on_every_sample_and_each_action_counted(marked_folder, tmp_path):
    runs = {a: build(marked_folder, tmp_path / a, a) for a in ("keep", "inpaint", "drop")}
    kept = {a: samples(tmp_path / a, m) for a, m in runs.items() if a != "drop"}
    for a, ss in kept.items():
        assert ss and all(isinstance(s["meta"]["annotations"], list) for s in ss)
        marked = [s for s in ss if s["meta"]["annotations"]]
        assert len(marked) == 4  # the planted ones; the clean crops have none
        assert runs[a]["per_source"]["marked"]["annotations"] == {
            "none": 2,
            {"keep": "kept", "inpaint": "inpainted"}[a]: 4,
        }
    assert runs["drop"]["rejected"]["annotated"] == 4 and runs["drop"]["num_samples"] == 2
    assert runs["drop"]["annotations"] == {"dropped": 4, "none": 2}
    # inpainted samples differ from kept ones only inside the boxes, and lose the drawn strokes there
    by_path = {s["meta"]["path"]: s for s in kept["keep"]}
    for s in kept["inpaint"]:
        k = by_path[s["meta"]["path"]]
        if not s["meta"]["annotations"]:
            assert np.array_equal(s["png"], k["png"])
            continue
        inside = np.zeros(s["png"].shape, bool)
        for a in s["meta"]["annotations"]:
            x0, y0, x1, y1 = a["box"]
            inside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
        diff = s["png"] != k["png"]
        assert diff.any() and not (diff & ~inside).any()


def test_cli_annotations_flag_and_catalogue_entry(marked_folder, tmp_path):
    cat = tmp_path / "c.yaml"
    cat.write_text(f"sources:\n  - {{name: own, path: {marked_folder}, annotations: keep}}\n")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "shards.build", "--corpus", str(cat), "--source", f"flag={marked_folder}"]
    proc = subprocess.run(
        [*cmd, "--out", str(out), "--size", "48", "--annotations", "drop"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["identity"]["sources"][0]["options"]["annotations"] == "keep"  # the catalogue entry wins
    assert m["identity"]["sources"][1]["options"]["annotations"] == "drop"
    assert m["per_source"]["flag"]["rejected"]["annotated"] == 4
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "x"), "--annotations", "blur"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'blur'" in bad.stderr


def test_a_build_of_the_previous_format_is_refused_with_the_reason(marked_folder, tmp_path, monkeypatch):
    out = tmp_path / "old"
    real_write = build_mod._write_shard

    def dying_write(path, data):
        real_write(path, data)
        raise KeyboardInterrupt  # stopped after its first shard

    monkeypatch.setattr(build_mod, "BUILD_FORMAT", 2)
    monkeypatch.setattr(build_mod, "_write_shard", dying_write)
    settings = BuildSettings(size=48, samples_per_shard=2, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build_shards({"marked": str(marked_folder)}, out, settings, progress=False)
    monkeypatch.undo()
    with pytest.raises(UserError, match="older shards.build \\(build format 2; this one writes format 4"):
        build_shards({"marked": str(marked_folder)}, out, settings, progress=False)


def test_sheet_outlines_the_annotations(marked_folder, tmp_path):
    m = build(marked_folder, tmp_path / "s", "inpaint")
    s = next(s for s in samples(tmp_path / "s", m) if s["meta"]["annotations"])
    drawn = with_boxes(s["png"], s["meta"]["annotations"], 96)
    assert drawn.shape == (96, 96, 3) and (drawn[..., 0] != drawn[..., 2]).any()  # coloured outlines
    sheet = tmp_path / "sheet.png"
    from shards.inspect import main as inspect_main

    inspect_main([str(tmp_path / "s"), "--sheet", str(sheet), "--per-source", "3", "--boxes"])
    assert sheet.stat().st_size > 10_000


def test_components_match_opencv_stats():
    import cv2

    from shards.components import components

    rng = np.random.default_rng(0)
    for shape, p in (((120, 90), 0.05), ((64, 64), 0.0), ((200, 300), 0.3)):
        binary = rng.random(shape) < p
        n, labels, stats = components(binary)
        n_cv, labels_cv, stats_cv, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
        assert n == n_cv and np.array_equal(labels, labels_cv)
        assert np.array_equal(stats[1:], stats_cv[1:])


def test_peel_keeps_each_piece_at_its_most_common_grey_level_or_brighter():
    from shards.annotations import peel
    from shards.thresholds import PLATEAU_TOL

    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (60, 80)).astype(np.uint8)
    strokes = rng.random(gray.shape) < 0.3
    out = peel(strokes, gray)
    import cv2

    _, labels = cv2.connectedComponents(strokes.astype(np.uint8), connectivity=8)
    window = np.ones(2 * PLATEAU_TOL + 1)
    for k in np.unique(labels[strokes]):
        piece = labels == k
        hist = np.bincount(gray[piece], minlength=256)
        mode = int(np.convolve(hist, window, mode="same").argmax())  # the reference: a box filter per piece
        assert np.array_equal(out[piece], gray[piece].astype(int) >= mode - PLATEAU_TOL)
    assert not out[~strokes].any()


def test_peel_keeps_a_letter_whole_through_its_bright_joint():
    """A white T (220) whose crossbar meets its stem in an overshoot pixel (245), with a darker
    speckle grain (160) touching the stem: the grain comes off, the letter stays one piece."""
    import cv2

    from shards.annotations import peel

    gray = np.full((20, 20), 80, np.uint8)
    gray[4:6, 4:15] = 220  # crossbar
    gray[6:16, 9:11] = 220  # stem
    gray[6, 9] = 245  # the joint, brighter than the stroke's colour
    gray[11, 11:13] = 160  # a speckle grain touching the stem
    strokes = gray > 100
    out = peel(strokes, gray)
    assert not out[11, 11:13].any()
    letter = strokes.copy()
    letter[11, 11:13] = False
    assert np.array_equal(out, letter)
    n, _ = cv2.connectedComponents(out.astype(np.uint8), connectivity=8)
    assert n == 2  # background + one piece


def test_mask_in_bbox_is_the_full_mask_in_the_box_and_follows_the_box():
    from shards.scan_area import ScanArea

    rng = np.random.default_rng(4)
    area = ScanArea(rng.random((30, 40)) < 0.5, 3, (88, 118), (5, 7, 100, 80))
    for bbox in ((5, 7, 100, 80), (0, 0, 118, 88), (4, 2, 9, 50)):
        area.bbox = bbox
        x0, y0, x1, y1 = bbox
        got = area.mask_in_bbox()
        assert np.array_equal(got, area.mask[y0:y1, x0:x1]) and not got.flags.writeable
        assert area.mask_in_bbox() is got  # a clip's frames share the one upsampled mask


@pytest.mark.parametrize("name", CLEAN)
def test_marks_drawn_two_pixels_thick_are_found_and_a_blob_is_not(pocus_dir, name):
    """A reader's arrow and measurement ellipse drawn two pixels thick (3-4 px wide, wider where the
    arrow's head meets its shaft) are marks; a filled bright blob of their size is not. Before, an
    independent planting (OpenCV, thickness 2) found 33 of 55 such arrows, and none of these four."""
    crop, mask = real_crop(pocus_dir, name)
    h, w = crop.shape
    cx, cy = w // 2, h // 2
    for draw in (
        lambda a: cv2.arrowedLine(a, (cx, cy), (cx + 10, cy + 40), 255, 2, cv2.LINE_8, 0, 0.3),
        lambda a: cv2.arrowedLine(a, (cx, cy), (cx + 45, cy + 5), 255, 2, cv2.LINE_8, 0, 0.3),
        lambda a: cv2.ellipse(a, (cx, cy), (30, 18), 0, 0, 360, 255, 2, cv2.LINE_8),
        lambda a: cv2.ellipse(a, (cx, cy), (25, 25), 0, 0, 360, 255, 2, cv2.LINE_8),
    ):
        img = crop.copy()
        draw(img)
        marks = detect_marks(img, mask)
        changed = img != crop
        hit = [m for m in marks if changed[m.box[1] : m.box[3], m.box[0] : m.box[2]].any()]
        assert covered(img, crop, (0, 0, w, h), hit), [(m.kind, m.box) for m in marks]
    blob = crop.copy()
    cv2.ellipse(blob, (cx, cy), (12, 5), 30, 0, 360, 255, -1)
    assert [m for m in detect_marks(blob, mask) if m.box[0] <= cx <= m.box[2] and m.box[1] <= cy <= m.box[3]] == []


@pytest.mark.parametrize("name", CLEAN)
def test_a_dotted_ellipse_is_a_mark_and_scattered_dots_are_not(pocus_dir, name):
    """A circumference measured with a dotted ellipse -- dots spaced by angle, so closer at its narrow
    ends, whole pixels putting noise on every turn -- is found though its dots follow no straight line;
    dots scattered at random (bright speckle grains) make no curve."""
    crop, mask = real_crop(pocus_dir, name)
    h, w = crop.shape
    cx, cy = w // 2, h // 2
    for axes, step in (((40, 22), 0.16), ((26, 26), 0.22), ((45, 14), 0.12)):
        img = crop.copy()
        for t in np.arange(0, 2 * np.pi, step):
            img[int(cy + axes[1] * np.sin(t)), int(cx + axes[0] * np.cos(t))] = 255
        marks = detect_marks(img, mask)
        assert covered(img, crop, (0, 0, w, h), marks), (axes, [(m.kind, m.box) for m in marks])
        assert {m.kind for m in marks if m.box[0] <= cx <= m.box[2]} == {"dotted_line"}

    def dots(xs, ys) -> list[Piece]:
        return [
            Piece(k, (x, y, x + 1, y + 1), 1, np.ones((1, 1), bool), np.array([255]))
            for k, (x, y) in enumerate(zip(xs, ys))
        ]

    t = np.arange(0, 2 * np.pi, 0.16)
    assert len(dotted_curves(dots((100 + 40 * np.cos(t)).astype(int), (60 + 22 * np.sin(t)).astype(int)))) == 1
    rng = np.random.default_rng(0)
    for n in (20, 40, 80):  # dots in a 90 x 60 box, sparse to denser than any speckle's drawn grains
        assert not any(dotted_curves(dots(rng.integers(0, 90, n), rng.integers(0, 60, n))) for _ in range(100)), n


@pytest.mark.parametrize("name", CLEAN)
def test_an_anti_aliased_arrow_is_found_whole_and_a_pleura_like_line_is_not(pocus_dir, name):
    """A one-pixel arrow drawn anti-aliased spreads its edges over many grey levels: peeled to one
    colour it came apart in dashes (an independent planting found 31 of 150). Whole, standing clear of
    the tissue with a head at one end of a straight shaft, it is an arrow. A bright straight line with
    no head -- a pleura, a needle: blurred, as the imaging system draws them -- is not taken this way."""
    crop, mask = real_crop(pocus_dir, name)
    h, w = crop.shape
    cx, cy = w // 2, h // 2
    for level, (dx, dy) in ((255, (34, 12)), (225, (-20, 30)), (255, (-28, -25)), (225, (8, -36))):
        img = np.stack([crop] * 3, -1)
        cv2.arrowedLine(img, (cx, cy), (cx + dx, cy + dy), (level,) * 3, 1, cv2.LINE_AA, 0, 0.3)
        img = img[..., 0].copy()
        marks = detect_marks(img, mask)
        box = (min(cx, cx + dx) - 4, min(cy, cy + dy) - 4, max(cx, cx + dx) + 5, max(cy, cy + dy) + 5)
        assert covered(img, crop, box, marks), (level, dx, dy, [(m.kind, m.box) for m in marks])
    yy, xx = np.mgrid[:h, :w]
    along = (xx - cx) * np.cos(0.2) + (yy - cy) * np.sin(0.2)
    across = -(xx - cx) * np.sin(0.2) + (yy - cy) * np.cos(0.2)
    streak = 230 * np.exp(-(across**2) / 2) * (np.abs(along) <= 40)
    img = np.maximum(crop, streak).astype(np.uint8)
    assert [m for m in detect_marks(img, mask) if m.kind in ("arrow", "line")] == []
