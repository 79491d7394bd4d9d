"""The "parts" task of the synthetic VOC: objects whose class shows weakly on a large body and
perfectly on a small part (``cpn synth-voc --task parts``).

This is the situation CPN is about (paper Sec. 3.1, Fig. 3, Fig. 5): a classifier trained on
image-level labels can solve every label from the small part alone, so a plain CAM fires on the
part and under-covers the body; hiding patches (the CP pair) takes the part away in one of I_h,
I_hbar and forces the body cue to be learnt. Each object is

* a **body**: a large shape (ellipse, box or diamond, chosen at random, so the shape says nothing
  about the class) filled with a neutral grey and low-contrast stripes. The stripes are the body's
  weak class cue: their angle (5 values) and period (4 values) name one of the 20 classes. The cue
  is noisy: with probability :data:`TEXTURE_NOISE` a body wears the stripes of another class (one
  not in the image);
* a **marker**: a small disc in the class's saturated colour (20 hues, nothing else in the image
  is saturated), inside the body (away from its edge) and never occluded — a perfectly
  discriminative part.

Two variants (:data:`PART_STYLES`), each a ``--task`` of ``cpn synth-voc``:

* ``parts`` — the body cue is unreliable: 30 % of bodies wear another class's stripes. A classifier
  learns the marker and little else, so with the marker hidden it no longer finds the object: CPN's
  premise (eq. 4, Fig. 1: the branch whose discriminative part is hidden still finds the object) fails;
* ``parts-reliable`` — every body wears its own class's stripes, at a lower contrast than ``parts``, on
  a base colour faintly tinted with its class's hue (HSV saturation 0.45 where the marker has 1): the
  body cue is reliable but weaker and slower to learn than the marker, so a plain CAM still peaks on the
  marker and under-covers the body, while the marker-less branch of a CP pair still finds the object.
  Frozen on two criteria measured with the tiny backbone's warm-up (``benchmarks/bench_quality.py``),
  never on a model's score: CPN's premise holds (the marker-less branch has a positive CAM on the body
  in ≥ 50 % of CP pairs: 65 % with superpixels) and the plain CAM's body recall is well below its marker
  recall (83 % vs 98 %). Stripes alone, even with 22–32 grey levels or with markers on only 75 % or 50 %
  of the objects, gave 1–16 %: the tiny network never learnt them.

Backgrounds are the cluttered, desaturated ones of the default task; 1-2 objects per image. The
ground-truth mask covers the whole object (body and marker) with its class. Beside the VOC folders
the task writes ``SegmentationPart/{id}.png`` (not part of VOC): 0 = not an object, 1 = body,
2 = marker, 255 = void (the same void band as the class mask), used to measure the CAM's body and
marker recall (:mod:`cpn_dist.demo.parts`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cpn_dist.data.datasets.voc import IGNORE, NUM_FOREGROUND
from cpn_dist.data.synth.draw import SynthObject, clutter_background, shape_mask, void_border

BODY_SHAPES = ("ellipse", "box", "diamond")
BODY_RADIUS = (0.3, 0.42)  # body radius, as a fraction of the image's short side
MARKER_RADIUS = 0.14  # marker radius, as a fraction of the short side
TEXTURE_NOISE = 0.3  # probability that a body wears another class's stripes
STRIPE_ANGLES = 5  # stripe angles 0°, 36°, …, 144°
STRIPE_PERIODS = (0.08, 0.11, 0.15, 0.2)  # stripe periods, as a fraction of the short side
STRIPE_AMPLITUDE = (10.0, 16.0)  # grey levels either side of the body's base grey
PART_NONE, PART_BODY, PART_MARKER = 0, 1, 2


@dataclass(frozen=True)
class PartStyle:
    """What distinguishes the parts tasks: how often a body wears another class's stripes, the stripes'
    contrast (grey levels either side of the base grey), the random stream of the images, and the
    probability that an object shows its marker at all."""

    texture_noise: float
    stripe_amplitude: tuple[float, float]
    stream: int
    marker_prob: float = 1.0
    body_tint: float = 0.0  # HSV saturation of the body's base colour in its class's hue (0: neutral grey)


PART_STYLES = {
    "parts": PartStyle(TEXTURE_NOISE, STRIPE_AMPLITUDE, stream=1),
    "parts-reliable": PartStyle(0.0, (6.0, 10.0), stream=2, body_tint=0.45),
}


def marker_colour(cls: int) -> np.ndarray:
    """The saturated RGB (0..255 float) of a class's marker: 20 hues at full saturation."""
    return np.array(colorsys.hsv_to_rgb(cls / NUM_FOREGROUND, 1.0, 1.0)) * 255.0


