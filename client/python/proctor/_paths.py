"""Where proctord listens and keeps its state when nobody says otherwise (as proctord does).

As root: /run/proctor/proctord.sock and /var/lib/proctor. Otherwise
$XDG_RUNTIME_DIR/proctor/proctord.sock (else /tmp/proctor-$UID/proctor/proctord.sock) and
$XDG_STATE_HOME/proctor (else ~/.local/state/proctor).
"""

import os


def _absolute_env(name, fallback):
    value = os.environ.get(name, "")
    return value if value.startswith("/") else fallback


def default_socket_path():
    uid = os.geteuid()
    if uid == 0:
        return "/run/proctor/proctord.sock"
    return _absolute_env("XDG_RUNTIME_DIR", f"/tmp/proctor-{uid}") + "/proctor/proctord.sock"


def default_state_dir():
    uid = os.geteuid()
    if uid == 0:
        return "/var/lib/proctor"
    home = _absolute_env("HOME", f"/tmp/proctor-{uid}")
    return _absolute_env("XDG_STATE_HOME", home + "/.local/state") + "/proctor"


def default_address():
    """``$PROCTOR_ADDRESS``, else the daemon's default socket."""
    return os.environ.get("PROCTOR_ADDRESS") or "unix:" + default_socket_path()
