"""Two-way sync of a notebook's folder with its kcr kernel's working folder.

:class:`KernelFolderSync` is one kernel's sync with one folder F (the folder of the
notebook or console the kernel was started for). It remembers, for every file that took
part in the last sync, the file's signature in F (size, mtime, inode) and the sha256 of the
kernel's copy: that *base* makes it a three-way sync, so each side's changes are told apart
from the other's:

=====================  ==================  ===============================================
F since the base       kernel since base   result
=====================  ==================  ===============================================
changed or new         unchanged / absent  uploaded to the kernel
unchanged / absent     changed or new      downloaded into F
deleted                unchanged           deleted in the kernel
unchanged              deleted             deleted in F
changed                changed             **conflict**: F's copy wins (uploaded); the
                                           kernel's is kept in F as ``name.kernel-<UTC
                                           time>.ext``, with a notice
deleted                changed             the kernel's copy comes back into F (no loss)
changed                deleted             F's copy goes to the kernel (no loss)
=====================  ==================  ===============================================

:meth:`KernelFolderSync.before_cell` runs before a cell is sent to the kernel: only F is
scanned (the kernel's files cannot change between its cells except through this sync), and
when nothing changed in F no request is made. :meth:`KernelFolderSync.after_cell` runs when
the cell's reply arrives: the gateway's listing (sha256 per file) shows what the cell did.
The first sync (no base yet) compares both sides; files on both sides with different
contents are conflicts. Failures never lose a file: the base only moves for what moved, an
unreachable gateway or file store leaves everything for the next try, and each problem is
told once (not after every cell).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field

from .gateway_files import GatewayFiles, GatewayFilesError, RemoteFile
from .local_folder import LocalFolder, Rules, Scan, human

log = logging.getLogger("kcr.folder_sync")

#: How many files move at once for one kernel.
PARALLEL = 4
#: Files named in one notice before "and N more".
NAMED = 5

Sig = tuple[int, int, int]


#: how close to a sync's time a file's mtime counts as "racily clean" (hashed to compare)
RACY_NS = 1_000_000_000


@dataclass
class _Base:
    """A file as of the last sync: its signature in F and the sha256 of the kernel's copy."""

    local: Sig | None
    sha: str | None
    #: when this was recorded (ns): a file whose mtime is this recent may have been
    #: written again within the filesystem's timestamp granularity, same size and inode
    at: int = field(default_factory=time.time_ns)


def conflict_name(path: str, stamp: str) -> str:
    """``a/data.csv`` → ``a/data.kernel-<stamp>.csv``; ``Makefile`` → ``Makefile.kernel-…``."""
    folder, slash, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    new = f"{stem}.kernel-{stamp}" + (f".{ext}" if ext else "")
    return folder + slash + new


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:NAMED])
    return shown + (f" and {len(paths) - NAMED} more" if len(paths) > NAMED else "")


