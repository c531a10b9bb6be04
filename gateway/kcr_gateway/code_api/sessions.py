"""Code-API sessions on the gateway's durable kernels.

A **session** is one kernel of :class:`~kcr_gateway.kernels.KCRKernelManager`, whose id
is derived from the session id (:func:`.ids.kernel_id_of`), and whose registry record
names the key that created it as its owner (``user``: :attr:`.keys.ApiKey.owner`).
So a session is what a kernel is: it keeps its variables between calls (Python,
JavaScript, TypeScript, Bash, R, Java), its files always (the kernel's working folder,
``/mnt/data`` = ``/work`` in the pod, synced to the file store), survives the loss of its
pod, hibernation and a gateway restart, and is found by every replica.

Contract of :class:`CodeSessions`:

* :meth:`exec` runs one call: in the given session (404 when it does not exist or
  belongs to another key); without ``session_id``, in the session all its ``files`` come
  from (LibreChat's tool names the session that way), else in a new session. ``files``
  from other sessions of the same key are copied in first. The answer lists every file
  the call created or changed in the working folder (hidden names, starting with ``.``,
  are left out) and every rich image output, which is written there as a file.
* A session keeps its files across languages: a call in another language than the last
  one moves the session to a pod of that language (variables of the old one are gone).
* :meth:`upload` stores files in a new session (or a given one) without starting a pod:
  the session's kernel is registered hibernated and gets a pod on its first call.
* :meth:`list_files`, :meth:`open_file`, :meth:`delete_file` serve the files endpoints;
  a live pod is synced first, so a file the last call wrote is there.
* :meth:`sweep` hibernates sessions idle for ``idle_timeout`` and deletes sessions idle
  for ``session_ttl`` (record, state and files).

Errors are :mod:`.errors` exceptions; the kernel manager's HTTP errors (no pod, store
down) keep their status and message.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from tornado import web

from kcr_kernels.stores import FileNotFound, InvalidPath, StoreError, validate_path
from kcr_kernels.workspace_sync import QuotaExceeded, WorkspaceSync

from ..kernels import KCRKernelManager, RemoteKernel
from ..kernels.errors import KernelError
from .calls import CallCollector, CallResult
from .errors import BadRequest, CodeAPIError, LimitReached, NotFound, TooLarge, Unavailable
from .ids import file_id_of, is_id, kernel_id_of, new_id
from .keys import ApiKey
from .limits import CallLimits

#: ``lang`` codes clients send → kcr language (pool) names.
LANGUAGES = {
    "py": "python",
    "python": "python",
    "js": "javascript",
    "javascript": "javascript",
    "ts": "typescript",
    "typescript": "typescript",
    "bash": "bash",
    "sh": "bash",
    "r": "r",
    "java": "java",
    "go": "go",
    "rs": "rust",
    "rust": "rust",
    "c": "c",
    "cpp": "cpp",
    "php": "php",
    "f90": "fortran",
    "fortran": "fortran",
    "d": "d",
}
#: Languages whose variables persist between calls (one long-lived process).
STATEFUL = {"python", "javascript", "typescript", "bash", "r", "java"}
#: Where clients see the working folder.
DATA_DIR = "/mnt/data"


def _args_code(language: str, args: list[str]) -> str | None:
    """Code that makes ``args`` the program's arguments, for languages with a REPL."""
    if language == "python":
        return f"import sys as _kcr_sys; _kcr_sys.argv = {['main.py', *args]!r}; del _kcr_sys"
    if language in ("javascript", "typescript"):
        import json

        return f"process.argv = [process.argv[0], 'main.js', ...{json.dumps(args)}];"
    return None


def visible(path: str) -> bool:
    """A path the API lists: no part of it is hidden (``.ipython``, ``.cache``, ...)."""
    return not any(part.startswith(".") for part in path.split("/"))


@dataclass
class _Listing:
    """What the working folder held after the last call (to find what the next changed)."""

    pod: str
    fingerprint: str | None
    files: dict[str, tuple[int, str | None]]  # path -> (size, sha256)


