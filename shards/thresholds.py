"""Every threshold of the cleaning rules, in one place, with what it measures and what set it.

Grey levels are 0-255. "Working" pixels are those of the copy reduced to <= ``WORK_SIDE`` px on
which the scan area and the frame rules are measured; "native" pixels are the frame's own. The
calibration set and the per-rule table are in docs/calibration.md.
"""

from __future__ import annotations

# --- scan area (shards.scan_area) -----------------------------------------------------------------
WORK_SIDE = 256  # longest side of the working copy: the rules' cost does not grow with the frame
LIT_LEVEL = 2  # a working pixel above this is lit (black surround and UI background are 0-2)
CORE_LEVEL = 16  # dense speckle lies above this; JPEG ringing around text stays below
CORE_MIN_DENSITY = 0.5  # share of a 7x7 window above CORE_LEVEL for the core
CORE_MIN_STD = 2.5  # grey std in 5x5 windows: speckle, even smoothed and dark, lies well above
CORE_MAX_FLAT = 0.3  # share of flat pixels (equal to their neighbours +-1) in 7x7: UI fills lie above
BAR_RUN = 32  # working pixels: a lit row this flat (+-1) is a UI fill (or an empty noise floor); speckle never is
BAR_REACH = 6  # ... and the rows this close to it (text lines on the bar)
FILL_SAME = 0.9  # share of a 7x7 window equal to its neighbours exactly: a grey UI fill (Telemed
# screens, level 54: 1.0); speckle never is, even video-compressed (COVID-BLUES: 0.3 % of pixels)
WHITE_LEVEL = 250  # grey level from which a flat field is white (a page, a light theme), not a grey UI fill or bar
WHITE_FILL = 0.02  # share of the working frame: a flat saturated field this large is a page or a light UI
# (a figure's white background, its gutters between panels), never tissue; clipped reflectors are strokes or specks
DIM_LEVEL = 100  # far-field speckle the core misses is darker than this; annotations are brighter
PIECE_MIN_SHARE = 0.1  # a core piece of this share of the largest may be image (fluid splits a fan)
PIECE_COLUMNS = 0.8  # ... across a black band when this share of its columns lies within the image's
PIECE_EDGES = 0.03  # ... or below it, both side edges within this share of its width (CING carotids: 0-1 px)
LOOSE_REGION = 0.85  # a DICOM region this share of the frame holds its UI too (EPIQ, S2000: 0.90-0.91)
REGION_FILL = 0.9  # ... unless the heuristic's box fills this much of it
CHROMA = 40  # channel spread (max - min) above which a pixel is coloured; JPEG chroma noise is < 25

# --- one scan mask per clip (shards.clip_mask) ----------------------------------------------------
CLIP_MASK_FRAMES = 16  # sampled frames a clip's scan area is found from (3 frames/s: about 5 s)
CLIP_MIN_FRAMES = 3  # frames needed before unchanging pixels are taken for user interface
MOTION_LEVEL = 12  # grey levels: a pixel changing more across those frames moves (H.264 noise on UI < 8)
PIECE_MIN_MOVING = 0.05  # a core piece with less than this share of moving pixels is UI (clips)

