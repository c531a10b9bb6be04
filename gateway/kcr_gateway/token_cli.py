"""``kcr-gateway hash-token USER [--admin]``: a new token and its token-file line.

Prints the line for the token file (``sha256:<hex> USER [admin]``) on stdout, so it can
be appended (``>> tokens.txt``), and the token itself on stderr: give it to the user,
it is stored nowhere. ``--stdin`` hashes a token read from standard input instead of
making one (never pass a token as an argument: it would show in ``ps``).
"""

from __future__ import annotations

import sys

from jupyter_core.application import JupyterApp
from traitlets import Bool

from .tokens import new_token, token_line


class HashTokenApp(JupyterApp):
    """Make a token for USER and print its token-file line (see the module doc)."""

    name = "kcr-gateway-hash-token"
    description = __doc__
    admin = Bool(False, config=True, help="The identity gets the admin role (sees all kernels).")
    stdin = Bool(False, config=True, help="Hash a token read from stdin instead of a new one.")
    flags = {
        "admin": ({"HashTokenApp": {"admin": True}}, "Give the identity the admin role."),
        "stdin": ({"HashTokenApp": {"stdin": True}}, "Read the token from stdin."),
    }
    aliases = {}

    def start(self) -> None:
        if len(self.extra_args) != 1:
            sys.exit("kcr-gateway hash-token: error: give exactly one USER name")
        if self.stdin:
            token = sys.stdin.readline().strip()
            if len(token) < 16:
                sys.exit("kcr-gateway hash-token: error: a token needs 16 characters at least")
        else:
            token = new_token()
        try:
            line = token_line(token, self.extra_args[0], "admin" if self.admin else "user")
        except ValueError as e:
            sys.exit(f"kcr-gateway hash-token: error: {e}")
        print(line)
        if not self.stdin:
            print(
                f"kcr-gateway: token for {self.extra_args[0]} (stored nowhere, give it to "
                f"them): {token}",
                file=sys.stderr,
            )
