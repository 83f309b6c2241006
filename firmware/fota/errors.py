"""Refusal codes of the fota device agent, and the error that carries them.

Every refusal in docs/FORMAT.md "Device checks" has its own small integer code.
The code travels in `OtaError.code` (and `args[0]`), is logged by name, and is
reported to the server as an LwM2M Object 5 "update result":

    from fota import errors
    try:
        m = manifest.check(signed, signature, KEYS, device, slot_size)
    except errors.OtaError as e:
        log(errors.name(e.code))                    # "ROLLBACK"
        report(errors.lwm2m_result(e.code))          # 8 (update failed)

Codes 1..15 are the manifest checks, in FORMAT.md order; 16 and up belong to
the update agent (download, digest, flash and boot failures).
"""

from .compat import const


# docs/FORMAT.md, "Device checks, in order" (the check number is on the right).
BAD_HEADER = const(1)  # 1: magic, header_size, sig_alg, short header
FORMAT_VERSION = const(2)  # 1: format_version is not 1
MANIFEST_SIZE = const(3)  # 2: manifest_len outside 1..1024
UNKNOWN_KEY = const(4)  # 3: key_id not among the trusted keys
BAD_SIGNATURE = const(5)  # 4: Ed25519 over header + manifest fails
MALFORMED = const(6)  # 5: TLV framing, missing / duplicate record, value size
UNSUPPORTED_FIELD = const(7)  # 5: unknown critical record type (0x00..0x7F)
WRONG_BOARD = const(8)  # 6: board name
WRONG_CHIP = const(9)  # 6: chip id
WRONG_HW_REV = const(10)  # 6: hardware revision
ROLLBACK = const(11)  # 7: sequence not above the stored floor
EXPIRED = const(12)  # 8: expires is in the past
MIN_VERSION = const(13)  # 8: the running version is below min_version
TOO_BIG = const(14)  # 9: image or encoded payload larger than the slot
BAD_ENCODING = const(15)  # 9: unknown encoding or bad encoding parameters

# The update agent (firmware/README.md says when each one happens).
DIGEST_MISMATCH = const(16)  # image re-read from flash does not match image_sha256
ENCODED_DIGEST = const(17)  # the encoded (zlib) stream does not match encoded_sha256
UNCONFIRMED = const(18)  # the running image is still PENDING_VERIFY: finish its self-test first
BAD_IMAGE = const(19)  # first chunk is no app image for this chip, or set_boot() refused it (-5379)
CHUNK_RANGE = const(20)  # a chunk beyond the declared size, or not on a chunk boundary
FLASH = const(21)  # a flash operation failed (OSError from esp32.Partition)
SELF_TEST_FAILED = const(22)  # the new image's self-test reported a failure
SELF_TEST_TIMEOUT = const(23)  # the new image reset before confirming (watchdog, power, crash)
NO_SLOT = const(24)  # no OTA slot to write, or the target would be the running slot
INFLATE = const(25)  # the zlib stream is corrupt or longer than image_size
CANCELLED = const(26)  # the server or the application cancelled the update
OUT_OF_MEMORY = const(27)  # MemoryError while updating
CONNECTION_LOST = const(28)  # the transport gave up after its bounded retries
INCOMPLETE = const(29)  # finish() before every chunk arrived
BUSY = const(30)  # an update is already in progress
# Anti-rollback and the key hierarchy (issue 14; docs/FORMAT.md "Key lists").
SECURE_VERSION = const(31)  # the image's esp_app_desc_t secure_version is not the manifest's sequence
ROLLED_BACK_BEFORE = const(32)  # this image (by SHA-256) rolled back on this device: not installed again
KEY_LIST = const(33)  # key list malformed or not signed by a root key this firmware trusts
KEY_LIST_OLD = const(34)  # key list older than the newest seen (or none after one was seen)
KEY_REVOKED = const(35)  # the package's signing key is revoked by its key list
WEAK_KEY = const(36)  # a trusted or listed public key is of small order (or no curve point)
# Hostile input and faults (issue 12).
DEADLINE = const(37)  # the attempt ran past its overall deadline (slow retrieval); retried after the back-off
FAULT = const(38)  # an exception escaped a step of the device's service loop: logged, the link resumes
# Delta updates (issue 20; docs/FORMAT.md "Delta payloads").
BASE_MISMATCH = const(39)  # a delta's base is not the running image (SHA-256): refused before any erase
PATCH = const(40)  # the decoded patch is corrupt: reads outside the base, output beyond image_size
# Sensors on batteries (issue 22; firmware/README.md "Deep-sleep duty cycles").
POWER = const(41)  # the application's power check is below the configured level: install deferred, download not started

