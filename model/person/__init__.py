"""The person side of the network's inputs, from whatever a shop has.

A person photo (keypoints found in it by ``detect``, or sent), maybe its
human-parsing map, or the finished masked model and pose map: ``person_images``
turns any valid mix (``PERSON_MIXES``) into the masked model and the pose map
at the model's size, drawn as the published model's training data were.
Callers (the service, the CLIs) import from here.
"""
from .detect import Detection, DetectionError, DetectorUnavailable, get_detector, warm
from .keypoints import Keypoints, KeypointsError, load_keypoints, openpose_json, parse_keypoints
from .person_inputs import (PERSON_MIXES, IncompleteInputs, PersonInputs, PersonMix, check_person_mix, draw_inputs,
                            person_images)

__all__ = ["PERSON_MIXES", "Detection", "DetectionError", "DetectorUnavailable", "IncompleteInputs", "Keypoints",
           "KeypointsError", "PersonInputs", "PersonMix", "check_person_mix", "draw_inputs", "get_detector",
           "load_keypoints", "openpose_json", "parse_keypoints", "person_images", "warm"]
