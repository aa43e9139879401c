"""Scan area and beam geometry of a batch of B-mode frames, estimated on the device.

The physics effects need to know, per image, which pixels are inside the scan area and how deep
each pixel lies along its beam. Frames arrive as the shard builder writes them (``shards.scan_area``
crops each one to its scan area, a convex fan or rectangle, and blanks the surround); here the
geometry is recovered batched in torch on the training device, after crop and flip:

1. scan area: in every row, the span from the first to the last pixel above ``threshold``. Fans
   and rectangles are row-convex, so dark anatomy inside (cysts, shadows, chambers) stays in.
2. apex: least-squares lines through the left and right ends of the rows above the widest row
   (below it a sector's bottom arc bends the ends inwards), skipping ends on the image border
   (cut by the crop). Ends that spread apart downwards meet at the apex of a sector or convex
   probe; otherwise the probe is linear and beams run straight down, written as an apex far
   above the image so one formula serves both.
3. depth: distance to the apex, normalised to 0 at the shallowest and 1 at the deepest scan pixel.

Only ``depth`` is a full-size map; everything else is per row or per image, so the estimate costs
a few passes over the batch. Written by hand because no library in the stack models ultrasound
beam geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# A linear probe's apex sits this many image sides above the top row: beams are vertical to
# within 1/100 rad, and float32 radii (~25,600 px at 256 px) still resolve 0.002 px.
LINEAR_APEX_DISTANCE = 100.0
# Row ends must spread by at least this many pixels per row (both sides together) to count as a fan.
MIN_FAN_SPREAD = 0.05
# Fewest rows an edge fit may use, as a fraction of the image height (and never below 4 rows).
MIN_EDGE_ROWS = 0.1


@dataclass
class ScanGeometry:
    """Per-image scan geometry (float32): rows ``[B,H]``, scalars ``[B]``, ``depth`` ``[B,1,H,W]``."""

    left: torch.Tensor  # first scan column of each row (W where the row has none)
    right: torch.Tensor  # last scan column of each row (-1 where the row has none)
    apex: torch.Tensor  # [B,2] (x, y) in pixels; far above the image for linear probes
    r_min: torch.Tensor  # shallowest distance to the apex inside the scan area
    r_max: torch.Tensor  # deepest distance to the apex inside the scan area
    a_min: torch.Tensor  # leftmost beam angle inside the scan area (radians, 0 = straight down)
    a_max: torch.Tensor  # rightmost beam angle
    is_fan: torch.Tensor  # [B] bool: sector/convex (True) or linear (False)
    depth: torch.Tensor  # normalised depth along the beam, clamped to [0, 1] (outside too)

    def index(self, idx: torch.Tensor) -> ScanGeometry:
        """The geometry of the images ``idx`` (a 1-D index tensor)."""
        return ScanGeometry(**{f.name: getattr(self, f.name).index_select(0, idx) for f in fields(self)})

    def mask(self) -> torch.Tensor:
        """``[B,1,H,W]`` float: 1 inside the scan area, 0 outside."""
        cols = torch.arange(self.depth.shape[-1], device=self.depth.device, dtype=self.left.dtype)
        return ((cols >= self.left[..., None]) & (cols <= self.right[..., None])).unsqueeze(1).float()

    def offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel offsets from the apex: ``dx`` ``[B,1,1,W]`` and ``dy`` ``[B,1,H,1]``."""
        b, _, h, w = self.depth.shape
        dev = self.depth.device
        dx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w) - self.apex[:, 0].view(b, 1, 1, 1)
        dy = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1) - self.apex[:, 1].view(b, 1, 1, 1)
        return dx, dy

    def radius(self) -> torch.Tensor:
        """``[B,1,H,W]`` distance of every pixel to the apex, in pixels."""
        dx, dy = self.offsets()
        return (dx * dx + dy * dy).sqrt_()


