"""The public API of ``vlutils`` is listed here, so that a change to it is a deliberate edit of
this file, and everything qwen-vl-utils 0.0.14 exports is still there under the same name."""

from __future__ import annotations

import inspect
import types

import pytest

import vlutils

# vlutils.__all__ (eager and lazily imported names), sorted. Adding or removing a public name
# means editing this list in the same commit.
PUBLIC_API = [
    "FPS", "FPS_MAX_FRAMES", "FPS_MIN_FRAMES", "FRAME_FACTOR", "FetchSettings", "IMAGE_MAX_TOKEN_NUM",
    "IMAGE_MIN_TOKEN_NUM", "MAX_NUM_WORKERS_FETCH_VIDEO", "MAX_RATIO", "MODEL_SEQ_LEN", "MediaCache", "PRESETS",
    "SPATIAL_MERGE_SIZE", "SafetyPolicy", "VIDEO_MAX_TOKEN_NUM", "VIDEO_MIN_TOKEN_NUM", "VIDEO_READER_BACKENDS",
    "VideoMetadata", "VisionInputError", "VisionPreset", "afetch_image", "afetch_video", "aprocess_vision_info",
    "build_inputs", "cache", "calculate_video_frame_range", "ceil_by_factor", "count_tokens",
    "decode_position_ids", "expand_placeholders", "extract_vision_info", "fetch_image", "fetch_video",
    "floor_by_factor", "format_chat", "get_preset", "get_rope_index", "get_video_reader_backend", "grounding",
    "load_tokenizer",  # issue 20: qwen.tiktoken files, tokenizer.json files and folders
    "patchify", "patchify_image", "patchify_video", "policy", "process_vision_info", "processor_inputs",
    "round_by_factor", "set_cache", "set_policy", "smart_nframes", "smart_resize", "to_rgb",
]

# What code written against qwen-vl-utils 0.0.14 imports: the package's names and the public
# functions and constants of its vision_process module (checked against the installed
# reference below, when it is installed).
QWEN_VL_UTILS_NAMES = [
    "FPS", "FPS_MAX_FRAMES", "FPS_MIN_FRAMES", "FRAME_FACTOR", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM",
    "MAX_NUM_WORKERS_FETCH_VIDEO", "MAX_RATIO", "MODEL_SEQ_LEN", "SPATIAL_MERGE_SIZE", "VIDEO_MAX_TOKEN_NUM",
    "VIDEO_MIN_TOKEN_NUM", "VIDEO_READER_BACKENDS", "calculate_video_frame_range", "ceil_by_factor",
    "extract_vision_info", "fetch_image", "fetch_video", "floor_by_factor", "get_video_reader_backend",
    "process_vision_info", "round_by_factor", "smart_nframes", "smart_resize", "to_rgb",
]


def test_public_api_is_unchanged():
    assert sorted(vlutils.__all__) == PUBLIC_API, (
        "vlutils' public API changed; if deliberate, update PUBLIC_API in tests/test_public_api.py")
    assert len(set(vlutils.__all__)) == len(vlutils.__all__)
    assert set(PUBLIC_API) <= set(dir(vlutils))


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_resolves(name):
    assert getattr(vlutils, name) is not None


def test_qwen_vl_utils_names_are_all_there():
    assert set(QWEN_VL_UTILS_NAMES) <= set(PUBLIC_API)


def test_qwen_vl_utils_names_match_the_installed_reference():
    reference = pytest.importorskip("qwen_vl_utils")
    process = reference.vision_process
    names = {n for n in dir(reference) if not n.startswith("_") and not isinstance(getattr(reference, n), types.ModuleType)}
    for name in dir(process):
        value = getattr(process, name)
        if name.startswith("_") or isinstance(value, types.ModuleType) or inspect.isclass(value):
            continue
        if (callable(value) and getattr(value, "__module__", None) == process.__name__) or name.isupper():
            names.add(name)
    # the reference's import-time switches, and helpers whose answer is always "no" or "yes" there
    names -= {"FORCE_QWENVL_VIDEO_READER", "is_decord_available", "is_torchcodec_available"}
    assert names == set(QWEN_VL_UTILS_NAMES)
    for name in names:
        ours, theirs = getattr(vlutils, name), getattr(process, name, getattr(reference, name, None))
        if callable(theirs) and not isinstance(theirs, dict):
            assert callable(ours), name
            ours_params = list(inspect.signature(ours).parameters)
            theirs_params = list(inspect.signature(theirs).parameters)
            assert ours_params[: len(theirs_params)] == theirs_params, name
        elif not isinstance(theirs, dict):
            assert ours == theirs, name
        else:
            assert set(theirs) <= set(ours), name
