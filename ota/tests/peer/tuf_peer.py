"""python-tuf, the TUF reference implementation, as the peer of vigil's TUF code in tests.

    tuf_peer.py write PLAN.json OUT    a repository written with python-tuf's Metadata API
    tuf_peer.py read REPO NAME...      python-tuf's client (ngclient) on a repository

`write` takes a plan (JSON):

    {"keytype": "ed25519" | "ecdsa" | "rsa", "consistent": true, "rotate": false,
     "targets": [{"name": "models/people-1.0.0.tar", "file": "/path", "custom": {...}}],
     "roles": [{"name": "team", "paths": ["models/people-*"], "terminating": false,
                "keys": 2, "threshold": 2, "sign_with": 2, "delegated_by": "targets",
                "targets": [...]}],
     "custom_keyid": false}

and writes OUT/metadata/ (N.root.json, N.targets.json or targets.json, ...) and OUT/targets/
(`dir/<sha256>.name` under consistent snapshots, `dir/name` otherwise). With `rotate`, the root
is rotated twice (new root key, then two root keys with threshold 2, the timestamp key replaced
on the way). A role's `sign_with` below its threshold leaves it under-signed on purpose. With
`custom_keyid`, root version 2 names the targets key by an id that is not the hash of the key
(python-tuf accepts that). The device ships OUT/metadata/1.root.json.

`read` bootstraps from REPO/metadata/1.root.json, refreshes, and prints one JSON object: for each
name, what python-tuf resolves it to ({"length", "sha256", "custom"}, after downloading it and
checking it) or null, or {"error": ...} when the search fails. The fetcher reads REPO's files
directly: what is checked is the repository's layout and metadata, not HTTP.
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone

from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    MetaFile,
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

TOP = ("root", "targets", "snapshot", "timestamp")


def expires(days):
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


def new_signer(keytype):
    return {
        "ed25519": CryptoSigner.generate_ed25519,
        "ecdsa": CryptoSigner.generate_ecdsa,
        "rsa": CryptoSigner.generate_rsa,
    }[keytype]()


def with_keyid(signer, keyid):
    """The same private key, known by another key id."""
    k = signer.public_key
    public = SSlibKey(keyid, k.keytype, k.scheme, k.keyval)
    return CryptoSigner(signer._private_key, public)


class Writer:
    def __init__(self, plan, out):
        self.plan = plan
        self.out = out
        self.consistent = plan.get("consistent", True)
        self.keytype = plan.get("keytype", "ed25519")
        self.meta_dir = os.path.join(out, "metadata")
        self.targets_dir = os.path.join(out, "targets")
        os.makedirs(self.meta_dir, exist_ok=True)
        os.makedirs(self.targets_dir, exist_ok=True)
        self.signers = {role: [new_signer(self.keytype)] for role in TOP}
        self.root = Metadata(Root(expires=expires(365), consistent_snapshot=self.consistent))
        for role in TOP:
            for s in self.signers[role]:
                self.root.signed.add_key(s.public_key, role)
        self.role_signers = {}

    def write_root(self, signers):
        self.root.signatures.clear()
        for s in signers:
            self.root.sign(s, append=True)
        v = self.root.signed.version
        self.root.to_file(os.path.join(self.meta_dir, f"{v}.root.json"), JSONSerializer(compact=False))

    def rotate(self):
        # Version 2: a new root key and a new timestamp key, signed by the old and the new root key.
        old = self.signers["root"]
        new = [new_signer(self.keytype)]
        self.replace_keys("root", new)
        self.replace_keys("timestamp", [new_signer(self.keytype)])
        self.root.signed.version += 1
        self.write_root(old + new)
        # Version 3: two root keys, threshold 2.
        old = self.signers["root"]
        new = [new_signer(self.keytype), new_signer(self.keytype)]
        self.replace_keys("root", new)
        self.root.signed.roles["root"].threshold = 2
        self.root.signed.version += 1
        self.write_root(old + new)

    def custom_keyid(self):
        # Version N+1: the targets key listed under an id that is not the hash of the key.
        old = self.signers["root"]
        renamed = [with_keyid(self.signers["targets"][0], "ab" * 32)]
        self.replace_keys("targets", renamed)
        self.root.signed.version += 1
        self.write_root(old)

    def replace_keys(self, role, signers):
        for s in self.signers[role]:
            self.root.signed.revoke_key(s.public_key.keyid, role)
        self.signers[role] = signers
        for s in signers:
            self.root.signed.add_key(s.public_key, role)

    def add_target(self, targets, t):
        with open(t["file"], "rb") as f:
            data = f.read()
        info = TargetFile.from_data(t["name"], data, ["sha256"])
        if "custom" in t:
            info.unrecognized_fields["custom"] = t["custom"]
        targets.targets[t["name"]] = info
        directory, _, base = t["name"].rpartition("/")
        if self.consistent:
            base = f"{info.hashes['sha256']}.{base}"
        path = os.path.join(self.targets_dir, directory, base)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def metadata_name(self, role, version):
        return f"{version}.{role}.json" if self.consistent else f"{role}.json"

    def write(self):
        self.write_root(self.signers["root"])
        if self.plan.get("rotate"):
            self.rotate()
        if self.plan.get("custom_keyid"):
            self.custom_keyid()
        top = Metadata(Targets(expires=expires(90)))
        for t in self.plan.get("targets", []):
            self.add_target(top.signed, t)
        roles = {"targets": top}
        for r in self.plan.get("roles", []):
            parent = roles[r.get("delegated_by", "targets")]
            if parent.signed.delegations is None:
                parent.signed.delegations = Delegations(keys={}, roles={})
            signers = [new_signer(self.keytype) for _ in range(r.get("keys", 1))]
            self.role_signers[r["name"]] = signers
            parent.signed.delegations.roles[r["name"]] = DelegatedRole(
                r["name"], [], r.get("threshold", 1), r.get("terminating", False), paths=r["paths"]
            )
            for s in signers:
                parent.signed.add_key(s.public_key, r["name"])
            md = Metadata(Targets(expires=expires(90)))
            for t in r.get("targets", []):
                self.add_target(md.signed, t)
            roles[r["name"]] = md
        snapshot = Metadata(Snapshot(expires=expires(7)))
        for name, md in roles.items():
            signers = self.signers["targets"] if name == "targets" else self.role_signers[name]
            if name != "targets":
                plan = next(r for r in self.plan["roles"] if r["name"] == name)
                signers = signers[: plan.get("sign_with", len(signers))]
            for s in signers:
                md.sign(s, append=True)
            md.to_file(
                os.path.join(self.meta_dir, self.metadata_name(name, md.signed.version)),
                JSONSerializer(compact=False),
            )
            snapshot.signed.meta[f"{name}.json"] = MetaFile(version=md.signed.version)
        snapshot.sign(self.signers["snapshot"][0])
        snapshot.to_file(os.path.join(self.meta_dir, self.metadata_name("snapshot", 1)), JSONSerializer(compact=False))
        timestamp = Metadata(Timestamp(expires=expires(1)))
        timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
        timestamp.sign(self.signers["timestamp"][0])
        timestamp.to_file(os.path.join(self.meta_dir, "timestamp.json"), JSONSerializer(compact=False))


class DirFetcher(FetcherInterface):
    """Serves http://repo/<path> from a directory; a missing file is a 404."""

    def __init__(self, root):
        self.root = root

    def _fetch(self, url):
        path = os.path.join(self.root, url.split("://repo/", 1)[1])
        if not os.path.isfile(path):
            raise DownloadHTTPError(f"{url}: not found", 404)
        with open(path, "rb") as f:
            yield f.read()


