#!/usr/bin/env python3
"""Verifies a moat audit export bundle without any of moat's code.

Written from docs/audit-format.md alone: RFC 6962 Merkle hashing, C2SP signed notes with
Ed25519 (the `cryptography` package), HMAC-SHA256 from the standard library.

usage: verify_audit_bundle.py BUNDLE [--key VKEY] [--hmac-key HEX] [--checkpoint FILE ...]

Prints a JSON report; exits 0 if the bundle verifies, 1 if it does not, 2 on bad usage.
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "moat-audit-bundle/v1"
ENTRY_VERSION = 2


class Broken(Exception):
    def __init__(self, seq, what):
        super().__init__(what)
        self.seq = seq
        self.what = what


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class Tree:
    """The roots of the perfect subtrees of an append-only RFC 6962 tree, left to right."""

    def __init__(self):
        self.size = 0
        self.stack = []  # (hash, leaves)

    def append(self, leaf: bytes):
        self.stack.append((leaf, 1))
        self.size += 1
        while len(self.stack) >= 2 and self.stack[-1][1] == self.stack[-2][1]:
            (right, n), (left, _) = self.stack.pop(), self.stack.pop()
            self.stack.append((node_hash(left, right), 2 * n))

    def root(self) -> bytes:
        if not self.stack:
            return hashlib.sha256(b"").digest()
        r = self.stack[-1][0]
        for h, _ in reversed(self.stack[:-1]):
            r = node_hash(h, r)
        return r


class Verifier:
    """A C2SP signed-note verifier key: name+hex(key id)+base64(0x01 || Ed25519 public key)."""

    def __init__(self, vkey: str):
        name, key_id, b64 = vkey.strip().split("+", 2)
        raw = base64.b64decode(b64, validate=True)
        if len(raw) != 33 or raw[0] != 0x01:
            raise ValueError("not an Ed25519 verifier key")
        self.name = name
        self.key_id = bytes.fromhex(key_id)
        if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != self.key_id:
            raise ValueError("the key id does not match the key")
        self.key = Ed25519PublicKey.from_public_bytes(raw[1:])

    def open(self, note: str) -> str:
        """The signed text of `note` if one of its signatures is ours."""
        cut = note.rfind("\n\n")
        if cut < 0:
            raise Broken(None, "checkpoint: not a signed note")
        text, sigs = note[: cut + 1], note[cut + 2 :]
        for line in sigs.split("\n"):
            if not line.startswith("\u2014 "):
                continue
            name, _, b64 = line[2:].rpartition(" ")
            try:
                sig = base64.b64decode(b64, validate=True)
            except ValueError:
                continue
            if name != self.name or sig[:4] != self.key_id:
                continue
            try:
                self.key.verify(sig[4:], text.encode())
            except InvalidSignature:
                raise Broken(None, "checkpoint: the signature does not verify")
            return text
        raise Broken(None, "checkpoint: not signed by the key")


def parse_checkpoint(v: Verifier, note: str):
    lines = v.open(note).split("\n")
    if len(lines) < 4 or lines[0] != v.name:
        raise Broken(None, "checkpoint: of another log")
    size = int(lines[1])
    root = base64.b64decode(lines[2], validate=True)
    return size, root


def parse_ranges(text):
    """A retention record's `pruned`: "1-5,7" -> [(1, 5), (7, 7)], ascending and disjoint."""
    out = []
    for part in text.split(",") if text else []:
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        if lo < 1 or hi < lo or (out and lo <= out[-1][1] + 1):
            raise ValueError(f"bad sequence ranges {text!r}")
        out.append((lo, hi))
    return out


def first_unjustified(pruned, named, limit):
    """The first pruned seq not named by a retention record at seq <= limit, or None."""
    cover = sorted(r for seq, ranges in named if seq <= limit for r in ranges)
    covered = set()
    for lo, hi in cover:
        covered.update(range(lo, hi + 1))
    for seq in pruned:
        if seq not in covered:
            return seq
    return None