class CodeSessions:
    """Sessions of the code API, mapped onto the kernel manager's kernels (see module doc)."""

    def __init__(
        self,
        manager: KCRKernelManager,
        files: WorkspaceSync,
        languages: list[str],
        limits: CallLimits,
        *,
        idle_timeout: float = 600.0,
        session_ttl: float = 24 * 3600.0,
        log=None,
    ):
        self.manager = manager
        self.files = files
        self.languages = list(languages)
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.session_ttl = session_ttl
        self.log = log or manager.log
        self._listings: dict[str, _Listing] = {}

    # -- sessions -------------------------------------------------------------

    def language_of(self, lang: object) -> str:
        if not isinstance(lang, str) or not lang:
            raise BadRequest("'lang' is required: one of " + ", ".join(self.codes()))
        language = LANGUAGES.get(lang.lower())
        if language is None or language not in self.languages:
            raise BadRequest(
                f"unknown or unserved lang {lang!r}: this gateway runs " + ", ".join(self.codes())
            )
        return language

    def codes(self) -> list[str]:
        """The ``lang`` codes this gateway serves (one per pool language)."""
        seen = []
        for code, language in LANGUAGES.items():
            if language in self.languages and language not in [LANGUAGES[c] for c in seen]:
                seen.append(code)
        return seen

    async def session(self, key: ApiKey, session_id: object) -> RemoteKernel:
        """The kernel of ``session_id`` if it exists and belongs to ``key`` (else 404)."""
        if not is_id(session_id):
            raise BadRequest("'session_id' must be a 21-character id ([A-Za-z0-9_-])")
        try:
            kernel = await self.manager.adopt(kernel_id_of(session_id))
        except web.HTTPError as e:
            if e.status_code == 404:
                raise NotFound(f"no session {session_id}") from None
            raise _from_http(e) from e
        if kernel.user != key.owner:
            raise NotFound(f"no session {session_id}")
        return kernel

    async def _check_session_limit(self, key: ApiKey, default: int) -> None:
        limit = key.sessions if key.sessions is not None else default
        if not limit:
            return
        live = len(await self.manager.list_kernels(user=key.owner))
        if live >= limit:
            raise LimitReached(
                f"this key has {live} live sessions, its limit of {limit}: reuse a session "
                "(session_id) or wait for idle ones to expire"
            )

    async def new_session(self, key: ApiKey, language: str, max_sessions: int) -> tuple[str, Any]:
        """A new session on a warm pod of ``language``: ``(session id, kernel)``."""
        await self._check_session_limit(key, max_sessions)
        session_id = new_id()
        try:
            kernel_id = await self.manager.start_kernel(
                kernel_name=f"kcr-{language}", kernel_id=kernel_id_of(session_id), user=key.owner
            )
        except web.HTTPError as e:
            raise _from_http(e) from e
        self._listings[kernel_id] = _Listing(self.manager.get_kernel(kernel_id).pod.name, None, {})
        return session_id, self.manager.get_kernel(kernel_id)

    async def new_file_session(self, key: ApiKey, max_sessions: int) -> tuple[str, RemoteKernel]:
        """A session with no pod yet (an upload): registered hibernated, resumed on use."""
        await self._check_session_limit(key, max_sessions)
        session_id = new_id()
        language = "python" if "python" in self.languages else self.languages[0]
        now = time.time()
        record = {
            "id": kernel_id_of(session_id),
            "name": f"kcr-{language}",
            "language": language,
            "username": "",
            "user": key.owner,
            "env": {},
            "created": now,
            "last_activity": now,
            "state": "hibernated",
            "owner": "",
            "checkpointed": None,
        }
        try:
            await self.manager.store.put_kernel(record["id"], record)
        except StoreError as e:
            raise Unavailable(f"the kernel registry is unavailable: {e}") from e
        return session_id, await self.session(key, session_id)

    async def _switch_language(self, kernel: RemoteKernel, language: str) -> None:
        """Move the session to a pod of ``language``; its files stay, its variables go."""
        if kernel.attached and not await self._release(kernel, f"lang changed to {language}"):
            await kernel.drop_pod()
        kernel.language = language
        kernel.kernel_name = f"kcr-{language}"
        kernel.session.kernel_info = dict(self.manager.kernel_info_cache.get(language) or {})
        kernel.last_checkpoint = None
        try:
            await self.manager.store.delete_state(kernel.kernel_id)
        except StoreError as e:
            self.log.warning("session kernel %s: old state not deleted: %s", kernel.kernel_id, e)
        self._listings.pop(kernel.kernel_id, None)

    async def _release(self, kernel: RemoteKernel, reason: str) -> bool:
        """Hibernate ``kernel``; a language without checkpoints (only Python has them)
        hibernates with its files only."""
        if await kernel.hibernate(reason):
            return True
        if kernel.language == "python":
            return False  # its state could not be saved: keep the pod, try again later
        kernel.dirty = False  # nothing to save but files, which are synced on release
        return await kernel.hibernate(reason)

    # -- /exec ----------------------------------------------------------------

    async def exec(self, key: ApiKey, body: dict, max_sessions: int) -> dict:
        """One ``POST /exec`` (``body`` already parsed into a dict)."""
        limits = self.limits
        language = self.language_of(body.get("lang"))
        code = body.get("code")
        if not isinstance(code, str):
            raise BadRequest("'code' is required and must be a string")
        if len(code.encode("utf-8", "replace")) > limits.max_code_bytes:
            raise TooLarge(f"'code' is over the limit of {limits.max_code_bytes} bytes")
        args = body.get("args")
        if args is not None and (
            not isinstance(args, list) or not all(isinstance(a, str) for a in args)
        ):
            raise BadRequest("'args' must be a list of strings")
        args_code = _args_code(language, args) if args else None
        if args and language == "bash":  # each bash cell is sourced: set them in the cell
            code = "set -- " + " ".join(shlex.quote(a) for a in args) + "\n" + code
        elif args and args_code is None:
            raise BadRequest(f"'args' are not supported for lang {body.get('lang')!r}")
        refs = self._file_refs(body.get("files"))
        session_id = body.get("session_id")
        sources = {ref["session_id"] for ref in refs}
        if session_id in (None, "") and len(sources) == 1:
            # LibreChat names the session through the files of its last call: run there.
            session_id = sources.pop()
        if session_id in (None, ""):
            session_id, kernel = await self.new_session(key, language, max_sessions)
        else:
            kernel = await self.session(key, session_id)
            if kernel.language != language:
                await self._switch_language(kernel, language)
        await self._copy_in(key, session_id, kernel, refs)
        before = await self._before(kernel)
        start_wait = self.manager.start_timeout + 30.0  # a pod to resume on, then the code
        if args_code is not None:
            await CallCollector(kernel.session, limits.max_output_bytes).run(
                args_code, limits.timeout + start_wait, silent=True
            )
        result = await CallCollector(kernel.session, limits.max_output_bytes).run(
            code, limits.timeout, start_wait=start_wait
        )
        changed = await self._changed(kernel, before)
        outputs = await self._save_images(kernel, result)
        listed = changed + [p for p in outputs if p not in changed]
        answer: dict[str, Any] = {
            "session_id": session_id,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "files": [self._file_ref(session_id, p) for p in listed[: limits.max_returned_files]],
        }
        if language in STATEFUL:
            answer["has_state"] = True
            # The last saved checkpoint (taken after a call, so as of an earlier call).
            if kernel.state_size is not None:
                answer["state_size"] = kernel.state_size
        if result.timed_out:
            answer["error"] = "timeout"
        return answer

    def _file_refs(self, value: object) -> list[dict]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest("'files' must be a list of {id, session_id, name}")
        if len(value) > self.limits.max_files:
            raise TooLarge(
                f"'files' has {len(value)} entries, over the limit of {self.limits.max_files}"
            )
        refs = []
        for i, ref in enumerate(value):
            if not isinstance(ref, dict):
                raise BadRequest(f"files[{i}] must be an object with id, session_id and name")
            if not is_id(ref.get("id")) or not is_id(ref.get("session_id")):
                raise BadRequest(f"files[{i}]: 'id' and 'session_id' must be 21-character ids")
            name = ref.get("name")
            if name is not None:
                name = _relative(name, f"files[{i}].name")
            refs.append({"id": ref["id"], "session_id": ref["session_id"], "name": name})
        return refs

    async def _copy_in(self, key: ApiKey, session_id: str, kernel, refs: list[dict]) -> None:
        """Copy the referenced files of other sessions into this session's folder."""
        for ref in refs:
            source = await self.session(key, ref["session_id"])
            path = await self._path_of(ref["session_id"], source, ref["id"])
            target = ref["name"] or path
            if ref["session_id"] == session_id and target == path:
                continue  # already in the working folder
            try:
                max_bytes = await self.files.check_upload(kernel.kernel_id, target, None)
                await self.files.put_file(
                    kernel.kernel_id,
                    target,
                    self.files.store.read(source.kernel_id, path),
                    max_bytes=max_bytes,
                    kernel=kernel,
                )
            except QuotaExceeded as e:
                raise TooLarge(str(e)) from e
            except InvalidPath as e:
                raise BadRequest(f"file name {target!r}: {e.detail}") from e
            except StoreError as e:
                raise Unavailable(f"the file store is unavailable: {e}") from e

    async def _before(self, kernel: RemoteKernel) -> dict[str, tuple[int, str | None]]:
        """The working folder's files before a call (known from the last call if we can)."""
        listing = self._listings.get(kernel.kernel_id)
        if kernel.attached and listing is not None and listing.pod == kernel.pod.name:
            return listing.files
        if kernel.attached:  # first call on this pod from here: ask the runner
            return await self._runner_files(kernel) or {}
        # No pod: the next one gets exactly the stored files.
        try:
            entries = await self.files.store.list(kernel.kernel_id)
        except StoreError:
            return {}
        return {e.path: (e.size, e.sha256) for e in entries}

    async def _runner_files(self, kernel: RemoteKernel) -> dict[str, tuple[int, str | None]] | None:
        runner = kernel.runner
        if runner is None:
            return None
        try:
            listing = await runner.call_json("GET", "/files")
        except Exception as e:  # the pod went away: nothing to report
            self.log.info("session kernel %s: files not listed: %s", kernel.kernel_id, e)
            return None
        return {
            f["path"]: (f.get("size", 0), f.get("sha256"))
            for f in listing.get("files", [])
            if f.get("type", "file") == "file"
        }

    async def _changed(self, kernel: RemoteKernel, before: dict) -> list[str]:
        """Visible paths created or changed by the call that just ended."""
        if not kernel.attached:
            return []
        pod, fingerprint = kernel.pod.name, kernel.workspace_fingerprint
        last = self._listings.get(kernel.kernel_id)
        if (
            last is not None
            and fingerprint is not None
            and last.pod == pod
            and last.fingerprint == fingerprint
        ):
            return []
        after = await self._runner_files(kernel)
        if after is None:
            return []
        self._listings[kernel.kernel_id] = _Listing(pod, fingerprint, after)
        return sorted(p for p, v in after.items() if visible(p) and before.get(p) != v)

    async def _save_images(self, kernel: RemoteKernel, result: CallResult) -> list[str]:
        """Write the call's image outputs into the working folder; their paths."""
        paths = []
        stamp = new_id()[:8]
        for i, image in enumerate(result.images, 1):
            path = f"output-{stamp}-{i}.{image.extension}"

            async def one(data: bytes = image.data) -> AsyncIterator[bytes]:
                yield data

            try:
                entry, _ = await self.files.put_file(
                    kernel.kernel_id, path, one(), max_bytes=None, kernel=kernel
                )
            except Exception as e:  # store down, quota: the call's answer still goes out
                self.log.warning("session kernel %s: image not saved: %s", kernel.kernel_id, e)
                result.stderr += f"[kcr] An image output could not be saved: {e}\n"
                continue
            listing = self._listings.get(kernel.kernel_id)
            if listing is not None:
                listing.files[path] = (entry.size, entry.sha256)
                listing.fingerprint = None  # the folder changed after the call
            paths.append(path)
        return paths

    @staticmethod
    def _file_ref(session_id: str, path: str) -> dict:
        return {"id": file_id_of(session_id, path), "name": path, "path": f"{DATA_DIR}/{path}"}

    # -- files ------------------------------------------------------------------

    async def upload(
        self,
        key: ApiKey,
        session_id: str | None,
        uploads: list[tuple[str, bytes]],
        max_sessions: int,
    ) -> dict:
        """Store ``(name, bytes)`` files in a new session (or ``session_id``)."""
        if session_id:
            kernel = await self.session(key, session_id)
        else:
            session_id, kernel = await self.new_file_session(key, max_sessions)
        stored = []
        for name, data in uploads:
            path = _relative(name, "file name")

            async def one(data: bytes = data) -> AsyncIterator[bytes]:
                yield data

            try:
                max_bytes = await self.files.check_upload(kernel.kernel_id, path, len(data))
                await self.files.put_file(
                    kernel.kernel_id, path, one(), max_bytes=max_bytes, kernel=kernel
                )
            except QuotaExceeded as e:
                raise TooLarge(str(e)) from e
            except InvalidPath as e:
                raise BadRequest(f"file name {name!r}: {e.detail}") from e
            except StoreError as e:
                raise Unavailable(f"the file store is unavailable: {e}") from e
            stored.append({"fileId": file_id_of(session_id, path), "filename": path})
        return {"message": "success", "session_id": session_id, "files": stored}

    async def _entries(self, kernel: RemoteKernel) -> list:
        """The session's stored files after syncing its live pod."""
        try:
            async with kernel.lock:
                entries, result = await self.files.list_files(kernel.kernel_id, kernel.runner)
        except StoreError as e:
            raise Unavailable(f"the file store is unavailable: {e}") from e
        if result is not None and result.error:
            self.log.warning(
                "session kernel %s: files not synced: %s", kernel.kernel_id, result.error
            )
        return [e for e in entries if visible(e.path)]

    async def _path_of(self, session_id: str, kernel: RemoteKernel, file_id: str) -> str:
        for entry in await self._entries(kernel):
            if file_id_of(session_id, entry.path) == file_id:
                return entry.path
        raise NotFound(f"no file {file_id} in session {session_id}")

    async def list_files(self, key: ApiKey, session_id: str, detail: str) -> list[dict]:
        kernel = await self.session(key, session_id)
        entries = await self._entries(kernel)
        out = []
        for e in entries:
            file_id = file_id_of(session_id, e.path)
            modified = _iso(e.mtime)
            if detail == "summary":
                out.append({"name": f"{session_id}/{file_id}", "lastModified": modified})
            elif detail == "simple":
                out.append({"id": file_id, "name": e.path, "path": f"{DATA_DIR}/{e.path}"})
            else:
                ctype = content_type(e.path)
                out.append(
                    {
                        "name": e.path,
                        "id": file_id,
                        "session_id": session_id,
                        "path": f"{DATA_DIR}/{e.path}",
                        "content": None,
                        "size": e.size,
                        "lastModified": modified,
                        "etag": f'"{e.sha256 or file_id}"',
                        "metadata": {"content-type": ctype, "original-filename": e.path},
                        "contentType": ctype,
                    }
                )
        return out

    async def open_file(
        self, key: ApiKey, session_id: str, file_id: str
    ) -> tuple[str, AsyncIterator[bytes]]:
        """``(path, chunks)`` of a session's file, after syncing its live pod."""
        kernel = await self.session(key, session_id)
        _check_file_id(file_id)
        path = await self._path_of(session_id, kernel, file_id)
        try:
            async with kernel.lock:
                chunks, _ = await self.files.sync_then_read(kernel.kernel_id, path, None)
        except FileNotFound:
            raise NotFound(f"no file {file_id} in session {session_id}") from None
        except StoreError as e:
            raise Unavailable(f"the file store is unavailable: {e}") from e
        return path, chunks

    async def delete_file(self, key: ApiKey, session_id: str, file_id: str) -> str:
        kernel = await self.session(key, session_id)
        _check_file_id(file_id)
        path = await self._path_of(session_id, kernel, file_id)
        try:
            async with kernel.lock:
                await self.files.delete_files(kernel.kernel_id, path, kernel.runner)
        except StoreError as e:
            raise Unavailable(f"the file store is unavailable: {e}") from e
        except Exception as e:  # the pod refused (RunnerError)
            raise BadRequest(f"the session's folder refused to delete {path!r}: {e}") from e
        listing = self._listings.get(kernel.kernel_id)
        if listing is not None:
            listing.files.pop(path, None)
            listing.fingerprint = None
        return path

    # -- idle sessions ----------------------------------------------------------

    async def sweep(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Hibernate idle sessions, delete expired ones: ``(hibernated, deleted)`` kernel ids."""
        now = time.time() if now is None else now
        hibernated, deleted = [], []
        if self.idle_timeout:
            idle = [
                kernel
                for kernel in self.manager.attached_kernels()
                if kernel.user.startswith("code-api:")
                and kernel.session.idle
                and now - kernel.last_activity >= self.idle_timeout
            ]
            done = await asyncio.gather(
                *(self._release(k, "idle code-API session") for k in idle), return_exceptions=True
            )
            for kernel, released in zip(idle, done, strict=True):
                if isinstance(released, BaseException):
                    self.log.warning(
                        "code API sweep: %s not hibernated: %s", kernel.kernel_id, released
                    )
                elif released:
                    hibernated.append(kernel.kernel_id)
        if self.session_ttl:
            try:
                records = await self.manager.store.list_kernels()
            except StoreError as e:
                self.log.warning("code API sweep: registry unavailable: %s", e)
                return hibernated, deleted
            for record in records:
                if not str(record.get("user", "")).startswith("code-api:"):
                    continue
                kid = record.get("id", "")
                local = self.manager.get_kernel(kid) if kid in self.manager else None
                last = local.last_activity if local is not None else record.get("last_activity")
                if local is not None and not local.session.idle:
                    continue
                if last and now - last >= self.session_ttl:
                    try:
                        await self.manager.remove(record["id"])
                    except KernelError as e:
                        self.log.warning("code API sweep: %s not deleted: %s", record["id"], e)
                        continue
                    self._listings.pop(record["id"], None)
                    deleted.append(record["id"])
        return hibernated, deleted

    async def run_sweeper(self, interval: float, stopped: Callable[[], bool]) -> None:
        while not stopped():
            await asyncio.sleep(interval)
            try:
                hibernated, deleted = await self.sweep()
            except Exception:
                self.log.exception("code API sweep failed")
                continue
            if hibernated or deleted:
                self.log.info(
                    "code API: %d idle sessions hibernated, %d expired sessions deleted",
                    len(hibernated),
                    len(deleted),
                )


def content_type(path: str) -> str:
    import mimetypes

    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def _iso(timestamp: float) -> str:
    from datetime import UTC, datetime

    return (
        datetime.fromtimestamp(timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _relative(name: object, what: str) -> str:
    """A client-given file name as a path in the working folder (``/mnt/data/`` allowed)."""
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{what} must be a non-empty string")
    path = name
    for prefix in (DATA_DIR + "/", "/work/"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    try:
        validate_path(path)
    except InvalidPath as e:
        raise BadRequest(f"{what} {name!r}: {e.detail}") from None
    return path


def _check_file_id(file_id: str) -> None:
    if not is_id(file_id):
        raise BadRequest("the file id must be a 21-character id ([A-Za-z0-9_-])")


def _from_http(e: web.HTTPError) -> CodeAPIError:
    message = e.log_message % e.args if e.log_message and e.args else (e.log_message or e.reason)
    return CodeAPIError(message or "the request failed", status=e.status_code, code="kernel_error")


__all__ = ["LANGUAGES", "STATEFUL", "CodeSessions"]
