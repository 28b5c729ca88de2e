"""Body keypoints (and, on request, the silhouette) found in a plain person photo, offline.

The models ship inside the mediapipe 0.10.14 wheel, so nothing is downloaded:
BlazePose full (``modules/pose_detection/pose_detection.tflite`` and
``modules/pose_landmark/pose_landmark_full.tflite``) finds the 33 landmarks of
one person, the one its detector is surest of: in a group, the most prominent
(tests/model/person/test_detect.py: the larger of two people, on either side); the
full-range face detector (``modules/face_detection/
face_detection_full_range_sparse.tflite``) counts the people; selfie
segmentation (``modules/selfie_segmentation/selfie_segmentation.tflite``)
gives the silhouette. Code and models: Apache-2.0 (weights/README.md).

BlazePose's landmarks become COCO-18 in the photo's own pixels: the neck is
the midpoint of the shoulders, and a point BlazePose is not sure it sees
(visibility below VISIBLE) or places outside the photo is absent, as
OpenPose leaves points it does not see.

One detector per process (``get_detector``): mediapipe graphs are not
safe to share between threads, so each call holds the detector's lock. A detector
that fails to load (mediapipe missing or unable to start: its import of matplotlib
refuses an unusable config folder, say) is tried once per process: every later call
raises DetectorUnavailable with the first failure at once, instead of paying seconds
for the same failure on each photo.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .keypoints import COCO18_NAMES, L_SHOULDER, NECK, R_SHOULDER, Keypoints

# COCO-18 point i is BlazePose landmark BLAZEPOSE_TO_COCO18[i]; None is the neck, which
# BlazePose lacks. Both name sides from the person's point of view.
BLAZEPOSE_TO_COCO18 = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)
VISIBLE = 0.5  # BlazePose visibility below this: the point is absent
FOUND = 0.5  # detection confidence of the person and face detectors
DETECT_MAX_SIDE = 1024  # photos are scaled down to this for detection; the landmark model sees 256 px anyway




def _restore_get_prototype() -> None:
    """mediapipe 0.10.14 reads results through ``SymbolDatabase.GetPrototype``, which protobuf 5
    removed; protobuf 6 is what tritonclient's gRPC stubs and OpenTelemetry's OTLP need. The
    method is put back as what it always meant: the message class of a descriptor."""
    from google.protobuf import message_factory, symbol_database

    def get_prototype(_self, descriptor):
        return message_factory.GetMessageClass(descriptor)

    for cls in (symbol_database.SymbolDatabase, message_factory.MessageFactory):
        if not hasattr(cls, "GetPrototype"):
            cls.GetPrototype = get_prototype


class DetectionError(ValueError):
    """No usable person in the photo; ``code`` says why (no_person, missing_body_points,
    person_too_small) and the message gives what was found."""

    def __init__(self, code: str, message: str):
        super().__init__(f"person: {message}")
        self.code = code
        self.field = "person"
        self.message = message


class DetectorUnavailable(RuntimeError):
    """The person detector could not be loaded in this process; ``reason`` says why. Nothing
    that needs keypoints found in a photo can be done until the process restarts."""

    def __init__(self, reason: str):
        super().__init__(f"the person detector could not be loaded: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Detection:
    """What was found in one photo: keypoints in its pixels, how many people, how long it took."""
    keypoints: Keypoints
    person_count: int
    seconds: float
    silhouette: Image.Image | None = None  # mode L, 255 = person, the photo's size


def coco18_from_blazepose(landmarks: np.ndarray, size_wh: tuple[int, int]) -> Keypoints:
    """(33, 3) BlazePose rows (x, y normalised to the image, visibility) -> COCO-18 in
    pixels of an image of ``size_wh``."""
    width, height = size_wh
    xy = np.zeros((18, 2))
    confidence = np.zeros(18)
    for i, j in enumerate(BLAZEPOSE_TO_COCO18):
        if j is None:
            continue
        x, y, visibility = landmarks[j]
        if visibility >= VISIBLE and 0 <= x <= 1 and 0 <= y <= 1:
            xy[i] = (x * width, y * height)
            confidence[i] = visibility
    if confidence[R_SHOULDER] and confidence[L_SHOULDER]:
        xy[NECK] = (xy[R_SHOULDER] + xy[L_SHOULDER]) / 2
        confidence[NECK] = min(confidence[R_SHOULDER], confidence[L_SHOULDER])
    return Keypoints(xy, confidence)


def check_person(keypoints: Keypoints) -> None:
    """DetectionError missing_body_points unless the masked model can be drawn from detected
    ``keypoints``: both shoulders seen (whether the person is large enough: framing.check_person_size)."""
    missing = [COCO18_NAMES[i] for i in (R_SHOULDER, L_SHOULDER) if not keypoints.present[i]]
    if missing:
        raise DetectionError("missing_body_points", f"the person's {' and '.join(missing)} "
                             f"{'are' if len(missing) > 1 else 'is'} not visible in the photo; the masked model "
                             "needs both shoulders")


class PersonDetector:
    """BlazePose + face counting + selfie segmentation, one call at a time; all loaded and run once when made."""

    def __init__(self):
        # Imported here: mediapipe takes a second to import, and only detection needs it.
        try:
            _restore_get_prototype()
            from mediapipe.python.solutions import face_detection, pose, selfie_segmentation
        except ImportError as exc:
            raise RuntimeError(f"the person detector needs mediapipe ({exc}): pip install --no-deps "
                               "mediapipe==0.10.14, as the Makefile does; pyproject.toml lists the rest") from None

        self._lock = threading.Lock()
        with _native_notes_held_back():
            self._pose = pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                   min_detection_confidence=FOUND)
            self._faces = face_detection.FaceDetection(model_selection=1, min_detection_confidence=FOUND)
            self._segmentation = selfie_segmentation.SelfieSegmentation(model_selection=0)
            # Each graph starts on its first image: started here, their notes are held back too.
            blank = np.full((256, 192, 3), 255, dtype=np.uint8)
            for graph in (self._pose, self._faces, self._segmentation):
                graph.process(blank)

    def detect(self, photo: Image.Image, *, silhouette: bool = False) -> Detection:
        """The most prominent person in ``photo`` (upright RGB). DetectionError no_person when none."""
        started = time.perf_counter()
        small = _scaled_down(photo)
        rgb = np.asarray(small.convert("RGB"))
        with self._lock:
            faces = self._faces.process(rgb).detections or []
            landmarks = self._pose_rows(rgb)
            mask = self._silhouette(rgb, photo.size) if silhouette else None
        if landmarks is None:
            raise DetectionError("no_person", "no person found in the photo")
        keypoints = coco18_from_blazepose(landmarks, photo.size)
        return Detection(keypoints, max(1, len(faces)), time.perf_counter() - started, mask)

    def segment(self, photo: Image.Image) -> Image.Image:
        """The silhouette of the people in ``photo``: mode L, its size, 255 = person."""
        rgb = np.asarray(_scaled_down(photo).convert("RGB"))
        with self._lock:
            return self._silhouette(rgb, photo.size)

    def _pose_rows(self, rgb: np.ndarray) -> np.ndarray | None:
        """(33, 3) landmarks (x, y normalised, visibility) of the person BlazePose's detector is surest of."""
        found = self._pose.process(rgb).pose_landmarks
        if found is None:
            return None
        return np.array([(p.x, p.y, p.visibility) for p in found.landmark])

    def _silhouette(self, rgb: np.ndarray, size_wh: tuple[int, int]) -> Image.Image:
        mask = self._segmentation.process(rgb).segmentation_mask
        # Scaled as probabilities, then cut: a smoother edge than scaling the cut mask.
        scaled = Image.fromarray((np.clip(mask, 0, 1) * 255).astype(np.uint8), mode="L").resize(size_wh, Image.BILINEAR)
        return scaled.point(lambda v: 255 if v > 127 else 0)