# LwM2M Object 5, resource 5 "Update Result" (OMA LwM2M core, appendix E.6).
LWM2M_INITIAL = const(0)
LWM2M_SUCCESS = const(1)
LWM2M_NO_FLASH = const(2)  # not enough flash memory for the new package
LWM2M_NO_RAM = const(3)  # out of RAM during download
LWM2M_CONNECTION_LOST = const(4)  # connection lost during download
LWM2M_INTEGRITY = const(5)  # integrity check failure
LWM2M_UNSUPPORTED_TYPE = const(6)  # unsupported package type
LWM2M_INVALID_URI = const(7)
LWM2M_FAILED = const(8)  # firmware update failed
LWM2M_UNSUPPORTED_PROTOCOL = const(9)
LWM2M_CANCELLED = const(10)
LWM2M_DEFERRED = const(11)

# Names indexed by code (index 0 is unused).
_NAMES = (
    "OK",
    "BAD_HEADER",
    "FORMAT_VERSION",
    "MANIFEST_SIZE",
    "UNKNOWN_KEY",
    "BAD_SIGNATURE",
    "MALFORMED",
    "UNSUPPORTED_FIELD",
    "WRONG_BOARD",
    "WRONG_CHIP",
    "WRONG_HW_REV",
    "ROLLBACK",
    "EXPIRED",
    "MIN_VERSION",
    "TOO_BIG",
    "BAD_ENCODING",
    "DIGEST_MISMATCH",
    "ENCODED_DIGEST",
    "UNCONFIRMED",
    "BAD_IMAGE",
    "CHUNK_RANGE",
    "FLASH",
    "SELF_TEST_FAILED",
    "SELF_TEST_TIMEOUT",
    "NO_SLOT",
    "INFLATE",
    "CANCELLED",
    "OUT_OF_MEMORY",
    "CONNECTION_LOST",
    "INCOMPLETE",
    "BUSY",
    "SECURE_VERSION",
    "ROLLED_BACK_BEFORE",
    "KEY_LIST",
    "KEY_LIST_OLD",
    "KEY_REVOKED",
    "WEAK_KEY",
    "DEADLINE",
    "FAULT",
    "BASE_MISMATCH",
    "PATCH",
    "POWER",
)

# LwM2M update result indexed by code: one byte each, index 0 unused.
# Header / format / board / record errors say "unsupported package type" (6),
# key and signature errors "integrity check failure" (5), a package larger
# than the slot "not enough flash" (2), and policy refusals (rollback, expiry,
# minimum version) "update failed" (8).
# Agent codes: digests and corrupt streams are integrity failures (5), a bad
# image an unsupported package (6), memory (3), cancel (10), link (4), the rest 8.
# Issue 14: secure_version and key-list refusals are integrity failures (5), a package that
# rolled back here before "update failed" (8). Issue 12: a deadline is a lost connection (4), a fault 8.
# Issue 20: a delta for another base is an unsupported package (6), a corrupt patch an integrity failure (5).
# Issue 22: a power deferral is "deferred" (11): no failure, the update goes on when the power check passes.
_LWM2M = (
    b"\x00\x06\x06\x06\x05\x05\x06\x06\x06\x06\x06\x08\x08\x08\x02\x06"
    b"\x05\x05\x08\x06\x08\x08\x08\x08\x08\x05\x0a\x03\x04\x08\x08"
    b"\x05\x08\x05\x05\x05\x05"
    b"\x04\x08"
    b"\x06\x05"
    b"\x0b"
)


class OtaError(Exception):
    """A refused or failed update; `code` is one of the constants above.

    `args[0]` is the code as well, so `str(e)` is the number: cheap to log and
    to send. Use `name(e.code)` for a readable form.
    """

    def __init__(self, code):
        super().__init__(code)
        self.code = code


# The constant's name for a code ("BAD_SIGNATURE"); "E<code>" for a code this
# table does not know (the update agent's own codes name themselves).
def name(code):
    if isinstance(code, int) and 0 < code < len(_NAMES):
        return _NAMES[code]
    return "E" + str(code)


# The LwM2M Object 5 update result that reports a code; codes this table does
# not know map to "update failed" (8).
def lwm2m_result(code):
    if isinstance(code, int) and 0 < code < len(_LWM2M):
        return _LWM2M[code]
    return LWM2M_FAILED