def verify(path, vkey=None, hmac_key=None, extra=()):
    report = {"ok": False, "checked": 0, "hmacs_checked": 0, "checkpoints_checked": 0,
              "key_pinned": vkey is not None, "first_bad_seq": None, "problem": None}
    with open(path, "rb") as f:
        header = json.loads(f.readline())
        if header.get("format") != FORMAT:
            raise SystemExit(f"{path}: not a {FORMAT} bundle")
        v = Verifier(vkey or header["verifier_key"])
        if v.name != header["origin"]:
            raise Broken(None, "the key is for another log")
        trail = header["trail"]
        roots = {}

        def add_checkpoint(note):
            size, root = parse_checkpoint(v, note)
            if roots.setdefault(size, root) != root:
                raise Broken(None, f"two signed checkpoints of size {size} with different roots (split view)")
            report["checkpoints_checked"] += 1

        for note in extra:
            add_checkpoint(note)
        tree = Tree()
        pruned = []  # seqs present only as leaf hashes
        named = []  # (seq of a retention record, the ranges it names)
        for raw in f:
            line = json.loads(raw)
            if "checkpoint" in line:
                if tree.size:
                    raise Broken(None, "a checkpoint after the records")
                add_checkpoint(line["checkpoint"])
                continue
            seq = line["seq"]
            if seq != tree.size + 1:
                raise Broken(tree.size + 1, f"record {tree.size + 1} is missing (next is {seq})")
            if line.get("pruned") is True:
                leaf = bytes.fromhex(line["leaf_hash"])
                if len(leaf) != 32:
                    raise Broken(seq, "the pruned record's leaf hash is not 32 bytes")
                pruned.append(seq)
                tree.append(leaf)
                if tree.size in roots and roots[tree.size] != tree.root():
                    raise Broken(seq, f"the root at size {tree.size} differs from the signed checkpoint (history rewritten)")
                continue
            entry = line["entry"].encode("utf-8")
            leaf = leaf_hash(entry)
            if leaf.hex() != line["leaf_hash"]:
                raise Broken(seq, "the entry does not hash to its leaf hash (edited)")
            fields = json.loads(entry)
            if fields.get("v") != ENTRY_VERSION or fields.get("trail") != trail or fields.get("seq") != seq:
                raise Broken(seq, "the entry's version, trail or seq do not match its place")
            if hmac_key is not None:
                mac = hmac.new(hmac_key, entry, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(mac, line["hmac"]):
                    raise Broken(seq, "HMAC does not match")
                report["hmacs_checked"] += 1
            if fields.get("action") == "audit.retention" and fields.get("category") == "system":
                d = fields["details"]
                ranges = parse_ranges(d["pruned"])
                if sum(hi - lo + 1 for lo, hi in ranges) != d["count"]:
                    raise Broken(seq, "a retention record whose count differs from the records it names")
                if ranges and ranges[-1][1] >= seq:
                    raise Broken(seq, "the retention record names a record at or after itself")
                named.append((seq, ranges))
            tree.append(leaf)
            report["checked"] = tree.size
            if tree.size in roots and roots[tree.size] != tree.root():
                raise Broken(seq, f"the root at size {tree.size} differs from the signed checkpoint (history rewritten)")
        if roots and max(roots) > tree.size:
            raise Broken(tree.size + 1, f"a signed checkpoint covers {max(roots)} records but the bundle holds {tree.size}")
        checkpointed = max(roots) if roots else 0
        bad = first_unjustified(pruned, named, checkpointed)
        if bad is not None:
            if first_unjustified(pruned, named, float("inf")) == bad:
                raise Broken(bad, f"record {bad} was removed but no retention record names it")
            raise Broken(bad, f"record {bad} was removed by a retention record that no signed checkpoint covers")
        if header["size"] != tree.size:
            raise Broken(tree.size + 1, f"the header announces {header['size']} records but the bundle holds {tree.size}")
        report["ok"] = True
        report["root"] = tree.root().hex()
        report["checkpointed"] = checkpointed
        report["pruned"] = len(pruned)
        return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle")
    p.add_argument("--key", help="verifier key to pin")
    p.add_argument("--hmac-key", help="the trail's HMAC key, hex")
    p.add_argument("--checkpoint", action="append", default=[], help="a checkpoint note obtained elsewhere")
    a = p.parse_args()
    extra = []
    for c in a.checkpoint:
        with open(c) as f:
            extra.append(f.read())
    key = bytes.fromhex(a.hmac_key) if a.hmac_key else None
    try:
        report = verify(a.bundle, a.key, key, extra)
    except Broken as b:
        report = {"ok": False, "first_bad_seq": b.seq, "problem": b.what}
    except (ValueError, KeyError, TypeError) as e:
        report = {"ok": False, "first_bad_seq": None, "problem": f"malformed bundle: {e!r}"}
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