def _fit_lines(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted least-squares ``x = a + b*y`` per row of ``x``/``w`` ([B,H]); returns a, b, count."""
    s = w.sum(-1)
    sy, sx = (w * y).sum(-1), (w * x).sum(-1)
    syy, sxy = (w * y * y).sum(-1), (w * x * y).sum(-1)
    det = s * syy - sy * sy
    b = (s * sxy - sy * sx) / det.clamp(min=1e-6)
    a = (sx - b * sy) / s.clamp(min=1.0)
    return a, b, s


def estimate_geometry(images: torch.Tensor, threshold: float = 12 / 255) -> ScanGeometry:
    """Scan area, apex and per-pixel depth of float images ``[B,1,H,W]`` in [0, 1]."""
    b, _, h, w = images.shape
    dev = images.device
    bright = (images[:, 0] > threshold).view(torch.uint8)  # [B,H,W]; argmax finds the first 1
    has_row = bright.amax(-1) > 0
    rows = torch.arange(h, device=dev, dtype=torch.float32)
    left = torch.where(has_row, bright.argmax(-1).float(), float(w))
    right = torch.where(has_row, (w - 1 - bright.flip(-1).argmax(-1)).float(), -1.0)

    row_width = (right - left + 1).clamp(min=0)
    widest = row_width.argmax(-1, keepdim=True).float()
    upper = has_row & (rows <= widest)
    min_rows = max(4.0, MIN_EDGE_ROWS * h)
    a_l, b_l, n_l = _fit_lines(left, rows, (upper & (left > 0)).float())
    a_r, b_r, n_r = _fit_lines(right, rows, (upper & (right < w - 1)).float())
    spread = b_r - b_l
    apex_y = (a_l - a_r) / spread.clamp(min=1e-6)
    apex_x = a_l + b_l * apex_y
    any_px = has_row.any(-1)
    top = torch.where(any_px, torch.where(has_row, rows, float(h)).amin(-1), 0.0)
    far = LINEAR_APEX_DISTANCE * max(h, w)
    is_fan = (
        (n_l >= min_rows)
        & (n_r >= min_rows)
        & (spread > MIN_FAN_SPREAD)
        & (apex_y <= top + 0.1 * h)
        & (apex_y > top - far / 10)
    )
    centre = ((left + right) / 2 * has_row).sum(-1) / has_row.sum(-1).clamp(min=1)
    centre = torch.where(any_px, centre, (w - 1) / 2)
    apex_x = torch.where(is_fan, apex_x, centre)
    apex_y = torch.where(is_fan, apex_y, top - far)

    # Extents over the scan area from the row ends: along a row the radius is smallest at the
    # column nearest the apex and largest at an end; the beam angle grows from left to right.
    ax, ay = apex_x[:, None], apex_y[:, None]
    dy = rows - ay
    near = torch.minimum(torch.maximum(ax, left), right) - ax
    far_dx = torch.maximum((left - ax).abs(), (right - ax).abs())
    inf = torch.tensor(float("inf"), device=dev)
    r_min = torch.where(has_row, torch.sqrt(near * near + dy * dy), inf).amin(-1)
    r_max = torch.where(has_row, torch.sqrt(far_dx * far_dx + dy * dy), -inf).amax(-1)
    a_min = torch.where(has_row, torch.atan2(left - ax, dy), inf).amin(-1)
    a_max = torch.where(has_row, torch.atan2(right - ax, dy), -inf).amax(-1)
    # An empty frame (all black) has no scan area: finite, harmless extents.
    r_min, r_max = torch.where(any_px, r_min, 0.0), torch.where(any_px, r_max, 1.0)
    a_min, a_max = torch.where(any_px, a_min, 0.0), torch.where(any_px, a_max, 0.0)

    geom = ScanGeometry(
        left,
        right,
        torch.stack([apex_x, apex_y], -1),
        r_min,
        r_max,
        a_min,
        a_max,
        is_fan,
        depth=images.new_empty((b, 1, h, w)),
    )
    span = (r_max - r_min).clamp(min=1.0)
    geom.depth = geom.radius().sub_(r_min.view(b, 1, 1, 1)).div_(span.view(b, 1, 1, 1)).clamp_(0.0, 1.0)
    return geom