# --- colour (shards.colour) -----------------------------------------------------------------------
TINT_CHROMA = 4  # median channel spread of the lit pixels of a tinted frame (grey and Doppler: 0-1)
# degrees, hues weighed by their chroma: a tint is one hue (held-out sepia frames 8-22, 22-46 unweighted;
# Doppler frames 24-55 unless tinted themselves)
TINT_HUE_SPREAD = 20.0
TINT_BAND = 8  # grey levels per band of a tinted frame's own grey-to-colour map
TINT_GREY = 8  # channel spread at most: a grey pixel, drawn, where a tinted frame's map gives colour (> CHROMA)
FLOW_SATURATION = 100  # HSV saturation (0-255) of the inner pixels whose hue is read (a rim blends)
FLOW_MIN_PIXELS = 12  # saturated inner pixels a filled area needs for its colours to be read
# (the coloured fringes of sub-pixel rendered text in screenshots hold 4-10; a 6x6 flow spot 15)
FLOW_HUE_SPREAD = 10.0  # degrees, circular std of a filled area's hues: colour maps span more
FLOW_MAP_VALUE_SPREAD = 30  # HSV value, 10th-90th percentile: a colour map is graded (two flat marks are not)
FLOW_HUE_BIN = 5  # degrees: the bins a filled area's hues are counted in ...
FLOW_HUE_BIN_SHARE = 0.02  # ... a bin holding this share of its saturated inner pixels is held ...
FLOW_HUE_RUN = 20  # ... and this many degrees of held bins in a row are a map graded in hue
FLOW_HUES = ((330, 45), (195, 265))  # degrees: red-orange and blue, the hues of velocity/power maps
FLOW_VALUE_SPREAD = 60  # HSV value, 10th-90th percentile, of a graded red or blue flow spot
FLOW_LARGE = 0.05  # share of the scan area one filled coloured area covers to count whatever its colours
# A drawn contour (a nodule or organ outline in red or orange, 3-5 px, its colour spread by JPEG's
# chroma subsampling) survives the opening and grades in brightness like a velocity map. Its shape
# tells it: width 2 x area / perimeter, length perimeter / 2. Eight coloured outlines of thyroid
# exports (Azest-japan, a held-out check): 3.9-5.3 px wide, 116-265 widths long; the 395 flow pieces
# of 70 MMOTU Doppler frames at most 31 widths long among those under 8 px (and one at 100: the green
# outline of a colour box, a stroke too).
CONTOUR_WIDTH = 8.0  # px: a filled coloured piece at most this wide ...
CONTOUR_LENGTH = 60.0  # ... at least this many widths long ...
CONTOUR_ENDS = 3  # ... whose skeleton ends at most this often (the eight outlines: 0-3 times -- closed,
# open, a spur; a tree of thin vessels, renal or placental power Doppler, ends at every branch, and a
# detection figure's boxes with their label bars, covEcho's, 23 times) ...
CONTOUR_CHORD = 0.5  # ... and whose farthest ends lie at most this share of its length apart (the open
# outlines 0.03-0.28: they go round a gland; a vessel seen lengthwise runs on, near 1) is a drawn
# outline, never flow
# Bold coloured UI text (GE Voluson's red "SRI II 3": words 10 px tall, 5 px apart) survives the 3x3
# opening and its chroma-subsampled colour is graded like a flow map's: pieces of one line are text.
COLOUR_TEXT_HEIGHT = (6, 24)  # px: a filled coloured piece this tall may be a word ...
COLOUR_TEXT_ALIGN = 1  # ... when another ends on the same rows (one baseline, within this many px) ...
COLOUR_TEXT_SIZES = 1.5  # ... the taller at most this many times the other (capitals over numerals or small
# letters, thin glyphs the opening trims: MMOTU's Voluson "SRI" 14 px over "II" 10-12 px in 567 px exports) ...
COLOUR_TEXT_GAP = 2.0  # ... beside it, no further than this many heights (a glyph the opening removed) ...
COLOUR_TEXT_WORD = 4.0  # ... both no wider than this many heights (a vessel's flow runs longer)
# A mode badge or vendor logo the interface draws at the top of the scan area, on the display's own
# black (Butterfly's blue "B" disc, EchoNous Kosmos's orange logo, a Voluson screenshot's icon: 6 real
# frames, surround 0.94-1.0 black) is no flow over tissue; of 471 real colour-rejected frames' flow
# areas none else at the top is ringed so, and flow in a black heart chamber lies deep (0.91-0.94).
BADGE_TOP = 0.05  # share of the scan area's height its top lies within
BADGE_BLACK = 12  # grey level of the display's black (blood pools in echo DICOM are as dark: the top rule)
BADGE_RING = (3, 6)  # px around the area whose pixels are looked at (a compressed rim bleeds 2 px)
BADGE_BLACK_SHARE = 0.85  # share of that ring at BADGE_BLACK or darker (the Kosmos logo by the apex: 0.94)
COLOUR_FLOW = 0.0002  # share of the scan area's lit pixels in flow: one 6x6 spot in a 256x256 scan
COLOUR_OUTSIDE = 0.002  # share of the frame in textured colour outside the scan area (spectral strip)
# Outside the scan area a flow area must span hues: the velocity-scale legends of 4 real Doppler
# screens 5.5-27 deg, coloured UI text and logos (one hue blended with its bar: Mindray Z50 header,
# EchoNet's overlay, SonoSite text) 0.7-2.0 deg.
OUTSIDE_HUE_SPREAD = 4.0
COLOUR_LIT_LEVEL = 16  # brightest channel above this: a pixel whose hue is read (the black surround's is noise)
OUTSIDE_COLOUR_SHARE = 0.5  # share of a 5x5 window coloured for its grey texture to be read ...
OUTSIDE_TEXTURE_STD = 6  # ... and its texture (grey std of its coloured pixels) above which it is a map, not a flat bar