def read(repo, names):
    work = tempfile.mkdtemp()
    os.makedirs(os.path.join(work, "metadata"))
    try:
        with open(os.path.join(repo, "metadata", "1.root.json"), "rb") as f:
            root = f.read()
        updater = Updater(
            metadata_dir=os.path.join(work, "metadata"),
            metadata_base_url="http://repo/metadata/",
            target_dir=os.path.join(work, "targets"),
            target_base_url="http://repo/targets/",
            fetcher=DirFetcher(repo),
            bootstrap=root,
        )
        os.makedirs(os.path.join(work, "targets"), exist_ok=True)
        updater.refresh()
        out = {}
        for name in names:
            try:
                info = updater.get_targetinfo(name)
                if info is None:
                    out[name] = None
                    continue
                path = updater.download_target(info)
                with open(path, "rb") as f:
                    data = f.read()
                out[name] = {
                    "length": info.length,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "custom": info.unrecognized_fields.get("custom"),
                }
            except Exception as e:  # noqa: BLE001 - reported to the test, which decides
                out[name] = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out, sort_keys=True))
    finally:
        shutil.rmtree(work)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "write":
        with open(sys.argv[2]) as f:
            plan = json.load(f)
        Writer(plan, sys.argv[3]).write()
    elif len(sys.argv) >= 3 and sys.argv[1] == "read":
        read(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
