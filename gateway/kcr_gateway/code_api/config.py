"""``KCRCodeAPI``: the options of the code-interpreter API (``--KCRCodeAPI.<option>``).

The keys themselves are ``KCRGateway.code_api_keys`` / ``code_api_keys_file`` (named so
in the issue that asked for them, and next to the gateway's other secrets); everything
else is here.
"""

from __future__ import annotations

from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

from .limits import CallLimits


class KCRCodeAPI(LoggingConfigurable):
    """Where the code-interpreter API is mounted and what one key and one call may use."""

    enabled = Bool(True, config=True, help="Serve the code-interpreter API (False: not mounted).")
    prefix = Unicode("/v1", config=True, help="URL prefix of the API, under the base_url.")
    keys = List(Unicode(), config=True, help="API keys (default: KCRGateway.code_api_keys).")

    @default("keys")
    def _keys_default(self) -> list[str]:
        return list(getattr(self.parent, "code_api_keys", None) or [])

    keys_file = Unicode(config=True, help="Keys file (default: KCRGateway.code_api_keys_file).")

    @default("keys_file")
    def _keys_file_default(self) -> str:
        return getattr(self.parent, "code_api_keys_file", "") or ""

    rate_limit = Integer(600, config=True, help="Calls per minute one key may make (0: no limit).")
    max_sessions = Integer(
        100, config=True, help="Live sessions one key may have at once (0: no limit)."
    )
    timeout = Float(60.0, config=True, help="Seconds one /v1/exec call may run.")
    max_output_bytes = Integer(
        1 << 20, config=True, help="Bytes of stdout (and of stderr) one call returns."
    )
    max_code_bytes = Integer(1 << 20, config=True, help="Largest `code` of one call, in bytes.")
    max_files = Integer(
        50, config=True, help="Most files one call may pass in `files`, or one upload carry."
    )
    max_upload_bytes = Integer(
        100 << 20, config=True, help="Largest /v1/upload request body, in bytes."
    )
    idle_timeout = Float(
        600.0,
        config=True,
        help="Seconds a session may be idle before its pod is released (it hibernates and "
        "resumes on its next call). 0: never.",
    )
    session_ttl = Float(
        24 * 3600.0,
        config=True,
        help="Seconds a session may be idle before it is deleted with its files. 0: never.",
    )
    sweep_interval = Float(30.0, config=True, help="Seconds between idle-session sweeps.")

    def call_limits(self) -> CallLimits:
        return CallLimits(
            timeout=self.timeout,
            max_output_bytes=self.max_output_bytes,
            max_code_bytes=self.max_code_bytes,
            max_files=self.max_files,
            max_upload_bytes=self.max_upload_bytes,
        )