# What mediapipe's native code prints straight to file descriptor 2 as its graphs start.
_NATIVE_NOTES = re.compile(r"XNNPACK delegate|absl::InitializeLog|inference_feedback_manager|"
                           r"gl_context|landmark_projection_calculator")


@contextmanager
def _native_notes_held_back():
    """Holds back mediapipe's start-up notes (file descriptor 2, below Python) so a CLI's error
    stays one line; anything else written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines(keepends=True):
                if not _NATIVE_NOTES.search(line):
                    sys.stderr.write(line)


def _scaled_down(photo: Image.Image) -> Image.Image:
    scale = DETECT_MAX_SIDE / max(photo.size)
    if scale >= 1:
        return photo
    return photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))), Image.BILINEAR)


_detector: PersonDetector | None = None
_detector_failure: str | None = None
_detector_pid: int | None = None
_detector_lock = threading.Lock()


def get_detector() -> PersonDetector:
    """This process's detector, made on first use (a forked child makes its own);
    DetectorUnavailable when it could not be loaded, now or before."""
    global _detector, _detector_failure, _detector_pid
    with _detector_lock:
        if _detector_pid != os.getpid():
            _detector, _detector_failure, _detector_pid = None, None, os.getpid()
        if _detector is None and _detector_failure is None:
            try:
                _detector = PersonDetector()
            except Exception as exc:  # noqa: BLE001 - whatever mediapipe's import or graphs raise
                first_line = next(iter(str(exc).splitlines()), "")
                _detector_failure = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        if _detector is None:
            raise DetectorUnavailable(_detector_failure)
        return _detector


def warm() -> float:
    """Loads this process's detector (which runs each model once); returns the seconds it took.
    DetectorUnavailable when it cannot be loaded."""
    started = time.perf_counter()
    get_detector()
    return time.perf_counter() - started
