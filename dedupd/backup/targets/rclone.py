"""rclone remotes: `rclone rcat` / `cat` / `lsjson` / `deletefile` through proc.py.

`rcat --size N` tells rclone the object's size up front, so a remote of type
s3 does a single PUT (with --s3-upload-cutoff raised to 5G) rather than a
multipart upload. HEAD is `lsjson --hash` on the object: SHA-256 where the
remote knows it, MD5 otherwise (s3: the ETag of a single PUT); on a remote of
type `local` dedupd reads, lists, hashes and deletes the files itself, and
writes a manifest (a body in memory) itself (rclone_local.py: same bytes and
files, far faster, no process per request); chunks always go up through rclone.
Cold storage classes are not supported through rclone (use an s3 target).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from dedupd import proc
from dedupd.backup.compress import widen_pipe
from dedupd.backup.targets import ObjectInfo, TargetError, Transient, check_folder
from dedupd.backup.targets.rclone_live import PRIVATE, LiveRcat
from dedupd.backup.targets.rclone_local import (
    local_delete,
    local_get,
    local_head,
    local_list,
    local_purge,
    local_put,
)
from dedupd.config import TargetConfig

READ = 1024 * 1024
# rclone exit codes: 2 usage, 3 directory not found, 4 file not found,
# 7 fatal (e.g. access denied). 1 (uncategorised, includes connection refused)
# and 5 (temporary) are retried.
_TRANSIENT_RC = {1, 5, 6}
# How rclone's local backend names itself in `rclone backend features` ("String").
_LOCAL_DESCRIPTION = "Local file system at "


class RcloneTarget:
    def __init__(self, cfg: TargetConfig) -> None:
        base = cfg.path.rstrip("/")
        self.root = f"{cfg.remote}:{base + '/' if base else ''}"
        self.description = f"rclone {self.root}"
        self.timeout = cfg.timeout_seconds
        self.common: list[str] = ["--retries", "1", "--low-level-retries", "1",
                                  "--timeout", f"{int(cfg.timeout_seconds)}s"]
        if cfg.config is not None:
            self.common = ["--config", str(cfg.config), *self.common]
        self.storage_class = cfg.storage_class
        self.remote = cfg.remote
        self._features: dict[str, Any] | None = None
        self._local: str | None = None  # "" once known not to be a local remote
        # `rclone backend features` (~50 ms or more, a process) is asked at once,
        # in the background: the caller's own start (index, zfs) overlaps it.
        self._early: dict[str, Any] | BaseException | None = None
        self._asking: threading.Thread | None = threading.Thread(
            target=self._ask_early, name="dedupd-rclone-features", daemon=True)
        self._asking.start()

    def _ask_early(self) -> None:
        try:
            self._early = self._ask_features()
        except BaseException as e:  # raised to the first caller that needs the answer
            self._early = e

    @property
    def wants_md5(self) -> bool:
        """True when the remote cannot report SHA-256 (rclone s3: MD5 only)."""
        return "sha256" not in self._remote_hashes()

    def _remote_hashes(self) -> list[str]:
        """The hash types the remote knows (`rclone backend features`), asked once."""
        return [str(h) for h in self._remote_features().get("Hashes") or []]

    def _remote_features(self) -> dict[str, Any]:
        """The answer of the early question, else (it failed: a retry) a new one."""
        if self._features is None and self._asking is not None:
            self._asking.join()
            self._asking, early, self._early = None, self._early, None
            if isinstance(early, BaseException):
                raise early
            self._features = early
        if self._features is None:
            self._features = self._ask_features()
        return self._features

    def _ask_features(self) -> dict[str, Any]:
        r = self._run("features", self._argv("backend", "features", self.root))
        try:
            got = json.loads(r.text)
        except json.JSONDecodeError:
            got = None
        return got if isinstance(got, dict) else {}

    def _local_dir(self) -> Path | None:
        """The directory behind a remote of the `local` backend, else None (asked once).

        head() of such a remote reads and hashes the file itself: the same bytes
        `rclone lsjson --hash` would read, but with SHA-256 at several times the
        speed (OpenSSL vs rclone's Go build) and no process per object. The
        backend is read from the `features` answer already fetched (the local
        backend describes itself as "Local file system at ROOT"), which also
        counts an alias of a local path and saves a `listremotes` process.
        """
        if self._local is None:
            self._local = ""
            feats = self._remote_features()
            root, text = feats.get("Root"), feats.get("String")
            if (isinstance(root, str) and root.startswith("/") and isinstance(text, str)
                    and text == f"{_LOCAL_DESCRIPTION}{root}"):
                self._local = root
        return Path(self._local) if self._local else None

    def _argv(self, cmd: str, *args: str) -> list[str]:
        if cmd == "backend":  # `rclone backend features REMOTE`: flags go after the verb
            return ["rclone", cmd, args[0], *self.common, *args[1:]]
        return ["rclone", cmd, *self.common, *args]

    def _check(self, what: str, rc: int | None, stderr: str) -> None:
        if rc == 0:
            return
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        msg = f"{self.description}: {what}: rclone exited {rc}: {last}"
        if rc is None or rc in _TRANSIENT_RC:
            raise Transient(msg)
        raise TargetError(msg)

    def _run(self, what: str, argv: Sequence[str]) -> proc.Result:
        try:
            r = proc.run(argv, check=False, timeout=self.timeout, umask=PRIVATE)
        except proc.MissingTool:
            raise TargetError("rclone is not installed") from None
        except proc.ProcError as e:  # timeout
            raise Transient(f"{self.description}: {what}: {e}") from None
        self._check(what, r.returncode, r.stderr)
        return r

    def put(self, key: str, file: IO[bytes], size: int, sha256: str, md5: str | None,
            storage_class: str) -> None:
        local = self._local_dir()
        if local is not None and isinstance(file, io.BytesIO):
            # A body in memory (a manifest) on a local remote: written in place
            # under a temp name and renamed, no rclone process (~0.1 s a run),
            # and a kill can never leave a partial object under the key.
            local_put(key, local / key, file, size)
            return
        argv = self._rcat_argv(key, size, storage_class)
        try:
            file.fileno()
        except (OSError, AttributeError):
            # Not a plain file (a manifest in memory, a chunk in the shared spool
            # whose reader must see every read): feed rclone through a pipe.
            self._feed(f"rcat {key}", argv, file)
            return
        p = proc.spawn(argv, stdin=file, stdout=subprocess.DEVNULL, umask=PRIVATE)
        self._wait(f"rcat {key}", p)

    def begin_put(self, key: str, size: int, storage_class: str) -> LiveRcat:
        """An `rclone rcat --size SIZE` of key, fed by the caller as the bytes are
        produced (no spooled copy read back). The object is one PUT of exactly
        `size` bytes, as put() makes it; confirming it is the caller's job.

        On a local remote a shorter body is stored as it is (rclone checks no
        length there), so a stream's shorter last chunk goes up live too; the
        file is then not preallocated to the declared size, which would leave a
        whole chunk's blocks allocated behind a short file. The size is declared
        all the same: without it rclone hashes the whole stream for a check of
        its own (~4x its CPU time per chunk), work the confirming HEAD does, and
        with that check off (--ignore-checksum) the stream still ran ~5% slower
        (10 runs side by side). The empty file that an upload started ahead and
        killed unfed leaves there is deleted as a stray in place (no process)."""
        local = self._local_dir() is not None
        argv = self._rcat_argv(key, size, storage_class)
        if local:
            argv.insert(-1, "--local-no-preallocate")
        return LiveRcat(argv, self.timeout, takes_short=local)

    def _rcat_argv(self, key: str, size: int, storage_class: str) -> list[str]:
        extra = ["--size", str(size), "--s3-upload-cutoff", "5G"]
        if storage_class and storage_class != "STANDARD":
            extra += ["--s3-storage-class", storage_class]
        return self._argv("rcat", *extra, self.root + key)

    def _feed(self, what: str, argv: Sequence[str], file: IO[bytes]) -> None:
        """Copy `file` to rclone's stdin in blocks; memory stays at one block. The
        timeout covers the whole upload, as it does when rclone reads a file."""
        p = proc.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                       umask=PRIVATE)
        assert p.stdin is not None
        widen_pipe(p.stdin)
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            p.kill()

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.start()
        try:
            while b := file.read(READ):
                p.stdin.write(b)
            p.stdin.close()
        except BrokenPipeError:
            pass  # rclone stopped reading: its exit status says why
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            watchdog.cancel()
            with contextlib.suppress(BrokenPipeError):
                p.stdin.close()
        if fired.is_set():
            p.wait()
            raise Transient(f"{self.description}: {what}: timed out after {self.timeout:g}s")
        self._wait(what, p)

    def _wait(self, what: str, p: subprocess.Popen[bytes]) -> None:
        try:
            proc.check_exit(p, self.timeout)
        except proc.ProcError as e:
            self._check(what, e.returncode, e.stderr)

    def head(self, key: str) -> ObjectInfo | None:
        # Hash only what is used: on a local remote every hash type is a full read.
        local = self._local_dir()
        if local is not None and not self.wants_md5:
            return local_head(key, local / key)
        kind = "MD5" if self.wants_md5 else "SHA-256"
        argv = self._argv("lsjson", "--files-only", "--hash-type", kind, self.root + key)
        r = proc.run(argv, check=False, timeout=self.timeout)
        if r.returncode in (3, 4):
            return None
        self._check(f"lsjson {key}", r.returncode, r.stderr)
        items = [o for o in _parse(r.text) if not o.get("IsDir")]
        if not items:
            return None
        return _info(key, items[0])

    def get(self, key: str, out: IO[bytes]) -> None:
        local = self._local_dir()
        if local is not None:  # the same bytes `rclone cat` would read, no process
            local_get(key, local / key, out)
            return
        p = proc.spawn(self._argv("cat", self.root + key))
        assert p.stdout is not None
        got = 0
        try:
            while True:
                b = p.stdout.read(READ)
                if not b:
                    break
                out.write(b)
                got += len(b)
        finally:
            p.stdout.close()
        if got == 0 and self.head(key) is None:
            # `rclone cat` of a missing key on a bucket remote lists an empty
            # "directory" and exits 0: never mistake that for an empty object.
            p.wait()
            raise TargetError(f"{self.description}: {key}: no such object")
        try:
            proc.check_exit(p, self.timeout)
        except proc.ProcError as e:
            if e.returncode in (3, 4) or "not found" in e.stderr:
                raise TargetError(f"{self.description}: {key}: no such object") from None
            self._check(f"cat {key}", e.returncode, e.stderr)

    def list(self, prefix: str, checksums: bool = False) -> list[ObjectInfo]:
        local = self._local_dir()
        if local is not None and not checksums:
            return local_list(local, prefix)
        folder, _, start = prefix.rpartition("/")
        extra = ["--hash-type", "MD5" if self.wants_md5 else "SHA-256"] if checksums else []
        argv = self._argv("lsjson", "-R", "--files-only", *extra, self.root + folder)
        r = proc.run(argv, check=False, timeout=self.timeout)
        if r.returncode == 3:
            return []
        self._check(f"lsjson {prefix}", r.returncode, r.stderr)
        base = folder + "/" if folder else ""
        out = [_info(base + o["Path"], o) for o in _parse(r.text)]
        return [o for o in out if o.key.startswith(prefix)] if start else out

    def delete(self, key: str) -> None:
        local = self._local_dir()
        if local is not None:  # what `rclone deletefile` does there, no process
            local_delete(local / key)
            return
        r = proc.run(self._argv("deletefile", self.root + key), check=False,
                     timeout=self.timeout)
        if r.returncode in (3, 4) or "not found" in r.stderr or "doesn't exist" in r.stderr:
            return
        self._check(f"deletefile {key}", r.returncode, r.stderr)

    def delete_folder(self, folder: str) -> None:
        check_folder(folder)
        local = self._local_dir()
        if local is not None:  # what `rclone purge` does there, no process
            local_purge(local / folder.rstrip("/"))
            return
        # One `rclone purge` (the folder and all in it) instead of a process per object.
        r = proc.run(self._argv("purge", self.root + folder.rstrip("/")), check=False,
                     timeout=self.timeout)
        if r.returncode in (3, 4) or "not found" in r.stderr or "doesn't exist" in r.stderr:
            return
        self._check(f"purge {folder}", r.returncode, r.stderr)

    def restore_request(self, key: str, days: int) -> None:
        raise TargetError(f"{self.description}: restoring cold objects is supported on s3 "
                          "targets only")


def _parse(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise Transient(f"rclone lsjson printed no JSON: {e}") from None
    return [d for d in data if isinstance(d, dict)]


def _info(key: str, o: dict[str, Any]) -> ObjectInfo:
    hashes = o.get("Hashes") or {}
    return ObjectInfo(key, int(o.get("Size", -1)), hashes.get("sha256") or None,
                      hashes.get("md5") or None, o.get("Tier") or "STANDARD")
