"""Keys and proofs: the README's "Authentication" scheme, and where a client finds its key.

Every call carries ``x-proctor-auth: v1 <key-id> <unix-millis> <nonce-hex> <mac-hex>``, the MAC
being HMAC-SHA256(key, "proctor-v1 call\\n<method>\\n<key-id>\\n<unix-millis>\\n<nonce-hex>");
every reply must carry ``x-proctor-server-proof``, HMAC-SHA256(key, "proctor-v1
server\\n<method>\\n<nonce-hex>") in hex, or it is not trusted. The key itself never crosses the
wire, and never appears in a message or a repr.

The key is looked for as the ``proctor`` command line looks for it: the file given, else
``$PROCTOR_AUTHKEY_FILE``, else ``$PROCTOR_AUTHKEY`` (hex) with ``$PROCTOR_ID`` (a worker's
own key, which proctord puts in every worker's environment), else the daemon's default
``<state-dir>/authkey``. Key files are admin keys.
"""

import dataclasses
import hashlib
import hmac
import os
import stat
import time
import warnings

import grpc

from proctor import _paths
from proctor.errors import ProctorError, KeyFileWarning

AUTH_METADATA = "x-proctor-auth"
PROOF_METADATA = "x-proctor-server-proof"
ADMIN_KEY_ID = "admin"


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A key, whose it is (``key_id``: "admin" or a worker's id) and where it came from."""

    key: bytes = dataclasses.field(repr=False)
    key_id: str
    source: str  # for messages: "authkey file /x", "$PROCTOR_AUTHKEY of process 7"

    def sign(self, method):
        """The ``x-proctor-auth`` value for one call of ``method``, and its nonce."""
        millis = str(int(time.time() * 1000))
        nonce = os.urandom(16).hex()
        mac = _mac(self.key, f"proctor-v1 call\n{method}\n{self.key_id}\n{millis}\n{nonce}")
        return f"v1 {self.key_id} {millis} {nonce} {mac}", nonce

    def proves(self, method, nonce, proof):
        """Whether ``proof`` is the daemon's answer to the call of ``method`` with ``nonce``."""
        expected = _mac(self.key, f"proctor-v1 server\n{method}\n{nonce}")
        return isinstance(proof, str) and hmac.compare_digest(proof, expected)


def _mac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _from_file(path, how):
    try:
        with open(path, "rb") as f:
            key = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except FileNotFoundError:
        raise ProctorError(grpc.StatusCode.NOT_FOUND,
                           f"cannot read authkey file {path}: no such file") from None
    except OSError as e:
        code = (grpc.StatusCode.PERMISSION_DENIED if isinstance(e, PermissionError)
                else grpc.StatusCode.FAILED_PRECONDITION)
        raise ProctorError(code, f"cannot read authkey file {path}: {e.strerror}") from None
    if not key:
        raise ProctorError(grpc.StatusCode.INVALID_ARGUMENT, f"authkey file {path} is empty")
    # Used all the same, as the command line does: the key may be the only way in.
    if mode & 0o077:
        seen = "readable" if mode & 0o044 else "accessible"
        warnings.warn(KeyFileWarning(
            f"key file {path} is {seen} by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}"), stacklevel=4)
    return Credentials(key, ADMIN_KEY_ID, f"authkey file {path}{how}")


def find_credentials(authkey_file=None):
    """The key to sign calls with, found as described above.

    Raises ProctorError: NOT_FOUND naming every place looked when there is none,
    INVALID_ARGUMENT for a malformed ``$PROCTOR_AUTHKEY`` or an empty key file.
    """
    if authkey_file:
        return _from_file(os.fspath(authkey_file), "")
    if os.environ.get("PROCTOR_AUTHKEY_FILE"):
        return _from_file(os.environ["PROCTOR_AUTHKEY_FILE"], " (from $PROCTOR_AUTHKEY_FILE)")
    if os.environ.get("PROCTOR_AUTHKEY"):
        worker = os.environ.get("PROCTOR_ID", "")
        try:
            key = bytes.fromhex(os.environ["PROCTOR_AUTHKEY"])
        except ValueError:
            key = b""
        if not key or not worker:
            raise ProctorError(grpc.StatusCode.INVALID_ARGUMENT, "$PROCTOR_AUTHKEY must be hex "
                               "and come with $PROCTOR_ID (as proctord sets them)")
        return Credentials(key, worker, f"$PROCTOR_AUTHKEY of process {worker}")
    path = os.path.join(_paths.default_state_dir(), "authkey")
    try:
        return _from_file(path, " (the daemon's default)")
    except ProctorError as e:
        if e.code != grpc.StatusCode.NOT_FOUND:
            raise
        raise ProctorError(grpc.StatusCode.NOT_FOUND,
                           f"no authkey: pass authkey_file, set $PROCTOR_AUTHKEY_FILE, or run "
                           f"where {path} can be read") from None
