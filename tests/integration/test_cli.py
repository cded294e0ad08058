"""Command line: `muxd -t -c FILE` checks a configuration."""

import re
import subprocess

from support import MUXD_BIN

GOOD = """\
[muxd]
allow = 127.0.0.0/8 ::1
via = off
access_log = off
shutdown_timeout = 2s

[pool]
idle_timeout = 30s
max_h1_per_origin = 4
connect_timeout = 500ms
response_timeout = 1m
"""

# (line number, section, key) of every error in BAD
BAD = """\
[muxd]
via = maybe
max_clients = lots
[pool]
idle_timeout = soon
bogus_key = 1
response_timeout = -5s
max_h1_per_origin = 4
"""
BAD_ERRORS = [(2, "muxd", "via"), (3, "muxd", "max_clients"), (5, "pool", "idle_timeout"),
              (6, "pool", "bogus_key"), (7, "pool", "response_timeout")]


def check(tmp_path, text):
    path = tmp_path / "check.conf"
    path.write_text(text)
    proc = subprocess.run([MUXD_BIN, "-t", "-c", str(path)], capture_output=True, text=True, timeout=20)
    return path, proc


def test_check_good_config_exits_0(tmp_path):
    _, proc = check(tmp_path, GOOD)
    assert proc.returncode == 0, proc.stderr


def test_check_bad_config_lists_every_error(tmp_path):
    path, proc = check(tmp_path, BAD)
    assert proc.returncode == 1, proc.stderr
    for line, section, key in BAD_ERRORS:
        pattern = rf"^{re.escape(str(path))}:{line}: \[{section}\] {key}: \S"
        assert re.search(pattern, proc.stderr, re.M), f"no error line matching {pattern!r} in:\n{proc.stderr}"
    # the valid line 8 is not reported
    assert not re.search(rf"^{re.escape(str(path))}:8:", proc.stderr, re.M), proc.stderr


def test_check_unknown_section(tmp_path):
    path, proc = check(tmp_path, "[muxd]\nvia = on\n[nosuch]\nkey = 1\n")
    assert proc.returncode == 1
    # inih reports section errors with the section's first key: accept either line
    assert re.search(rf"^{re.escape(str(path))}:[34]: ", proc.stderr, re.M), proc.stderr
