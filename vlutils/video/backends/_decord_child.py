"""Child process for the decord backend (run as a script: imports only decord and numpy).

Why a process: decord can hang inside C++ on some files; a hung thread cannot be
stopped, a process can be killed. Protocol on stdout, each message
``<type:1 byte><length:8 bytes LE><payload>``: ``P`` probe (JSON), ``E`` error (JSON),
``F`` frame (``<index:int64><height:uint32><width:uint32>`` + RGB bytes), ``D`` done.
The parent sends the wanted indices as one JSON line on stdin.
"""

import json
import struct
import sys

# sys.path[0] is this directory, whose decord.py / torchcodec.py would shadow the real packages
del sys.path[0]


def send(out, kind: bytes, payload: bytes) -> None:
    out.write(kind + struct.pack("<Q", len(payload)))
    out.write(payload)
    out.flush()


def main() -> int:
    out = sys.stdout.buffer
    path, threads, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        import decord

        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        total = len(vr)
        try:
            timestamps = [float(t) for t in vr.get_frame_timestamp(list(range(total)))[:, 0]] if total else None
        except Exception:  # noqa: BLE001 - optional refinement
            timestamps = None
        probe = {"total_frames": total, "fps": float(vr.get_avg_fps()), "timestamps": timestamps,
                 "keyframes": [int(k) for k in vr.get_key_indices()]}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        send(out, b"E", json.dumps({"stage": "open", "error": " ".join(str(exc).split())[:300]}).encode())
        return 1
    send(out, b"P", json.dumps(probe).encode())
    line = sys.stdin.readline()
    if not line:
        return 0
    indices = json.loads(line)
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        try:
            batch = vr.get_batch(part).asnumpy()
        except Exception as exc:  # noqa: BLE001
            send(out, b"E", json.dumps({"stage": f"frames {part[0]}..{part[-1]}",
                                         "error": " ".join(str(exc).split())[:300]}).encode())
            return 1
        for index, frame in zip(part, batch):
            header = struct.pack("<qII", index, frame.shape[0], frame.shape[1])
            send(out, b"F", header + frame.tobytes())
    send(out, b"D", b"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
