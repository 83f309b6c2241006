"""Resume points of a zlib payload (docs/FORMAT.md "Resume points"): where a device may start inflating again.

A device inflates a zlib payload as it arrives; its decoder lives in RAM, so a reset or a deep sleep would
start the download over. The packager therefore ends every `stride` decoded bytes with a full flush
(zlib's Z_FULL_FLUSH: an empty stored block, byte-aligned, and no back-reference across it) and lists
the encoded offset after each flush in the signed manifest (record 0x82). A device that has the image
up to k * stride in flash asks for the payload from point k on and inflates it with a fresh raw decoder.
With a 1 KiB window a flush every 64 KiB costs a few bytes per point.
"""

from __future__ import annotations

import zlib

RESUME_STRIDE = 65536  # decoded bytes between two resume points (the journal's 64 KiB on the device)
RESUME_MAX = 48  # points at most (4 + 4 * 48 bytes of manifest); a larger image gets a doubled stride


def resume_stride(image_size: int) -> int:
    """Decoded bytes between two resume points: RESUME_STRIDE, doubled until at most RESUME_MAX points."""
    stride = RESUME_STRIDE
    while (image_size - 1) // stride > RESUME_MAX:
        stride *= 2
    return stride


def deflate_resumable(image: bytes, wbits: int) -> tuple[bytes, int, tuple[int, ...]]:
    """A zlib stream (RFC 1950) of `image` with a full flush after every `stride` decoded bytes: there the
    stream is byte-aligned and nothing refers back past it (zlib's Z_FULL_FLUSH), so a device can inflate
    from that point on with a fresh raw decoder after a reset (docs/FORMAT.md "Resume points").
    Returns (payload, stride, the encoded offset of each point)."""
    stride = resume_stride(len(image))
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = bytearray()
    points = []
    for start in range(0, len(image), stride):
        out += comp.compress(image[start : start + stride])
        if start + stride < len(image):
            out += comp.flush(zlib.Z_FULL_FLUSH)
            points.append(len(out))
    out += comp.flush()
    return bytes(out), stride, tuple(points)


def check_resume_points(payload: bytes, image: bytes, wbits: int, stride: int, points: tuple[int, ...]) -> str | None:
    """What is wrong with a zlib payload's resume points (each must inflate, raw, to the image from k * stride
    to its end), or None."""
    if stride <= 0 or stride % 4096 or len(points) > RESUME_MAX or list(points) != sorted(set(points)):
        return f"resume points: stride {stride} and {len(points)} points are not a valid table"
    for k, offset in enumerate(points, 1):
        try:
            tail = zlib.decompressobj(-wbits).decompress(payload[offset:])
        except zlib.error as exc:
            return f"resume point {k} (encoded offset {offset}) does not inflate: {exc}"
        if tail != image[k * stride :]:
            return f"resume point {k} (encoded offset {offset}) does not inflate to the image from byte {k * stride}"
    return None
