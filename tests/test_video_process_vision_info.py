"""process_vision_info on messages with videos: same (images, videos, video_kwargs) as
qwen-vl-utils 0.0.14 with its decord backend, metadata included."""

from __future__ import annotations

import pytest
import torch

from _video_helpers import fixture, reference_decord


def messages():
    return [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": fixture("h264_320x240_30fps.mp4"), "fps": 4, "max_pixels": 200000},
                {"type": "text", "text": "and"},
                {"type": "video", "video": fixture("vp9_30fps.webm"), "nframes": 6},
                {"type": "video", "video": fixture("h264_rotate90.mp4"), "video_start": 0.5, "video_end": 2.5},
            ],
        }
    ]


@pytest.mark.parametrize("return_video_metadata", [False, True])
@pytest.mark.parametrize("patch", [14, 16])
def test_process_vision_info_videos_match_reference(return_video_metadata, patch):
    from vlutils.vision_process import process_vision_info

    with reference_decord() as vp:
        ref_images, ref_videos, ref_kwargs = vp.process_vision_info(
            messages(), return_video_kwargs=True, return_video_metadata=return_video_metadata, image_patch_size=patch
        )
    images, videos, kwargs = process_vision_info(
        messages(), return_video_kwargs=True, return_video_metadata=return_video_metadata, image_patch_size=patch
    )
    assert images is None and ref_images is None
    assert kwargs == ref_kwargs
    assert len(videos) == len(ref_videos) == 3
    for got, ref in zip(videos, ref_videos):
        if return_video_metadata:
            (got, md), (ref, ref_md) = got, ref
            assert md["frames_indices"] == ref_md["frames_indices"]
            assert md["total_num_frames"] == ref_md["total_num_frames"] and md["fps"] == ref_md["fps"]
        assert torch.equal(got, ref)
