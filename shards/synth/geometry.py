"""Scan geometries: where the scan area lies in the image and how beam space maps onto it.

Pixel (row, col) has its centre at continuous coordinates (row, col). Physical coordinates
(millimetres) used by the anatomy: ``x`` lateral (0 = probe centre line, + to the right),
``y`` vertical depth below the top of the scan area on the centre line, and ``d`` depth along
the beam below the probe face (equal to ``y`` for a linear probe; for a convex probe the layers
under the skin follow the curved face, so they are described with ``d``).

- ``linear``: the scan area is a rectangle; beam space is that rectangle's pixel grid.
- ``convex`` / ``sector``: a fan with its apex at (apex_row, apex_col) (above the image for a
  convex probe, at the top for a phased-array sector), radii r0..r1 px, angles -half..+half from
  the downward vertical. Beam space is (radius, angle); it is scan-converted to the Cartesian
  image by bilinear interpolation, and everything outside the fan is exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates


@dataclass(frozen=True)
class Points:
    """Physical coordinates (mm, float32, flat arrays) of beam samples or pixels."""

    x: np.ndarray
    y: np.ndarray
    d: np.ndarray

    def take(self, sel: np.ndarray) -> Points:
        return Points(self.x[sel], self.y[sel], self.d[sel])

    def shifted(self, dx: float) -> Points:
        return Points(self.x + np.float32(dx), self.y, self.d)

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ScanGeometry:
    kind: str  # 'linear' | 'convex' | 'sector'
    height: int
    width: int
    mm_per_px: float
    # linear: scan rectangle [row0, row1) x [col0, col1)
    row0: int = 0
    row1: int = 0
    col0: int = 0
    col1: int = 0
    # fan
    apex_row: float = 0.0
    apex_col: float = 0.0
    r0: float = 0.0
    r1: float = 0.0
    half_angle: float = 0.0
    n_depth: int = 0
    n_lines: int = 0

    @property
    def depth_mm(self) -> float:
        if self.kind == "linear":
            return (self.row1 - self.row0) * self.mm_per_px
        return (self.r1 - self.r0) * self.mm_per_px

    @property
    def width_mm(self) -> float:
        """Lateral extent of the scan area (mm) at its deepest point."""
        if self.kind == "linear":
            return (self.col1 - self.col0) * self.mm_per_px
        return 2.0 * self.r1 * np.sin(self.half_angle) * self.mm_per_px

    @property
    def beam_shape(self) -> tuple[int, int]:
        if self.kind == "linear":
            return (self.row1 - self.row0, self.col1 - self.col0)
        return (self.n_depth, self.n_lines)

    @property
    def dz_mm(self) -> float:
        """Depth step between beam samples along a scan line."""
        if self.kind == "linear":
            return self.mm_per_px
        return (self.r1 - self.r0) / self.n_depth * self.mm_per_px

    def beam_depth_mm(self) -> np.ndarray:
        """Depth along the beam of each beam-space row (mm)."""
        return ((np.arange(self.beam_shape[0], dtype=np.float32) + 0.5) * self.dz_mm).astype(np.float32)

    def _beam_polar(self) -> tuple[np.ndarray, np.ndarray]:
        dr = (self.r1 - self.r0) / self.n_depth
        dth = 2.0 * self.half_angle / self.n_lines
        r = self.r0 + (np.arange(self.n_depth) + 0.5) * dr
        th = -self.half_angle + (np.arange(self.n_lines) + 0.5) * dth
        return r, th

    def beam_points(self) -> Points:
        """Physical position of every beam sample, flattened in C order of ``beam_shape``."""
        mm = np.float32(self.mm_per_px)
        if self.kind == "linear":
            h, w = self.beam_shape
            cc = (self.col0 + self.col1 - 1) / 2.0
            yy, xx = np.meshgrid(
                np.arange(h, dtype=np.float32),
                np.arange(w, dtype=np.float32) - np.float32(cc - self.col0),
                indexing="ij",
            )
            y = (yy * mm).ravel()
            return Points((xx * mm).ravel(), y, y)
        r, th = self._beam_polar()
        rr, tt = np.meshgrid(r, th, indexing="ij")
        x = (rr * np.sin(tt) * self.mm_per_px).astype(np.float32).ravel()
        y = ((rr * np.cos(tt) - self.r0) * self.mm_per_px).astype(np.float32).ravel()
        d = ((rr - self.r0) * self.mm_per_px).astype(np.float32).ravel()
        return Points(x, y, d)

    def scan_mask(self) -> np.ndarray:
        """Boolean (height, width): True inside the scan area (a fresh copy)."""
        if self.kind == "linear":
            m = np.zeros((self.height, self.width), dtype=bool)
            m[self.row0 : self.row1, self.col0 : self.col1] = True
            return m
        return self._fan_pixels()[0].copy()

    def _fan_pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mask, rows, cols, radius, angle) of the fan's pixels, computed once per geometry."""
        if "_fan" not in self.__dict__:  # frozen dataclass: cache by writing the instance dict
            rows = np.arange(self.height, dtype=np.float32)[:, None] - np.float32(self.apex_row)
            cols = np.arange(self.width, dtype=np.float32)[None, :] - np.float32(self.apex_col)
            r = np.hypot(rows, cols)
            th = np.arctan2(cols, rows)
            m = (r >= self.r0) & (r <= self.r1) & (np.abs(th) <= self.half_angle) & (rows > 0)
            rr, cc = np.nonzero(m)
            self.__dict__["_fan"] = (m, rr, cc, r[m], th[m])
        return self.__dict__["_fan"]

    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the scan area in pixels, x1/y1 exclusive."""
        if self.kind == "linear":
            return (self.col0, self.row0, self.col1, self.row1)
        m = self.scan_mask()
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)

    def pixel_points(self, mask: np.ndarray) -> Points:
        """Physical position of the pixels selected by ``mask`` (C order)."""
        rows, cols = np.nonzero(mask)
        mm = self.mm_per_px
        if self.kind == "linear":
            cc = (self.col0 + self.col1 - 1) / 2.0
            x = ((cols - cc) * mm).astype(np.float32)
            y = ((rows - self.row0) * mm).astype(np.float32)
            return Points(x, y, y)
        dy = rows - self.apex_row
        dx = cols - self.apex_col
        r = np.hypot(dx, dy)
        return Points(
            (dx * mm).astype(np.float32),
            ((dy - self.r0) * mm).astype(np.float32),
            ((r - self.r0) * mm).astype(np.float32),
        )

    def scan_convert(self, beam: np.ndarray) -> np.ndarray:
        """Place a beam-space image (float) into the Cartesian frame; 0 outside the scan area."""
        out = np.zeros((self.height, self.width), dtype=np.float32)
        if self.kind == "linear":
            out[self.row0 : self.row1, self.col0 : self.col1] = beam
            return out
        _, rows, cols, r, th = self._fan_pixels()
        dr = (self.r1 - self.r0) / self.n_depth
        dth = 2.0 * self.half_angle / self.n_lines
        ir = (r - np.float32(self.r0)) / np.float32(dr) - np.float32(0.5)
        it = (th + np.float32(self.half_angle)) / np.float32(dth) - np.float32(0.5)
        out[rows, cols] = map_coordinates(beam, [ir, it], order=1, mode="nearest")
        return out


def place_linear(
    height: int,
    width: int,
    aperture_mm: float,
    depth_mm: float,
    margins: tuple[float, float, float, float],
    shift: float,
) -> ScanGeometry:
    """Fit a linear scan rectangle of aperture x depth into the image inside the margins.

    ``margins`` = (top, bottom, left, right) fractions of the image; ``shift`` in [-1, 1] moves
    the rectangle horizontally within the free space.
    """
    top, bottom, left, right = margins
    avail_h = height * (1.0 - top - bottom)
    avail_w = width * (1.0 - left - right)
    scale = min(avail_h / depth_mm, avail_w / aperture_mm)  # px per mm
    h = max(8, int(round(depth_mm * scale)))
    w = max(8, int(round(aperture_mm * scale)))
    row0 = int(round(height * top))
    free = width * (1.0 - left - right) - w
    col0 = int(round(width * left + free * (0.5 + 0.5 * shift)))
    col0 = min(max(col0, 0), width - w)
    row0 = min(row0, height - h)
    return ScanGeometry("linear", height, width, depth_mm / h, row0=row0, row1=row0 + h, col0=col0, col1=col0 + w)


def place_fan(
    kind: str,
    height: int,
    width: int,
    depth_mm: float,
    radius_mm: float,
    half_angle: float,
    margins: tuple[float, float, float, float],
    shift: float,
) -> ScanGeometry:
    """Fit a fan (apex radius ``radius_mm``, ``depth_mm`` deep, +-``half_angle`` rad) into the image."""
    top, bottom, left, right = margins
    rho = radius_mm / (radius_mm + depth_mm)  # r0 / r1
    avail_h = height * (1.0 - top - bottom)
    avail_w = width * (1.0 - left - right)
    r1 = min(avail_w / (2.0 * np.sin(half_angle)), avail_h / (1.0 - rho * np.cos(half_angle)))
    r0 = rho * r1
    apex_row = height * top - r0 * np.cos(half_angle)
    half_w = r1 * np.sin(half_angle)
    free = avail_w - 2.0 * half_w
    apex_col = width * left + half_w + free * (0.5 + 0.5 * shift)
    mm_per_px = depth_mm / (r1 - r0)
    n_depth = int(np.ceil(r1 - r0))
    n_lines = int(np.ceil(2.0 * half_angle * max(0.7 * r1, r0)))
    return ScanGeometry(
        kind,
        height,
        width,
        float(mm_per_px),
        apex_row=float(apex_row),
        apex_col=float(apex_col),
        r0=float(r0),
        r1=float(r1),
        half_angle=float(half_angle),
        n_depth=n_depth,
        n_lines=n_lines,
    )