def stripe_code(cls: int) -> tuple[float, float]:
    """(angle in radians, period as a fraction of the short side) of a class's body stripes."""
    return np.pi * (cls % STRIPE_ANGLES) / STRIPE_ANGLES, STRIPE_PERIODS[cls // STRIPE_ANGLES]


def texture_class(cls: int, present: list[int], rng: np.random.Generator, noise: float = TEXTURE_NOISE) -> int:
    """The class whose stripes a body of class ``cls`` wears: its own, or with probability ``noise`` a
    class that is not in the image (``present``)."""
    if rng.random() < noise:
        others = [c for c in range(NUM_FOREGROUND) if c not in present]
        return int(others[int(rng.integers(len(others)))])
    return cls


def _draw_part_object(canvas: np.ndarray, labels: np.ndarray, parts: np.ndarray, ids: np.ndarray, obj_id: int,
                      cls: int, present: list[int], margin: int, rng: np.random.Generator,
                      style: PartStyle) -> np.ndarray | None:  # fmt: skip
    """Paint one object (body, then marker) of class ``cls``; returns the marker's mask (None when the
    body has no room for a marker ``margin`` pixels from its edge)."""
    h, w = labels.shape
    short = min(h, w)
    radius = rng.uniform(*BODY_RADIUS) * short
    aspect = rng.uniform(0.75, 1.3)
    rx, ry = radius * aspect, radius / aspect
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    theta = rng.uniform(0, 2 * np.pi)
    kind = BODY_SHAPES[int(rng.integers(len(BODY_SHAPES)))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    cos, sin = np.cos(theta), np.sin(theta)
    u = (cos * dx + sin * dy) / rx
    v = (-sin * dx + cos * dy) / ry
    body = shape_mask(kind, u, v)

    # Body: neutral grey, low-contrast stripes in the (possibly wrong) class's angle and period.
    angle, period = stripe_code(texture_class(cls, present, rng, style.texture_noise))
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / (period * short) + phase)
    grey = rng.uniform(90, 170) + rng.uniform(-10, 10, 3)
    if style.body_tint > 0:  # the class's hue, faintly: the marker's colour cue at a fraction of its strength
        base = float(np.mean(grey))
        grey = np.array(colorsys.hsv_to_rgb(cls / NUM_FOREGROUND, style.body_tint, base / 255.0)) * 255.0
    colour = grey + rng.uniform(*style.stripe_amplitude) * stripes[..., None]
    canvas[body] = colour[body]
    labels[body] = cls + 1
    parts[body] = PART_BODY
    ids[body] = obj_id

    # Marker: a saturated disc at a random place inside the body, at least `margin` pixels from its edge.
    r_marker = MARKER_RADIUS * short
    depth = ndimage.distance_transform_edt(np.pad(body, 1))[1:-1, 1:-1]
    centres = np.flatnonzero(depth >= r_marker + margin)
    if centres.size == 0:
        return None
    if style.marker_prob < 1.0 and rng.random() >= style.marker_prob:
        return np.zeros_like(body)  # this object shows no marker: only its body names its class
    centre = int(centres[int(rng.integers(centres.size))])
    my, mx = divmod(centre, w)
    marker = np.hypot(xx - mx, yy - my) <= r_marker
    canvas[marker] = marker_colour(cls) * rng.uniform(0.9, 1.0)
    parts[marker] = PART_MARKER
    return marker


def _place_objects(background: np.ndarray, classes: list[int], width: int, rng: np.random.Generator,
                   style: PartStyle, tries: int = 20) -> tuple[np.ndarray, ...] | None:  # fmt: skip
    """Draw the objects one by one: (canvas, labels, parts, ids), or None when one cannot be placed.

    Object k is drawn on copies and kept when its marker fits, it stays clear of the earlier markers'
    halos (so every marker remains whole, ringed by its own body and away from any void band), and
    every body so far stays visible over at least 3× its marker's area."""
    h, w = background.shape[:2]
    state = (background.copy(), np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8), np.zeros((h, w), np.int32))
    halos: list[np.ndarray] = []
    sizes: list[int] = []
    for k, cls in enumerate(classes, start=1):
        for _ in range(tries):
            trial = tuple(a.copy() for a in state)
            marker = _draw_part_object(*trial, k, cls, classes, 2 * width + 2, rng, style)
            if marker is None:
                continue
            grown = ndimage.binary_dilation(trial[3] == k, iterations=width)
            if any((grown & halo).any() for halo in halos):
                continue
            bodies = [np.count_nonzero((trial[3] == j) & (trial[2] == PART_BODY)) for j in range(1, k + 1)]
            if all(b >= 3 * n for b, n in zip(bodies, [*sizes, np.count_nonzero(marker)])):
                break
        else:
            return None
        state = trial
        halos.append(ndimage.binary_dilation(marker, iterations=width + 1))
        sizes.append(int(np.count_nonzero(marker)))
    return state


def render_parts_image(index: int, size: int, seed: int, max_tries: int = 50, task: str = "parts"):
    """Render image ``index`` of a parts task (:data:`PART_STYLES`): returns (rgb uint8 H×W×3, class mask
    uint8 H×W with void, part map uint8 H×W with void, objects). Depends only on (task, seed, index)."""
    style = PART_STYLES[task]
    rng = np.random.default_rng([seed, index, style.stream])  # a stream of its own per task
    long_side, short_side = size, max(16, int(round(size * rng.uniform(0.75, 1.0))))
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    width = max(1, int(round(min(h, w) / 100)))
    background = clutter_background(h, w, rng)
    n_objects = int(rng.integers(1, 3))
    classes = [int(c) for c in rng.choice(NUM_FOREGROUND, size=n_objects, replace=False)]
    for _ in range(max_tries):
        placed = _place_objects(background, classes, width, rng, style)
        if placed is not None:
            break
    else:  # pragma: no cover - would need an absurdly small image
        raise RuntimeError(f"could not place {n_objects} objects with visible markers in image {index}")
    canvas, labels, parts, ids = placed
    void = void_border(labels, width)
    canvas += rng.normal(0.0, 6.0, canvas.shape)
    rgb = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    mask, part_map = labels.copy(), parts.copy()
    mask[void] = IGNORE
    part_map[void] = IGNORE
    objects = []
    for k, cls in enumerate(classes, start=1):
        ys, xs = np.nonzero(ids == k)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        truncated = box[0] == 1 or box[1] == 1 or box[2] == w or box[3] == h
        objects.append(SynthObject(cls, box, truncated))
    return rgb, mask, part_map, objects