# --- not ultrasound / no tissue (shards.quality, shards.tissue) -----------------------------------
MIN_STD = 4.0  # grey std of a frame or scan area below which it is a frozen blank field
MIN_SCAN_SIDE = 48  # native pixels: the short side of the smallest usable scan area
MIN_SCAN_PIXELS = 4096  # native pixels (64 x 64): the smallest usable scan area
BRIGHT_LEVEL = 200  # grey level above which a pixel is bright (MAX_BRIGHT_FRACTION)
MAX_BRIGHT_FRACTION = 0.5  # share of the scan area above BRIGHT_LEVEL: documents, screenshots, white pages
SPECKLE_LIT_LEVEL = 20  # 7x7 mean above which a pixel's coefficient of variation is read (a dark floor's is noise)
GRAIN_LIT_LEVEL = 40  # sum of a neighbour pair above which the pair counts for the grain (mean above 20)
MIN_MEASURED_PIXELS = 64  # pixels the speckle and grain measures need; fewer: not measured
MIN_SPECKLE_CV = 0.04  # median 7x7 coefficient of variation: the smoothest real B-mode 0.059, photos <= 0.026
MAX_SATURATED = 0.5  # share of the scan area (the frame when none is found) in strong colour (HSV saturation > 150
# and value > 80, of 255): a logo or colour graphic (a web asset's logo 0.62); kept real frames 0.005 at most of the
# whole frame (200 held-out real frames, the 245 cached device frames; Doppler is judged first, sepia maps stay < 150)
SATURATION = 150  # ... the HSV saturation (of 255) and ...
SATURATED_VALUE = 80  # ... the HSV value above which a pixel is in strong colour
MIN_GRAIN = 0.3  # neighbour correlation of the scan area's native pixels (the larger of across and down): a
# scanner's point-spread function spans pixels, so speckle is grained; pixel noise is not (uniform white noise
# 0.00). 245 frames of the 31 cached device recordings: 0.70-0.999 at native size, 0.52 at least resized to 0.3x
# and 0.74 to 0.12x, probes in air included
GRAIN_SIDE = 512  # pixel pairs are taken on a grid of at most this many rows and columns (native neighbours)
NEAR_FIELD = 0.4  # share of the depth that is the near field (reverberation bands of a probe in air)
SECTOR_TOP = 0.25  # a scan area whose top is narrower than this share of its width, and centred within this
# share of its width, is a sector (its apex); a convex band's narrow top is one of its ends, at a side
FACE_LEVEL = 20  # 3x3 mean: the first pixel of a scan line above it is the transducer face
LIT_AREA_LEVEL = 40  # 5x5 mean above which a working pixel of the scan area is lit
AIR_EMPTY_LIT = 0.04  # empty: share of the scan area lit (5x5 mean > LIT_AREA_LEVEL) below this
AIR_NEAR_STRUCTURE = 6.0  # uniform: structure (grey std) of the near field below this ...
AIR_DEEP_STRUCTURE = 7.0  # ... and of the field below it below this ...
AIR_UNIFORM_BAND_R2 = 0.75  # ... with bands parallel to the face (near-field band_r2 at least this)
AIR_BANDS = 2  # ... that repeat (near-field peaks; a homogeneous phantom's membrane line is one),
BAND_PEAK = 0.25  # (a peak stands this share of the near-field profile's range above its median)
AIR_FLAT_RATIO = 0.5  # ... or without speckle's lateral texture (lateral_ratio below this),
AIR_DIM_FRACTION = 0.1  # ... or dim: a noise floor alone (lit share < 0.06; a dim phantom 0.28),
AIR_FLAT_STRUCTURE = 2.5  # ... or a near field flatter than this (EPIQ in air 1.1; no genuine frame under 5.5)
AIR_BAND_R2 = 0.55  # bands over an empty field: near field explained by its depth profile above this,
AIR_LIT_FRACTION = 0.25  # ... less than this share of the scan area lit,
AIR_EMPTY_STRUCTURE = 4.0  # ... and no structure below the near field (grey std below this)
AIR_PURE_BAND_R2 = 0.9  # ... lit at any share when bands are all the near field holds (air in the set:
# 0.97-0.98 with a bright face band lit over 0.3 of the area; no other frame above 0.83)
CENTRE_LINES = 0.5  # share of the scan lines, in the middle, judged apart (gel contact stays at the ends)
AIR_CENTRE_BAND_R2 = 0.85  # there: near field explained by its depth profile at least this (air with
# contact at the ends 0.87-1.0; genuine frames with a quiet deep field 0.77 at most: an eye's globe is
# 0.93 but has the orbit below it),
AIR_CENTRE_DEEP_STRUCTURE = 5.0  # ... over no structure below (air 2.4-4.6; that eye 14)
AIR_BAND_ASPECT = 0.45  # a thin band at the face: a scan area found, its depth / width below this
# (probes in air whose field below the near-field arcs holds no evidence: 0.31-0.40),
AIR_ROOM_BELOW = 1.0  # ... over a frame that goes on below it for at least one band depth (air
# 1.38-10.4, the least a convex probe at full gain, its arcs 40 % of the screen; genuine, annotated
# and UI-screen frames thinner than 0.45: 1.88 at most, each failing the next three tests),
AIR_BELOW_LIT = 0.01  # ... and is dark there (share of working pixels lit: air <= 0.002, CING 0.02),
AIR_FADE = 0.05  # ... the band fading to nothing at its bottom (deepest fifth / brightest: air <= 0.01),
AIR_LINE_LIKENESS = 0.96  # ... and every scan line alike (median correlation with the median line:
# air 0.969-0.99, the least a DC-40 7L4B re-encoded as JPEG; genuine frames < 0.8 as deep as wide with
# room below: 0.95 at most; the middle of that gap)
AIR_REGION_LIT = 0.25  # a DICOM region less lit than this may frame a probe in air, its arcs a band
# at the top: the area found inside is judged as a band (CX50 and Voluson S8 in air: 0.06 and 0.01;
# genuine frames in regions of the real DICOMs at hand: 0.10-0.38)
AIR_REGION_LOWER_LIT = 0.02  # ... and its lower third (under any band with room for 2 depths below
# it) lit less than this: air 0-0.010; genuine frames 0.11-0.60 but a shallow muscle scan, 0.001
AIR_RISE = 0.93  # a rising noise floor: the depth profile's rank correlation with depth at least this
# (phased arrays in air, X5-1 presets: 0.965-0.996; 2,262 genuine held-out frames: 0.966 at most) ...
AIR_RISE_RATIO = 1.5  # ... its deep level (from 0.6 of the depth) this many times its near one (top fifth;
# air 1.69-3.48),
AIR_RISE_STRUCTURE = 12.0  # ... and near and deep structure both below this (air <= 9.7; the 8 genuine
# frames rising as steadily, kidney screens, 14.9 and more)

