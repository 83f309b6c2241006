"""Update packages (docs/FORMAT.md v1): manifest TLVs, signing, parsing, verifying.

    manifest = Manifest(sequence=7, version="1.4.0", board="sim", chip_id=0, hw_revs=("A",),
                        image_size=len(img), image_sha256=sha256(img).digest())
    pkg = make_package(img, manifest_template, signer, encoding="zlib")
    parsed = parse_package(pkg)
    report = verify_package(parsed, [public_key])       # VerifyReport; .ok, .problems
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field, replace

from host_tools.errors import EXIT_VERIFY_FAILED, FotaError
from host_tools.image.delta import DELTA_WBITS, DeltaError, decode_delta, encode_delta
from host_tools.image.keys import PublicKey, Signer
from host_tools.image.resume import check_resume_points, deflate_resumable

MAGIC = b"FOTA"
FORMAT_VERSION = 1
HEADER_SIZE = 32
HEADER = struct.Struct("<4sHHI8sB11s")
SIG_ALG_ED25519 = 1
SIGNATURE_SIZE = 64
MANIFEST_MAX = 1024
ENCODINGS = {"raw": 0, "zlib": 1, "delta": 2}  # delta: zlib-deflated patch records (host_tools/image/delta.py)
ENCODING_DELTA = 2
DEFAULT_WBITS = 10  # 1 KiB window: cheap to inflate on a device

T_SEQUENCE, T_VERSION, T_BOARD, T_CHIP_ID, T_HW_REV = 0x01, 0x02, 0x03, 0x04, 0x05
T_IMAGE_SIZE, T_IMAGE_SHA256, T_ENCODING, T_ENCODED_SIZE, T_ENCODED_SHA256 = 0x06, 0x07, 0x08, 0x09, 0x0A
T_ZLIB_WBITS, T_MIN_VERSION, T_EXPIRES, T_CREATED, T_NOTES = 0x0B, 0x0C, 0x0D, 0x80, 0x81
T_KEY_LIST = 0x0E  # the root-signed key list (host_tools/image/keylist.py), critical
T_BASE = 0x0F  # a delta's base: base_size u32 | base_sha256 [32] | patch_size u32, critical (issue 20)
T_RESUME = 0x82  # zlib resume points: stride u32 | encoded offset u32 per point, informational ("Resume points")


class PackageError(FotaError):
    """A package that cannot be built or parsed."""


class VerifyError(FotaError):
    """A package that fails verification."""

    exit_code = EXIT_VERIFY_FAILED


@dataclass(frozen=True)
class Manifest:
    """The signed description of one update (docs/FORMAT.md, Manifest)."""

    sequence: int
    version: str
    board: str
    chip_id: int
    hw_revs: tuple[str, ...]
    image_size: int
    image_sha256: bytes
    encoding: int = 0
    encoded_size: int = 0
    encoded_sha256: bytes | None = None
    zlib_wbits: int | None = None
    min_version: str | None = None
    expires: int | None = None
    created: int | None = None
    notes: str | None = None
    key_list: bytes | None = None
    base_size: int | None = None  # delta: the exact image the patch applies to (its size and SHA-256)
    base_sha256: bytes | None = None
    patch_size: int | None = None  # delta: bytes of the inflated patch records
    resume_stride: int | None = None  # zlib: decoded bytes between two resume points
    resume_points: tuple[int, ...] = ()  # zlib: the encoded offset at which decoded k * stride starts (k = 1, 2, ...)
    unknown: tuple[tuple[int, bytes], ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        """The TLV bytes, in a fixed order."""
        out = bytearray()
        out += _tlv(T_SEQUENCE, struct.pack("<I", self.sequence))
        out += _tlv(T_VERSION, self.version.encode())
        out += _tlv(T_BOARD, self.board.encode())
        out += _tlv(T_CHIP_ID, struct.pack("<H", self.chip_id))
        for rev in self.hw_revs:
            out += _tlv(T_HW_REV, rev.encode())
        out += _tlv(T_IMAGE_SIZE, struct.pack("<I", self.image_size))
        out += _tlv(T_IMAGE_SHA256, self.image_sha256)
        out += _tlv(T_ENCODING, bytes([self.encoding]))
        out += _tlv(T_ENCODED_SIZE, struct.pack("<I", self.encoded_size or self.image_size))
        if self.encoded_sha256 is not None:
            out += _tlv(T_ENCODED_SHA256, self.encoded_sha256)
        if self.zlib_wbits is not None:
            out += _tlv(T_ZLIB_WBITS, bytes([self.zlib_wbits]))
        if self.min_version is not None:
            out += _tlv(T_MIN_VERSION, self.min_version.encode())
        if self.expires is not None:
            out += _tlv(T_EXPIRES, struct.pack("<I", self.expires))
        if self.key_list is not None:
            out += _tlv(T_KEY_LIST, self.key_list)
        if self.base_sha256 is not None:
            out += _tlv(T_BASE, struct.pack("<I", self.base_size or 0) + self.base_sha256 + struct.pack("<I", self.patch_size or 0))
        if self.created is not None:
            out += _tlv(T_CREATED, struct.pack("<I", self.created))
        if self.notes is not None:
            out += _tlv(T_NOTES, self.notes.encode())
        if self.resume_stride is not None:
            out += _tlv(T_RESUME, struct.pack(f"<{1 + len(self.resume_points)}I", self.resume_stride, *self.resume_points))
        for tag, value in self.unknown:
            out += _tlv(tag, value)
        return bytes(out)

    @property
    def encoding_name(self) -> str:
        return {v: k for k, v in ENCODINGS.items()}.get(self.encoding, f"unknown({self.encoding})")


@dataclass(frozen=True)
class Package:
    header: bytes
    manifest_bytes: bytes
    signature: bytes
    payload: bytes
    manifest: Manifest
    key_id: bytes

    @property
    def signed_bytes(self) -> bytes:
        return self.header + self.manifest_bytes

    def to_bytes(self) -> bytes:
        return self.header + self.manifest_bytes + self.signature + self.payload


def _tlv(tag: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise PackageError(f"manifest record 0x{tag:02x} is too long")
    return struct.pack("<BH", tag, len(value)) + value


def header_bytes(manifest_len: int, key: bytes) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, manifest_len, key, SIG_ALG_ED25519, b"\x00" * 11)


def encode_payload(image: bytes, encoding: str, wbits: int = DEFAULT_WBITS) -> bytes:
    if encoding == "raw":
        return image
    if encoding == "zlib":
        return deflate_resumable(image, wbits)[0]
    raise PackageError(f"unknown encoding {encoding!r} (raw or zlib)")


def make_package(image: bytes, manifest: Manifest, signer: Signer, *, encoding: str = "raw", wbits: int = DEFAULT_WBITS,
                 base: bytes | None = None) -> Package:
    """Stamp the sequence into the image, encode it, complete digests and sizes, sign header + manifest.

    The image's esp_app_desc_t.secure_version must be 0 (stamped here) or the sequence already.
    encoding "delta" needs `base`, the exact image the devices run (docs/FORMAT.md "Delta payloads").
    """
    from host_tools.image.build import secure_version, stamp_secure_version

    stamped = secure_version(image)
    if stamped not in (None, 0, manifest.sequence):
        raise PackageError(f"the image's secure_version is {stamped}, the package sequence {manifest.sequence}",
                           hint="they must be equal: rebuild with `fota build --sequence N` or sign with that sequence")
    if stamped is not None:
        image = stamp_secure_version(image, manifest.sequence)
    patch_size, stride, points = None, None, ()
    if encoding == "delta":
        if base is None:
            raise PackageError("a delta package needs the base image", hint="pass --base OLD.bin (or OLD.fota)")
        wbits = max(wbits, DELTA_WBITS)
        payload, patch_size = encode_delta(base, image, wbits)
    elif encoding == "zlib":
        payload, stride, points = deflate_resumable(image, wbits)
    else:
        payload = encode_payload(image, encoding, wbits)
    manifest = replace(
        manifest,
        image_size=len(image),
        image_sha256=hashlib.sha256(image).digest(),
        encoding=ENCODINGS[encoding],
        encoded_size=len(payload),
        encoded_sha256=hashlib.sha256(payload).digest() if encoding != "raw" else None,
        zlib_wbits=wbits if encoding != "raw" else None,
        base_size=len(base) if patch_size is not None and base is not None else None,
        base_sha256=hashlib.sha256(base).digest() if patch_size is not None and base is not None else None,
        patch_size=patch_size,
        resume_stride=stride,
        resume_points=points,
    )
    return sign_manifest(manifest, payload, signer)


def sign_manifest(manifest: Manifest, payload: bytes, signer: Signer) -> Package:
    body = manifest.encode()
    if len(body) > MANIFEST_MAX:
        raise PackageError(f"manifest is {len(body)} bytes; the cap is {MANIFEST_MAX}")
    kid = signer.public_key.key_id
    header = header_bytes(len(body), kid)
    signature = signer.sign(header + body)
    return Package(header, body, signature, payload, manifest, kid)


def parse_package(data: bytes) -> Package:
    """Split a package file into its parts and decode the manifest (no signature check)."""
    if len(data) < HEADER_SIZE:
        raise PackageError("file is shorter than a package header")
    magic, version, hsize, mlen, kid, alg, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PackageError("not a fota package (no FOTA magic)")
    if version != FORMAT_VERSION or hsize != HEADER_SIZE:
        raise PackageError(f"unsupported package format version {version} (header {hsize} bytes)")
    if alg != SIG_ALG_ED25519:
        raise PackageError(f"unknown signature algorithm {alg}")
    if not 0 < mlen <= MANIFEST_MAX:
        raise PackageError(f"manifest length {mlen} is outside 1..{MANIFEST_MAX}")
    end = HEADER_SIZE + mlen
    if len(data) < end + SIGNATURE_SIZE:
        raise PackageError("package is truncated before the end of its signature")
    body = data[HEADER_SIZE:end]
    return Package(data[:HEADER_SIZE], body, data[end : end + SIGNATURE_SIZE], data[end + SIGNATURE_SIZE :], decode_manifest(body), kid)


def decode_manifest(body: bytes) -> Manifest:
    fields: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(body):
        if pos + 3 > len(body):
            raise PackageError("manifest ends inside a record header")
        tag, length = struct.unpack_from("<BH", body, pos)
        value = body[pos + 3 : pos + 3 + length]
        if len(value) != length:
            raise PackageError(f"manifest record 0x{tag:02x} runs past the end")
        fields.setdefault(tag, []).append(value)
        pos += 3 + length

    def one(tag: int, required: bool = True) -> bytes | None:
        values = fields.get(tag)
        if not values:
            if required:
                raise PackageError(f"manifest lacks required record 0x{tag:02x}")
            return None
        if len(values) > 1:
            raise PackageError(f"manifest record 0x{tag:02x} appears twice")
        return values[0]

    def u32(tag: int, required: bool = True) -> int | None:
        v = one(tag, required)
        return None if v is None else struct.unpack("<I", v)[0]

    def text(tag: int, required: bool = True) -> str | None:
        v = one(tag, required)
        return None if v is None else v.decode()

    known = {T_SEQUENCE, T_VERSION, T_BOARD, T_CHIP_ID, T_HW_REV, T_IMAGE_SIZE, T_IMAGE_SHA256, T_ENCODING,
             T_ENCODED_SIZE, T_ENCODED_SHA256, T_ZLIB_WBITS, T_MIN_VERSION, T_EXPIRES, T_CREATED, T_NOTES,
             T_KEY_LIST, T_BASE, T_RESUME}
    try:
        wbits = one(T_ZLIB_WBITS, False)
        base = one(T_BASE, False)
        resume = one(T_RESUME, False)
        if resume is not None and (len(resume) < 4 or len(resume) % 4):
            raise PackageError(f"manifest record 0x{T_RESUME:02x} is {len(resume)} bytes, not 4 + 4 per point")
        table = struct.unpack(f"<{len(resume) // 4}I", resume) if resume is not None else ()
        if base is not None and len(base) != 40:
            raise PackageError(f"manifest record 0x{T_BASE:02x} is {len(base)} bytes, not 40")
        return Manifest(
            sequence=u32(T_SEQUENCE),
            version=text(T_VERSION),
            board=text(T_BOARD),
            chip_id=struct.unpack("<H", one(T_CHIP_ID))[0],
            hw_revs=tuple(v.decode() for v in fields.get(T_HW_REV, [])),
            image_size=u32(T_IMAGE_SIZE),
            image_sha256=one(T_IMAGE_SHA256),
            encoding=one(T_ENCODING)[0],
            encoded_size=u32(T_ENCODED_SIZE),
            encoded_sha256=one(T_ENCODED_SHA256, False),
            zlib_wbits=None if wbits is None else wbits[0],
            min_version=text(T_MIN_VERSION, False),
            expires=u32(T_EXPIRES, False),
            created=u32(T_CREATED, False),
            notes=text(T_NOTES, False),
            key_list=one(T_KEY_LIST, False),
            base_size=None if base is None else struct.unpack_from("<I", base)[0],
            base_sha256=None if base is None else base[4:36],
            patch_size=None if base is None else struct.unpack_from("<I", base, 36)[0],
            resume_stride=table[0] if table else None,
            resume_points=tuple(table[1:]),
            unknown=tuple((t, v) for t, vs in sorted(fields.items()) if t not in known for v in vs),
        )
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise PackageError(f"malformed manifest record: {exc}") from exc


@dataclass
class VerifyReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def decode_payload(package: Package, base: bytes | None = None) -> bytes:
    """The image the payload makes; a delta needs its `base` image."""
    m = package.manifest
    if m.encoding == ENCODING_DELTA:
        if base is None:
            raise VerifyError("a delta package is decoded against its base image (--base)")
        if len(base) != m.base_size or hashlib.sha256(base).digest() != m.base_sha256:
            raise VerifyError("the base image is not the one this delta names (size or SHA-256)")
        try:
            return decode_delta(base, package.payload, m.zlib_wbits or 15)
        except DeltaError as exc:
            raise VerifyError(str(exc)) from exc
    if m.encoding == 0:
        return package.payload
    if m.encoding == 1:
        try:
            return zlib.decompress(package.payload, m.zlib_wbits or 15)
        except zlib.error as exc:
            raise VerifyError(f"payload does not inflate: {exc}") from exc
    raise VerifyError(f"unknown payload encoding {m.encoding}")



def load_base(data: bytes) -> bytes:
    """A delta's base image from an app image file, or from the full package it was installed from (`*.fota`)."""
    if data[:4] != MAGIC:
        return data
    package = parse_package(data)
    if package.manifest.encoding == ENCODING_DELTA:
        raise DeltaError("the base must be a full image or a full package, not another delta")
    return decode_payload(package)

