"""The token file format, its bad lines, the hash-token helper and log redaction."""

import hashlib
import logging
import subprocess
import sys

import pytest
from kcr_gateway import redact
from kcr_gateway.tokens import TokenFile, hash_token, parse_token_file, token_line

log = logging.getLogger("test.tokens")


def test_good_lines_name_users_and_roles(caplog):
    text = "\n".join(
        [
            "# a comment",
            "",
            token_line("tok-alice-0123456789", "alice"),
            token_line("tok-ops-0123456789", "ops", "admin") + "   # trailing comment",
        ]
    )
    entries = parse_token_file(text, "tokens.txt", log)
    alice = entries[hash_token("tok-alice-0123456789").split(":")[1]]
    ops = entries[hash_token("tok-ops-0123456789").split(":")[1]]
    assert (alice.username, alice.admin, alice.line) == ("alice", False, 3)
    assert (ops.username, ops.admin) == ("ops", True)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_bad_lines_are_skipped_with_their_line_number(caplog):
    good = token_line("tok-good-0123456789", "good")
    digest = hash_token("x")
    text = "\n".join(
        [
            good,
            "not-a-hash alice",  # 2
            "sha256:1234 alice",  # 3: too short
            digest,  # 4: no user
            f"{digest} mallory superuser",  # 5: unknown role
            f"{digest} mallory admin extra",  # 6: too many fields
            f"{digest} -bad",  # 7: bad user name
            "plaintext-token-pasted-here bob admin",  # 8
        ]
    )
    with caplog.at_level(logging.ERROR):
        entries = parse_token_file(text, "tokens.txt", log)
    assert [e.username for e in entries.values()] == ["good"]
    skipped = [r.getMessage() for r in caplog.records]
    for number in range(2, 9):
        assert any(f"line {number} skipped" in m for m in skipped), (number, skipped)
    # The line's text (maybe a pasted secret) is never logged.
    assert not any("plaintext-token-pasted-here" in m for m in skipped)


def test_a_duplicate_token_is_refused_on_every_line(caplog):
    text = "\n".join(
        [
            token_line("tok-shared-0123456789", "alice"),
            token_line("tok-bob-0123456789", "bob"),
            token_line("tok-shared-0123456789", "mallory", "admin"),
        ]
    )
    with caplog.at_level(logging.ERROR):
        entries = parse_token_file(text, "tokens.txt", log)
    assert [e.username for e in entries.values()] == ["bob"]
    assert "lines 1, 3 hold the same token" in caplog.text
    # Deterministic: the same text in another order refuses the same token.
    swapped = "\n".join(reversed(text.splitlines()))
    assert [e.username for e in parse_token_file(swapped, "t", log).values()] == ["bob"]


async def test_a_missing_token_file_grants_nothing(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    path.write_text(token_line("tok-alice-0123456789", "alice") + "\n")
    tokens = TokenFile(str(path), log)
    tokens.load()
    assert tokens.lookup("tok-alice-0123456789").username == "alice"
    path.unlink()
    with caplog.at_level(logging.ERROR):
        assert not await tokens.check()
        assert not await tokens.check()
    assert tokens.lookup("tok-alice-0123456789") is None
    assert caplog.text.count("cannot be read") == 1  # once, not per check


def run_cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kcr_gateway.app", "hash-token", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, input=stdin)


def test_hash_token_makes_a_token_and_its_line():
    r = run_cli("alice", "--admin")
    assert r.returncode == 0, r.stderr
    token = r.stderr.strip().rsplit(" ", 1)[-1]
    assert len(token) >= 40
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert r.stdout == f"sha256:{digest} alice admin\n"
    assert token not in r.stdout


def test_hash_token_from_stdin_and_bad_input():
    r = run_cli("bob", "--stdin", stdin="a-token-of-mine-0123456789\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == token_line("a-token-of-mine-0123456789", "bob") + "\n"
    r = run_cli("bob", "--stdin", stdin="short\n")
    assert r.returncode == 1 and "16 characters" in r.stderr
    r = run_cli("not a name")
    assert r.returncode == 1 and "bad user name" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "line",
    [
        "403 GET /api/kernels?token=SECRET-abc123 (127.0.0.1) 1.20ms",
        "GET /api/kernels/x/channels?session_id=1&token=SECRET-abc123&x=1",
        "headers: {'Authorization': 'token SECRET-abc123', 'Host': 'x'}",
        "Authorization: Bearer SECRET-abc123",
        '{"authorization": "SECRET-abc123"}',
        "X-Api-Key: SECRET-abc123",
    ],
)
def test_redact_removes_tokens(line):
    clean = redact.redact(line)
    assert "SECRET-abc123" not in clean
    assert redact.REDACTED in clean
