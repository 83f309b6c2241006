"""Key lists: an offline root key signs which release keys may sign packages, and which are revoked.

The operator keeps an editable, unsigned state file (`keylist.json`, beside the root key) and
signs a versioned binary key list from it (docs/FORMAT.md "Key lists"); packages carry the
signed list (manifest record 0x0E), devices keep the newest version they have seen:

    state = root_init(Path("keys/root.pem"))                  # root key + keys/keylist.json
    state.add(PublicKey.load(Path("keys/release.pub")), board="")
    state.revoke(old.key_id)
    blob = state.sign(FileSigner.load(Path("keys/root.pem")))  # version + 1; bytes for fota sign
    listed = parse_key_list(blob); listed.verify(root_public)   # what a device checks
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.errors import FotaError
from host_tools.image.keys import KeyError_, PublicKey, Signer, check_not_weak, generate_key

MAGIC = b"FKL1"
FIXED = struct.Struct("<4sI8sBB")  # magic, version, root key id, key count, revoked count
SIGNATURE_SIZE = 64
MAX_SIZE = 512  # firmware/fota/check/keylist.py MAX_SIZE
MAX_KEYS = 8
MAX_REVOKED = 16
BOARD_MAX = 32
STATE_NAME = "keylist.json"


class KeyListError(FotaError):
    """A key list that cannot be made, parsed or verified, or a key it does not allow."""


@dataclass(frozen=True)
class ListedKey:
    """A release key in a key list and the board it may sign for ("" = any board)."""

    key: PublicKey
    board: str = ""


@dataclass
class KeyList:
    """A key list: its version, its root's key id, the release keys and the revoked key ids."""

    version: int
    root_id: bytes
    keys: list[ListedKey] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)
    signature: bytes = b""

    def body(self) -> bytes:
        """The bytes the root signs (everything before the signature)."""
        if not self.keys or len(self.keys) > MAX_KEYS or len(self.revoked) > MAX_REVOKED:
            raise KeyListError(f"a key list holds 1..{MAX_KEYS} keys and at most {MAX_REVOKED} revoked ids")
        out = bytearray(FIXED.pack(MAGIC, self.version, self.root_id, len(self.keys), len(self.revoked)))
        for entry in self.keys:
            board = entry.board.encode()
            if len(board) > BOARD_MAX:
                raise KeyListError(f"board name {entry.board!r} is longer than {BOARD_MAX} bytes")
            out += entry.key.raw + bytes([len(board)]) + board
        for kid in self.revoked:
            out += kid
        return bytes(out)

    def to_bytes(self) -> bytes:
        blob = self.body() + self.signature
        if len(blob) > MAX_SIZE:
            raise KeyListError(f"key list is {len(blob)} bytes; devices take at most {MAX_SIZE}")
        return blob

    def verify(self, root: PublicKey) -> bool:
        return root.key_id == self.root_id and root.verify(self.signature, self.body())

    def allows(self, key: PublicKey, board: str) -> str | None:
        """None when `key` may sign packages for `board`; otherwise why not."""
        if key.key_id in self.revoked:
            return f"key {key.key_id.hex()} is revoked by key list v{self.version}"
        entry = next((e for e in self.keys if e.key.key_id == key.key_id), None)
        if entry is None:
            return f"key {key.key_id.hex()} is not in key list v{self.version}"
        if entry.board and entry.board != board:
            return f"key {key.key_id.hex()} may sign for board {entry.board!r} only, not {board!r}"
        return None


def parse_key_list(blob: bytes) -> KeyList:
    """Split a signed key list into its fields (no signature check: see KeyList.verify)."""
    if len(blob) < FIXED.size + SIGNATURE_SIZE or len(blob) > MAX_SIZE:
        raise KeyListError(f"a key list is {FIXED.size + SIGNATURE_SIZE}..{MAX_SIZE} bytes, not {len(blob)}")
    magic, version, root_id, count, nrev = FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise KeyListError("not a key list (no FKL1 magic)")
    end = len(blob) - SIGNATURE_SIZE
    pos, keys = FIXED.size, []
    for _ in range(count):
        if pos + 33 > end:
            raise KeyListError("key list ends inside a key entry")
        raw, blen = blob[pos : pos + 32], blob[pos + 32]
        board = blob[pos + 33 : pos + 33 + blen].decode()
        keys.append(ListedKey(PublicKey(raw), board))
        pos += 33 + blen
    if pos + 8 * nrev != end:
        raise KeyListError("key list length does not match its counts")
    revoked = [blob[pos + 8 * i : pos + 8 * i + 8] for i in range(nrev)]
    return KeyList(version, root_id, keys, revoked, blob[end:])


@dataclass
class KeyListState:
    """The operator's editable key list (keylist.json); `sign` makes the next version."""

    path: Path
    root_id: bytes
    version: int = 0  # the last version signed
    keys: list[ListedKey] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> KeyListState:
        try:
            doc = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise KeyListError(f"no key list state at {path}", hint="fota keys root-init ROOT.pem") from exc
        except ValueError as exc:
            raise KeyListError(f"{path}: not a key list state file ({exc})") from exc
        return cls(
            Path(path), bytes.fromhex(doc["root"]), int(doc.get("version", 0)),
            [ListedKey(PublicKey(bytes.fromhex(k["public"])), k.get("board", "")) for k in doc.get("keys", [])],
            [bytes.fromhex(r) for r in doc.get("revoked", [])],
        )

    def save(self) -> None:
        doc = {
            "root": self.root_id.hex(), "version": self.version,
            "keys": [{"public": k.key.raw.hex(), "id": k.key.key_id.hex(), "board": k.board} for k in self.keys],
            "revoked": [r.hex() for r in self.revoked],
        }
        self.path.write_text(json.dumps(doc, indent=2) + "\n")

    def add(self, key: PublicKey, board: str = "") -> None:
        check_not_weak(key, "release key")
        if key.key_id in self.revoked:
            raise KeyListError(f"key {key.key_id.hex()} was revoked; make a new key")
        self.keys = [k for k in self.keys if k.key.key_id != key.key_id] + [ListedKey(key, board)]

    def revoke(self, kid: bytes) -> None:
        self.keys = [k for k in self.keys if k.key.key_id != kid]
        if kid not in self.revoked:
            self.revoked.append(kid)

    def sign(self, root: Signer) -> bytes:
        """The next version of the list, signed by the root; the state file records the version."""
        if root.public_key.key_id != self.root_id:
            raise KeyListError(f"{self.path} belongs to root {self.root_id.hex()}, not {root.public_key.key_id.hex()}")
        kl = KeyList(self.version + 1, self.root_id, list(self.keys), list(self.revoked))
        kl.signature = root.sign(kl.body())
        blob = kl.to_bytes()
        self.version = kl.version
        self.save()
        return blob


def root_init(root_path: Path, passphrase: bytes | None = None) -> KeyListState:
    """A new root key (keep it offline) and an empty key-list state beside it."""
    signer = generate_key(root_path, passphrase)
    state_path = root_path.with_name(STATE_NAME)
    if state_path.exists():
        raise KeyError_(f"{state_path} exists already")
    state = KeyListState(state_path, signer.public_key.key_id)
    state.save()
    return state
