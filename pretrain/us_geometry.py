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

The estimate itself reads the batch once (a threshold) and works per row and per image; the
full-size maps — radius, depth, scan-area mask — are computed only when an effect first asks for
one, once per batch, and shared by every effect after it (:class:`ScanGeometry`). Written by hand
because no library in the stack models ultrasound beam geometry.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pretrain.workspace import Workspace, scratch

# A linear probe's apex sits this many image sides above the top row: beams are vertical to
# within 1/100 rad, and float32 radii (~25,600 px at 256 px) still resolve 0.002 px.
LINEAR_APEX_DISTANCE = 100.0
# Row ends must spread by at least this many pixels per row (both sides together) to count as a fan.
MIN_FAN_SPREAD = 0.05
# Fewest rows an edge fit may use, as a fraction of the image height (and never below 4 rows).
MIN_EDGE_ROWS = 0.1
# On the CPU the threshold pass goes over about this many bytes of images at a time.
CPU_CHUNK_BYTES = 1 << 20


_SCALARS = ("left", "right", "apex", "r_min", "r_max", "a_min", "a_max", "is_fan")


class ScanGeometry:
    """Per-image scan geometry of a batch (float32): rows ``[B,H]``, scalars ``[B]``, full maps ``[B,1,H,W]``.

    Paid once per batch and shared by every effect: the per-row and per-image numbers come from
    :func:`estimate_geometry`; each full-size map (:meth:`radius`, :attr:`depth`, :meth:`mask`) is
    computed the first time an effect asks for it and kept. The geometry of a subset of the
    images (:meth:`index`, an effect applied with probability p) takes its maps from the whole
    batch's, computing them there first, so a map is never computed twice for one batch.
    """

    def __init__(
        self,
        left: torch.Tensor,  # first scan column of each row (W where the row has none)
        right: torch.Tensor,  # last scan column of each row (-1 where the row has none)
        apex: torch.Tensor,  # [B,2] (x, y) in pixels; far above the image for linear probes
        r_min: torch.Tensor,  # shallowest distance to the apex inside the scan area
        r_max: torch.Tensor,  # deepest distance to the apex inside the scan area
        a_min: torch.Tensor,  # leftmost beam angle inside the scan area (radians, 0 = straight down)
        a_max: torch.Tensor,  # rightmost beam angle
        is_fan: torch.Tensor,  # [B] bool: sector/convex (True) or linear (False)
        depth: torch.Tensor | None = None,  # given, or computed from the apex on first use
        width: int | None = None,  # image width (needed when ``depth`` is not given)
        workspace: Workspace | None = None,  # where the full-size maps are written (reused per batch)
    ) -> None:
        self.left, self.right, self.apex = left, right, apex
        self.r_min, self.r_max, self.a_min, self.a_max, self.is_fan = r_min, r_max, a_min, a_max, is_fan
        self.width = int(depth.shape[-1]) if depth is not None else int(width)
        self.workspace = workspace
        self._maps: dict[str, torch.Tensor] = {} if depth is None else {"depth": depth}
        # For a subset or a slice of a batch: the batch's geometry and how to take our rows of its maps.
        self._parent: tuple[ScanGeometry, Callable[[torch.Tensor], torch.Tensor]] | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.left.shape[0], 1, self.left.shape[1], self.width)

    def index(self, idx: torch.Tensor) -> ScanGeometry:
        """The geometry of the images ``idx`` (a 1-D index tensor), sharing the batch's maps."""
        return self._child(lambda t: t.index_select(0, idx))

    def narrow(self, start: int, length: int) -> ScanGeometry:
        """The geometry of images ``start .. start + length - 1``; its maps are views of the batch's."""
        return self._child(lambda t: t.narrow(0, start, length))

    def _child(self, rows: Callable[[torch.Tensor], torch.Tensor]) -> ScanGeometry:
        sub = ScanGeometry(*(rows(getattr(self, f)) for f in _SCALARS), width=self.width)
        sub._parent = (self, rows)
        return sub

    def _map(self, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        out = self._maps.get(name)
        if out is None:
            if self._parent is not None:
                full, rows = self._parent
                whole = full._map(name, getattr(full, "_compute_" + name))
                out = whole if whole.shape[0] == 1 else rows(whole)  # [1,...]: one map for every image
            else:
                out = compute()
            self._maps[name] = out
        return out

    def offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel offsets from the apex: ``dx`` ``[B,1,1,W]`` and ``dy`` ``[B,1,H,1]``."""
        b, _, h, w = self.shape
        dev = self.left.device
        dx = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, 1, w) - self.apex[:, 0].view(b, 1, 1, 1)
        dy = torch.arange(h, device=dev, dtype=torch.float32).view(1, 1, h, 1) - self.apex[:, 1].view(b, 1, 1, 1)
        return dx, dy

    def radius(self) -> torch.Tensor:
        """``[B,1,H,W]`` distance of every pixel to the apex, in pixels."""
        return self._map("radius", self._compute_radius)

    @property
    def depth(self) -> torch.Tensor:
        """Normalised depth along the beam, 0 at the shallowest and 1 at the deepest scan pixel,
        clamped to [0, 1] (outside the scan area too, so no effect can overflow there)."""
        return self._map("depth", self._compute_depth)

    @depth.setter
    def depth(self, value: torch.Tensor) -> None:
        self._maps["depth"] = value

    def mask(self) -> torch.Tensor:
        """``[B,1,H,W]`` float: 1 inside the scan area (each row's span), 0 outside."""
        return self._map("mask", self._compute_mask)

    # Each full-size map in as few passes over the batch as torch allows, into a reused buffer.
    def _out(self, name: str) -> torch.Tensor | None:
        return scratch(self.workspace, name, self.shape, torch.float32, self.left.device)

    def _compute_radius(self) -> torch.Tensor:
        dx, dy = self.offsets()
        # Small squares, one broadcast add, one sqrt; +1e-12 keeps the apex pixel off 0 (dividing by r).
        return torch.add(dx.square(), dy.square().add_(1e-12), out=self._out("radius")).sqrt_()

    def _compute_depth(self) -> torch.Tensor:
        b = self.shape[0]
        inv = 1.0 / (self.r_max - self.r_min).clamp(min=1.0).view(b, 1, 1, 1)
        offset = -self.r_min.view(b, 1, 1, 1) * inv
        return torch.addcmul(offset, self.radius(), inv, out=self._out("depth")).clamp_(0.0, 1.0)

    def _compute_mask(self) -> torch.Tensor:
        # left <= c <= right  <=>  |2c - (left + right)| <= right - left; in-place ``le_`` writes
        # 1.0/0.0 straight into the float map: three float passes, no bool tensors (slow on CPU).
        cols = torch.arange(self.width, device=self.left.device, dtype=torch.float32)
        centre, span = (self.left + self.right)[:, None, :, None], (self.right - self.left)[:, None, :, None]
        return torch.sub(2 * cols, centre, out=self._out("mask")).abs_().le_(span)


def _fit_lines(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted least-squares ``x = a + b*y`` per row of ``x``/``w`` ([B,H]); returns a, b, count."""
    s = w.sum(-1)
    sy, sx = (w * y).sum(-1), (w * x).sum(-1)
    syy, sxy = (w * y * y).sum(-1), (w * x * y).sum(-1)
    det = s * syy - sy * sy
    b = (s * sxy - sy * sx) / det.clamp(min=1e-6)
    a = (sx - b * sy) / s.clamp(min=1.0)
    return a, b, s


def _row_ends(images: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: any scan pixel, first and last column above ``threshold`` ([B,H] each).

    Maxima of 0/1 x column weights in uint8: torch's CPU argmax and bool reductions are 20-40x
    slower than a uint8 multiply and amax. On the CPU images go a few at a time (small temporaries)."""
    b, _, h, w = images.shape
    itype = torch.uint8 if w <= 256 else torch.int32
    cols = torch.arange(w, device=images.device, dtype=itype)
    step = b if images.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // (h * w * images.element_size()))
    has, first, last = [], [], []
    for a in range(0, b, step):
        bright = (images[a : a + step, 0] > threshold).view(torch.uint8).to(itype)
        has.append(bright.amax(-1) > 0)
        last.append((bright * cols).amax(-1))
        first.append((w - 1) - (bright.mul_(w - 1 - cols)).amax(-1).float())
    has_row = torch.cat(has)
    left = torch.where(has_row, torch.cat(first), float(w))
    right = torch.where(has_row, torch.cat(last).float(), -1.0)
    return has_row, left, right


def estimate_geometry(
    images: torch.Tensor, threshold: float = 12 / 255, workspace: Workspace | None = None
) -> ScanGeometry:
    """Scan area, apex and beam extents of float images ``[B,1,H,W]`` in [0, 1] (maps on first use)."""
    b, _, h, w = images.shape
    dev = images.device
    has_row, left, right = _row_ends(images, threshold)
    rows = torch.arange(h, device=dev, dtype=torch.float32)
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

    return ScanGeometry(left, right, torch.stack([apex_x, apex_y], -1), r_min, r_max, a_min, a_max, is_fan, width=w)
