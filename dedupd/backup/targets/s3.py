"""S3 (and S3-compatible stores) through botocore: one plain PutObject per chunk.

No multipart upload: a chunk is at most 5 GiB (PutObject's limit), which keeps
every object self-contained for a by-hand restore. Each PUT carries the chunk's
SHA-256 twice: as ChecksumSHA256 (the store verifies the body on arrival) and as
user metadata `sha256` (hex), which HEAD returns on every S3-compatible store.
botocore's own retries are off: dedupd's retry wrapper does backoff and gives up
with exit 75.
"""

from __future__ import annotations

import base64
import logging
from typing import IO, Any

import botocore.exceptions as bex
import botocore.session
from botocore.config import Config as BotoConfig

from dedupd.backup.targets import (
    COLD_CLASSES,
    NoCredentials,
    ObjectInfo,
    TargetError,
    Transient,
    check_folder,
)
from dedupd.config import TargetConfig

READ = 1024 * 1024
# botocore logs "Found credentials in ..." at INFO on every run: noise in our logs.
logging.getLogger("botocore").setLevel(logging.WARNING)
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
                    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}
# Where botocore looks (docs/backup-layout.md, "S3 credentials"), for the error.
CREDENTIALS_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
                    "(for the daemon: a systemd drop-in or /etc/dedupd/environment), or "
                    "give them in ~/.aws/credentials (AWS_PROFILE picks a profile); see "
                    "docs/backup-layout.md, \"S3 credentials\"")
_NETWORK = (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
            bex.ConnectTimeoutError, bex.ConnectionError, bex.HTTPClientError)


class S3Target:
    wants_md5 = False

    def __init__(self, cfg: TargetConfig) -> None:
        self.bucket = cfg.bucket
        self.prefix = cfg.prefix
        where = cfg.endpoint_url or f"s3 ({cfg.region})"
        self.description = f"s3://{cfg.bucket}/{cfg.prefix} at {where}"
        # botocore directly: boto3 adds nothing used here but ~0.1 s of imports
        # on every run (s3transfer, resources).
        try:
            self.client: Any = self._client(cfg)
        except (bex.ProfileNotFound, bex.PartialCredentialsError) as e:
            raise NoCredentials(f"{self.description}: {e}; {CREDENTIALS_HELP}") from None

    @staticmethod
    def _client(cfg: TargetConfig) -> Any:
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
            config=BotoConfig(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=min(cfg.timeout_seconds, 30.0),
                read_timeout=cfg.timeout_seconds,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3=_s3_options(cfg)))

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _call(self, op: str, key: str, **kw: Any) -> Any:
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kw)
        except _NETWORK as e:
            raise Transient(f"{self.description}: {e}") from None
        except (bex.NoCredentialsError, bex.PartialCredentialsError) as e:
            raise NoCredentials(f"{self.description}: {e}; {CREDENTIALS_HELP}") from None
        except bex.ClientError as e:
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            msg = f"{op} {key}: {code or status} {err.get('Message', '')}".strip()
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                raise Transient(msg) from None
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise TargetError(f"{self.description}: {msg}") from None

    def put(self, key: str, file: IO[bytes], size: int, sha256: str, md5: str | None,
            storage_class: str) -> None:
        self._call("put_object", key, Key=self._k(key), Body=file, ContentLength=size,
                   ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                   StorageClass=storage_class, Metadata={"sha256": sha256})

    def head(self, key: str) -> ObjectInfo | None:
        try:
            h = self._call("head_object", key, Key=self._k(key), ChecksumMode="ENABLED")
        except FileNotFoundError:
            return None
        sha = (h.get("Metadata") or {}).get("sha256")
        native = h.get("ChecksumSHA256")
        if native and "-" not in native:  # a composite (multipart) checksum is no digest
            sha = base64.b64decode(native).hex()
        cls = h.get("StorageClass") or "STANDARD"
        return ObjectInfo(key, int(h["ContentLength"]), sha, None, cls,
                          _restore_state(cls, h.get("Restore")))

    def get(self, key: str, out: IO[bytes]) -> None:
        try:
            r = self._call("get_object", key, Key=self._k(key))
        except FileNotFoundError:
            raise TargetError(f"{self.description}: {key}: no such object") from None
        body = r["Body"]
        try:
            while True:
                b = body.read(READ)
                if not b:
                    break
                out.write(b)
        except _NETWORK as e:
            raise Transient(f"download {key}: {e}") from None
        finally:
            body.close()

    def _list(self, prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Prefix": self._k(prefix)}
            if token:
                kw["ContinuationToken"] = token
            r = self._call("list_objects_v2", prefix, **kw)
            for o in r.get("Contents", []):
                k = o["Key"][len(self.prefix):]
                cls = o.get("StorageClass") or "STANDARD"
                out.append(ObjectInfo(k, int(o["Size"]), None, None, cls))
            if not r.get("IsTruncated"):
                return out
            token = r.get("NextContinuationToken")

    def list(self, prefix: str, checksums: bool = False) -> list[ObjectInfo]:
        objs = self._list(prefix)
        if not checksums:
            return objs
        # A listing carries no user metadata: one HEAD per object.
        return [h for h in (self.head(o.key) for o in objs) if h is not None]

    def delete(self, key: str) -> None:
        self._call("delete_object", key, Key=self._k(key))

    def delete_folder(self, folder: str) -> None:
        check_folder(folder)
        keys = [o.key for o in self._list(folder)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
            r = self._call("delete_objects", folder, Delete={
                "Objects": [{"Key": self._k(k)} for k in keys[i:i + 1000]],
                "Quiet": True})
            errors = r.get("Errors") or []
            if errors:
                e = errors[0]
                raise Transient(f"delete {e.get('Key')}: {e.get('Code')} {e.get('Message')}")

    def restore_request(self, key: str, days: int) -> None:
        try:
            self._call("restore_object", key, Key=self._k(key), RestoreRequest={
                "Days": days, "GlacierJobParameters": {"Tier": "Bulk"}})
        except TargetError as e:
            # A second request while one is running is S3's 409; it is what we want.
            if "RestoreAlreadyInProgress" not in str(e):
                raise


def _s3_options(cfg: TargetConfig) -> dict[str, Any]:
    """No SigV4 payload hash: botocore would read each body once to hash it before
    sending it, and a chunk's body is read while the next chunk overwrites it
    (ring.py). Integrity in transit is the x-amz-checksum-sha256 header instead,
    which the store checks on arrival (what botocore itself does over https)."""
    opts: dict[str, Any] = {"payload_signing_enabled": False}
    if cfg.endpoint_url:
        opts["addressing_style"] = "path"
    return opts


def _restore_state(storage_class: str, restore: str | None) -> str:
    if storage_class not in COLD_CLASSES:
        return "none"
    if not restore:
        return "needed"
    return "in-progress" if 'ongoing-request="true"' in restore else "available"