@dataclass
class KernelFolderSync:
    """One kernel ↔ one folder (see the module docstring).

    ``folder`` is the folder on the server's disk, ``label`` how notices name it (its path
    as Jupyter shows it). Calls are serialized by ``lock``; results are notices for the
    user (a list of lines, empty when all is well).
    """

    kernel_id: str
    folder: LocalFolder
    label: str
    files: GatewayFiles
    rules: Rules
    base: dict[str, _Base] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: problems already told (so each is told once) → the signature they were told for.
    told: dict[str, object] = field(default_factory=dict)
    #: the gateway or its store was down at the last try.
    outage: str | None = None
    #: uploads the kernel refused (413, 400): path → F signature, not retried until changed.
    refused: dict[str, Sig] = field(default_factory=dict)
    #: the gateway has no files API for this kernel (not a kcr gateway): sync is off.
    unsupported: bool = False
    #: the ``version`` of the kernel's files at the last listing, if the gateway gives one.
    version: str | None = None

    # -- entry points ----------------------------------------------------------------------

    async def before_cell(self) -> list[str]:
        """Carry F's changes to the kernel (the first time: both ways)."""
        async with self.lock:
            return await self._run(listing=self.base is None)

    async def after_cell(self) -> list[str]:
        """Bring what the cell created, changed or deleted into F."""
        async with self.lock:
            return await self._run(listing=True)

    async def leave(self) -> list[str]:
        """F is no longer this kernel's folder (the notebook moved): files that came from F
        and are unchanged in the kernel are removed from it; the rest stay."""
        async with self.lock:
            if self.base is None or self.unsupported:
                return []
            try:
                remote, _, _ = await self.files.list(self.kernel_id)
            except GatewayFilesError as e:
                return [f"[kcr] the files of {self.label} stay in the kernel: {e.message}"]
            doomed = [p for p, b in self.base.items() if p in remote and remote[p].sha256 == b.sha]
            for path in doomed:
                with contextlib.suppress(GatewayFilesError):
                    await self.files.delete(self.kernel_id, path)
            self.base = None
            return []

    # -- one pass ----------------------------------------------------------------------------

    async def _run(self, listing: bool) -> list[str]:
        if self.unsupported:
            return []
        notices: list[str] = []
        remote: dict[str, RemoteFile] | None = None
        sync_error: str | None = None
        listed = False
        if (listing or self.base is None) and "refused" not in self.told:
            try:
                remote, sync_error = await self._list()
            except GatewayFilesError as e:
                return self._failed(e)
            listed = True
            if remote is None and self.base is not None:
                # After a cell that changed no file (the gateway knows from the cell's
                # workspace fingerprint): nothing to do; F's own changes go before the next.
                return self._recovered()
        scan = await asyncio.to_thread(self.folder.scan, self.rules)
        if scan.refused:
            if self.told.get("refused") != scan.refused:
                self.told["refused"] = scan.refused
                notices.append(
                    f"[kcr] the folder {self.label} is not synced with the kernel: "
                    f"{scan.refused}. The kernel keeps working in its own folder."
                )
            return notices
        self.told.pop("refused", None)
        notices += self._skipped_notice(scan)
        try:
            if (listing or self.base is None) and not listed:
                remote, sync_error = await self._list()
            notices += await self._reconcile(scan, remote)
        except GatewayFilesError as e:
            self.version = None
            return notices + self._failed(e)
        if sync_error and self.told.get("sync_error") != sync_error:
            self.told["sync_error"] = sync_error
            notices.append(f"[kcr] some of the kernel's files are not saved yet: {sync_error}")
        elif not sync_error:
            self.told.pop("sync_error", None)
        return notices + self._recovered()

    async def _list(self) -> tuple[dict[str, RemoteFile] | None, str | None]:
        """The gateway's listing; ``None`` files when unchanged since the last one (the
        base then stands for the kernel's side)."""
        unless = self.version if self.base is not None else None
        try:
            remote, sync_error, self.version = await self.files.list(self.kernel_id, unless)
        except GatewayFilesError:
            self.version = None
            raise
        return remote, sync_error

    def _recovered(self) -> list[str]:
        if self.outage is None:
            return []
        self.outage = None
        return [f"[kcr] {self.label} and the kernel's folder are in sync again."]

    def _failed(self, e: GatewayFilesError) -> list[str]:
        if e.status == 404:
            # No files API on this gateway (a stock Kernel Gateway, no file store), or the
            # kernel is gone: nothing to sync with.
            self.unsupported = True
            log.info("kernel %s: the gateway has no files API; folder sync is off", self.kernel_id)
            return []
        if self.outage is not None:
            return []
        self.outage = e.message
        return [
            f"[kcr] {self.label} and the kernel's folder are not in sync: {e.message}. "
            "Nothing is lost: kcr tries again before and after the next cell."
        ]

    def _skipped_notice(self, scan: Scan) -> list[str]:
        fresh = [s for s in scan.skipped if self.told.get("skip:" + s.path) != s.reason]
        for s in scan.skipped:
            self.told["skip:" + s.path] = s.reason
        if not fresh:
            return []
        lines = [f"  {s.path}: {s.reason}" for s in fresh[:NAMED]]
        if len(fresh) > NAMED:
            lines.append(f"  and {len(fresh) - NAMED} more")
        return [f"[kcr] not synced between {self.label} and the kernel:\n" + "\n".join(lines)]

    # -- the three-way comparison --------------------------------------------------------------

    async def _reconcile(self, scan: Scan, remote: dict[str, RemoteFile] | None) -> list[str]:
        first = self.base is None
        base = self.base if self.base is not None else {}
        local = scan.files
        if remote is None:
            remote_sha = {p: b.sha for p, b in base.items() if b.sha is not None}
            remote_size: dict[str, int] = {}
        else:
            remote_sha, remote_size = {}, {}
            for path, f in remote.items():
                if self.rules.excluded(path):
                    continue
                remote_sha[path] = f.sha256
                remote_size[path] = f.size
        notices: list[str] = []
        uploads: list[str] = []
        downloads: list[tuple[str, str]] = []  # (kernel path, F path)
        local_deletes: list[str] = []
        remote_deletes: list[str] = []
        conflicts: list[tuple[str, str]] = []
        too_big: list[str] = []
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())

        for path in sorted(set(local) | set(remote_sha) | set(base)):
            lsig, rsha, b = local.get(path), remote_sha.get(path, "\0"), base.get(path)
            has_r = path in remote_sha
            if b is None:
                if lsig is not None and has_r:
                    if first:
                        same = await asyncio.to_thread(self.folder.sha256, path) == rsha
                        if same:
                            base[path] = _Base(lsig, rsha)
                            continue
                    conflicts.append((path, conflict_name(path, stamp)))
                elif lsig is not None:
                    uploads.append(path)
                elif has_r:
                    downloads.append((path, path))
                continue
            l_changed = lsig != b.local
            if not l_changed and lsig is not None and lsig[1] >= b.at - RACY_NS:
                # "racily clean" (as git calls it): the same signature says nothing about a
                # write in the same timestamp tick, so compare the content itself.
                l_changed = await asyncio.to_thread(self.folder.sha256, path) != b.sha
                if not l_changed:
                    base[path] = _Base(lsig, b.sha)
            r_changed = rsha != b.sha
            if lsig is not None and has_r:
                if l_changed and r_changed:
                    conflicts.append((path, conflict_name(path, stamp)))
                elif l_changed:
                    uploads.append(path)
                elif r_changed:
                    downloads.append((path, path))
            elif has_r:  # deleted in F
                if r_changed:
                    downloads.append((path, path))
                else:
                    remote_deletes.append(path)
            elif lsig is not None:  # deleted in the kernel
                if l_changed:
                    uploads.append(path)
                else:
                    local_deletes.append(path)
            else:
                base.pop(path, None)

        # Kernel files over the per-file limit stay in the kernel.
        keep: list[tuple[str, str]] = []
        for kpath, fpath in downloads:
            why = self.rules.too_large(remote_size.get(kpath, 0))
            if why:
                if self.told.get("big:" + kpath) != remote_sha.get(kpath):
                    self.told["big:" + kpath] = remote_sha.get(kpath)
                    too_big.append(f"{kpath} ({human(remote_size[kpath])})")
            else:
                keep.append((kpath, fpath))
        downloads = keep
        self.base = base

        semaphore = asyncio.Semaphore(PARALLEL)
        vanished: list[str] = []

        async def bounded(job):
            async with semaphore:
                return await job

        async def upload(path: str) -> None:
            await self._upload(path, base, vanished, notices)

        async def download(kpath: str, fpath: str) -> None:
            sig = await self._download(kpath, fpath)
            if kpath == fpath:
                base[fpath] = _Base(sig, remote_sha.get(kpath))

        async def delete_remote(path: str) -> None:
            await self.files.delete(self.kernel_id, path)
            base.pop(path, None)

        async def delete_local(path: str) -> None:
            expected = base[path].local
            if await asyncio.to_thread(self.folder.delete, path, expected):
                base.pop(path, None)

        async def conflict(path: str, copy: str) -> None:
            await self._download(path, copy)  # the kernel's version, beside F's
            await self._upload(path, base, vanished, notices)  # F's version wins

        if uploads or remote_deletes or conflicts:
            self.version = None  # the kernel's files change: the next listing is a full one
        jobs = [download(k, f) for k, f in downloads]
        jobs += [upload(p) for p in uploads]
        jobs += [delete_remote(p) for p in remote_deletes]
        jobs += [delete_local(p) for p in local_deletes]
        jobs += [conflict(p, c) for p, c in conflicts]
        results = await asyncio.gather(*(bounded(j) for j in jobs), return_exceptions=True)
        unavailable = None
        for r in results:
            if isinstance(r, GatewayFilesError) and r.unavailable:
                unavailable = r
            elif isinstance(r, GatewayFilesError):
                notices.append(f"[kcr] a file was not synced: {r.message}")
            elif isinstance(r, OSError):
                notices.append(f"[kcr] a file in {self.label} could not be written: {r}")
            elif isinstance(r, BaseException):
                raise r
        if unavailable is not None:
            raise unavailable
        for path, copy in conflicts:
            notices.append(
                f"[kcr] {path} was changed both in {self.label} and by the kernel: the "
                f"folder's version wins; the kernel's version is kept as {copy}"
            )
        if too_big:
            notices.append(
                "[kcr] left in the kernel's folder (over KCRFolderSync.max_file_bytes, "
                f"{human(self.rules.max_file_bytes)}): {_names(too_big)}"
            )
        if vanished:
            notices.append(
                f"[kcr] skipped (removed from {self.label} while it was synced): {_names(vanished)}"
            )
        return notices

    async def _upload(
        self, path: str, base: dict[str, _Base], vanished: list[str], notices: list[str]
    ) -> None:
        try:
            fd, sig = await asyncio.to_thread(self.folder.open_read, path)
        except FileNotFoundError:
            vanished.append(path)
            return
        except OSError as e:
            notices.append(f"[kcr] {path} could not be read: {e.strerror}")
            return
        try:
            if self.refused.get(path) == sig:
                return
            try:
                remote = await self.files.upload(self.kernel_id, path, fd, sig[0])
            except GatewayFilesError as e:
                if e.unavailable:
                    raise
                if e.status == 409:  # shrank while read: the next pass sends it again
                    return
                self.refused[path] = sig
                notices.append(f"[kcr] {path} was not put into the kernel's folder: {e.message}")
                return
            self.refused.pop(path, None)
            base[path] = _Base(sig, remote.sha256)
        finally:
            os.close(fd)

    async def _download(self, kpath: str, fpath: str) -> Sig:
        dir_fd, f, temp = await asyncio.to_thread(self.folder.create_temp, fpath)

        def write(chunk: bytes) -> None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(f, view) :]

        try:
            await self.files.download(self.kernel_id, kpath, write)
        except BaseException:
            await asyncio.to_thread(self.folder.abort, dir_fd, f, temp)
            raise
        return await asyncio.to_thread(self.folder.commit, fpath, dir_fd, f, temp)
