"""Peak RSS of one default ``fetch_video`` call against the size of its output.

Run it with each environment's Python to see what the torch build alone costs, e.g.
``.venv-cpu/bin/python bench/rss_video.py bench/media/h264_854x480_10min_nob.mp4`` (CPU torch) and
``.venv/bin/python bench/rss_video.py ...`` (the CUDA build the tests use). The media are made by
``bench/bench_video.py``.
"""

import resource
import sys
import time

import torch

import vlutils


def main() -> None:
    after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    video = vlutils.fetch_video({"video": sys.argv[1], "fps": 2.0})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    output = video.numel() * video.element_size() / 2**20
    print(
        f"torch {torch.__version__}: RSS after importing torch {after_import:.0f} MiB, peak {peak:.0f} MiB, "
        f"output {output:.0f} MiB, peak - output {peak - output:.0f} MiB, {seconds:.1f} s, shape {tuple(video.shape)}"
    )


if __name__ == "__main__":
    main()