def _key_from_list(blob: bytes, trusted: list[PublicKey], kid: bytes, board: str, report: VerifyReport) -> PublicKey | None:
    """The signing key as the carried key list names it (the list verified by a trusted root)."""
    from host_tools.image.keylist import KeyListError, parse_key_list

    try:
        kl = parse_key_list(blob)
    except KeyListError as exc:
        report.problems.append(f"key list: {exc}")
        return None
    root = next((k for k in trusted if k.key_id == kl.root_id), None)
    if root is None or not kl.verify(root):
        report.problems.append(f"key list v{kl.version} is not signed by a trusted root (root id {kl.root_id.hex()})")
        return None
    report.notes.append(f"key list v{kl.version} signed by root {kl.root_id.hex()}")
    listed = next((e.key for e in kl.keys if e.key.key_id == kid), None)
    why = kl.allows(listed, board) if listed is not None else None
    if kid in kl.revoked or listed is None:
        why = f"key {kid.hex()} is {'revoked by' if kid in kl.revoked else 'not in'} key list v{kl.version}"
    if why:
        report.problems.append(why)
        return None
    return listed


def verify_package(package: Package, trusted: list[PublicKey], *, slot_size: int | None = None,
                   base: bytes | None = None) -> VerifyReport:
    """Signature, digests and sizes, and the image itself (as esp_image_verify would).

    A delta without its `base` image is checked up to the encoded digest only (noted).
    """
    from host_tools.esp.app_image import ImageError, parse_app_image

    report = VerifyReport()
    m = package.manifest
    key = next((k for k in trusted if k.key_id == package.key_id), None)
    if m.key_list is not None:
        key = _key_from_list(m.key_list, trusted, package.key_id, m.board, report)
    if key is None:
        if not report.problems:
            report.problems.append(f"signed by unknown key id {package.key_id.hex()}")
    elif not key.verify(package.signature, package.signed_bytes):
        report.problems.append("signature does not verify")
    else:
        report.notes.append(f"signature valid (key id {package.key_id.hex()})")
    if len(package.payload) != m.encoded_size:
        report.problems.append(f"payload is {len(package.payload)} bytes; the manifest says {m.encoded_size}")
    if m.encoded_sha256 is not None and hashlib.sha256(package.payload).digest() != m.encoded_sha256:
        report.problems.append("encoded payload SHA-256 does not match the manifest")
    if m.encoding == ENCODING_DELTA and base is None:
        report.notes.append(f"delta from base {(m.base_sha256 or b'').hex()[:16]}: image not rebuilt (no base given)")
        return report
    try:
        image = decode_payload(package, base)
    except VerifyError as exc:
        report.problems.append(str(exc))
        return report
    if len(image) != m.image_size or hashlib.sha256(image).digest() != m.image_sha256:
        report.problems.append("image size or SHA-256 does not match the manifest")
    if m.resume_stride is not None:
        problem = check_resume_points(package.payload, image, m.zlib_wbits or 15, m.resume_stride, m.resume_points)
        if problem:
            report.problems.append(problem)
        else:
            report.notes.append(f"{len(m.resume_points)} resume points, every {m.resume_stride} decoded bytes")
    if slot_size is not None and m.image_size > slot_size:
        report.problems.append(f"image of {m.image_size} bytes does not fit the {slot_size}-byte slot")
    try:
        parse_app_image(image, chip_id=m.chip_id)
        report.notes.append("app image valid (header, chip id, checksum, SHA-256)")
    except ImageError as exc:
        report.problems.append(str(exc))
    return report