# --- annotations (shards.annotations, shards.mark_shapes), native pixels --------------------------
MARK_MIN_FRAME = 144  # native pixels: the short side of a frame under which grey marks are not searched, only
# coloured ones: a frame that small was resampled from a screen of 400 px and more, its marks shrank below GLYPH_MIN
# and the arms the finder needs, and its anatomy took their size (clean frames flagged: HC18 at a short side of
# 96 / 112 / 128 / 144 / 160 px 13 / 9 / 5 / 0 / 1 %, EchoNet-Dynamic's 112 px clips 17 %; none of 2,397 frames
# of six other held-out sets is under 190)
MARK_CONTRAST = 50  # white top-hat (pixel minus its 5x5 opening) of a thin bright stroke, at least
MARK_LEVEL = 150  # ... at this grey level or brighter (marks are drawn white, light grey or colour)
MARK_STEP = 60  # grey levels a drawn piece stands above the ring around it (tissue streaks: < 45)
STROKE_WIDTH = 3  # pixels: the widest stroke of a mark (scanner fonts, calipers, lines: 1-3)
# a line or outline drawn two pixels thick (OpenCV thickness 2: 3-4 px wide; an independent planting on
# 75 real crops found 246 -> 262 of 300 arrows, 247 -> 251 of 295 ellipses, no clean crop newly flagged)
THICK_SHARE = 0.95  # ... this share of its pixels
THICK_HALF = 2.5  # ... at most this far (px) from its edge
THICK_CORE = 3.5  # ... and none further (where an arrow's head meets its shaft)
LINE_MIN = 20  # pixels: the shortest line or arrow
PLATEAU_TOL = 8  # grey levels around a piece's median that count as its one drawing colour
LINE_PLATEAU = 0.75  # share of a grey line's or outline's pixels in that colour (tissue edges vary)
LINE_WOBBLE = 0.75  # pixels: std of a grey line's centre across its axis (drawn lines are straight)
FIBRE_LEN = 30  # pixels: a grey line shorter than this ...
FIBRE_STEP = 90  # ... and standing less than this above its surround is judged against the grain (docs/calibration.md):
GRAIN_WINDOW = 30  # pixels each side of it, the structure tensor of the tissue around it ...
GRAIN_COHERENCE = 0.75  # ... this coherent (fibres: 0.78-0.98; BUSI's drawn lines 0.31-0.72) ...
GRAIN_ANGLE = 20  # ... running within this many degrees of it (fibres: 0-7; BUSI's drawn lines: 84-90) is a fibre
BRIGHT_LINE_LEVEL = 220  # a white grey line (this level or brighter) ...
BRIGHT_TISSUE_SHARE = 0.001  # ... at a level this share of the scan's tissue reaches too ...
BRIGHT_LINE_STEP = 100  # ... stands at least this above its ring to be drawn. Contrast-stretched frames (the
# Kaggle brachial-plexus set: a median 0.56 %, up to 3.8 %, of tissue at 250+) saturate their fascia into white
# lines 60-98 above the tissue beside them: 129 of 134 such candidates on 50 frames. On 1,878 other held-out
# real frames the rule takes 11 candidates, each a tissue streak or the image's rim by eye; grey drawn lines
# (BUSI's, 154-162) lie lower
TRACE_MIN = 60  # pixels: a curved stroke this large ... (the usaugment liver trace: 312)
TRACE_SPAN = 40  # ... spanning this many pixels (that trace: 89) ...
TRACE_WIDTH = 2  # ... and this wide at most is a drawn trace (none of the 1,328 genuine B-mode frames has one)
BODY_MARK_MAX = 80  # pixels: a closed outline this wide at most is a body mark (larger: a box)
GLYPH_MIN = 5  # pixels: the shortest glyph of text
GLYPH_MAX = 40  # ... and the tallest
GLYPH_STROKE = 5  # pixels: the widest stroke of a glyph (Open Kidney screens' bold captions: 4, 5 where strokes meet)
TEXT_MIN_GLYPHS = 2  # glyphs side by side for text
TEXT_ASPECT = 1.1  # a line of text at least this much wider than tall (two capitals, "LT": 1.18)
GLYPH_STEP = 40  # grey levels: a glyph candidate stands at least this above its surround ...
TEXT_FAINT_STEP = 50  # ... and text whose glyphs' middle step is under MARK_STEP needs this (BUSI "RT AXILLA"
TEXT_FAINT_GLYPHS = 3  # at 256 px: 55) over at least this many glyphs (no genuine B-mode frame of 1,328 has such)
TEXT_PLATEAU = 0.35  # share of a grey text line's pixels in its one colour (tissue touches glyphs)
GLYPH_ASPECT = 2.5  # glyphs this wide per height at most, in a line's middle (912 lines found on 2,265 real
# screens: 2.0 at most; a bright fascia broken into streaks: 3.7-7.5); each one, in unpeeled text ...
TEXT_CLEAR_STEP = 120  # ... standing this far above its ring (planted anti-aliased glyphs: 136-200; the
# TimTrack fascia streaks read as unpeeled text without these two rules: steps 41-79)
DOT_MAX = 3  # pixels: the widest dot of a dotted line
DOTS_MIN = 4  # evenly spaced dots for a dotted line
DOT_SPACING = 32  # pixels: the widest spacing of a dotted line's dots
CURVE_DOTS_MIN = 10  # dots of a dotted curve (an ellipse measured dotted): each linked to its two nearest,
CURVE_GAP_RATIO = 1.5  # ... each gap within this factor of the one before (speckle grains: any),
CURVE_TURN = 40.0  # ... turning at most this many degrees at each dot, and always the same way
CURVE_TURN_NOISE = 15.0  # ... the turns past this (whole-pixel dots 5 px apart: +-11 degrees of noise)
CURVE_BEND = 90.0  # ... adding up to at least this many degrees (a quarter of an ellipse)
CURVE_TWIN = 2.5  # pixels: dots closer than this are one dot of a curve
ARM_MAX = 12  # pixels: the longest arm of a caliper drawn as four separate bars
EDGE_SHARE = 0.8  # a line with this share of its pixels on the scan area's edge is its outline
EDGE_BAND = 0.02  # ... or, for a level or plumb line (RULER_ASPECT), this share of the crop's short side
# (at least 2 px): a device's ruler along the image's border (Telemed screens: 6-14 px of 742)
RULER_ASPECT = 4  # a line or arrow this many times longer than it is wide is level or plumb (ruler
# segments between two ticks: 5-76; a body mark's side cut by the border, 2.7)
TICKS_MIN = 3  # short lines standing on one border of the crop, this many of a like length: scale ticks
BLACK_LEVEL = 16  # the 5x5 median at most this is black around the image: JPEG rings a black margin up to ~25
# next to a bright rim (MMOTU's 1100 px exports: 0-27 within 10 px of the fan)
FACE_ZONE = 0.02  # share of the depth below the scan's top where a level line is the skin / face echo
# (real frames: Clarius face line at 0.9 %, lung and BUSI skin lines at rows 0-5; drawn lines deeper)
COLOUR_MARK_MIN = 6  # pixels: a coloured stroke this large is a mark whatever its shape ...
COLOUR_STROKE_MAX = 7  # ... at most this wide (traces, arrowheads, bold text; tinted highlights are wider)
FAINT_SHAPES = ((2, 5), (3, 7))  # a faint caliper's arms run from this far out to this far (pixels; the
# second: a gap in the middle) -- shards.faint_calipers; DDTI's grey calipers, enlarged: 5-8 px arms
FAINT_ARM_TEST = (3, 5)  # ... every shape's arms cover this stretch, where the candidates are sought ...
FAINT_PRE = 20  # ... holding a top-hat this high on every arm pixel (DDTI's calipers: 35 and more)
FAINT_SIDE = 3  # pixels beside an arm where the tissue on either side of it is measured
FAINT_CONTRAST = 18  # an arm's faintest pixel above the brighter side, on each arm: a caliper (DDTI's grey
# calipers: 19-81; 1,986 held-out frames where the stroke rule finds nothing: 16 at most -- docs/calibration.md)
FAINT_ABOVE = 10  # ... its arms' middle level this far over the upper quartile of the rest of its box
# (DDTI's calipers: 13-134; the crosses fine-grained synthetic speckle makes: -7 to 1)
MARK_GROW = 1  # pixels added around a mark before inpainting (anti-aliasing, JPEG halo)
INPAINT_RADIUS = 3  # pixels: cv2.inpaint's neighbourhood
