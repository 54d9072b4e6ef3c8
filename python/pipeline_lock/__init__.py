"""pipeline-lock from Python: a thin layer over the ``pipeline-lock`` binary that this wheel
installs beside the interpreter.

    from pipeline_lock import Lock, LockHeld

    lock = Lock("deploy/prod", table="pipeline-locks")
    lock.acquire(force_after=3600)      # waits while someone else holds it
    try:
        deploy(fence=lock.fence)
    finally:
        lock.release()

    with Lock("deploy/prod", table="pipeline-locks") as lock:   # renews while the block runs
        deploy(fence=lock.fence)

Every call runs the binary once, with ``--output json``; what it prints comes back as a dict.
A non-zero exit becomes a :class:`LockError` (a subclass per exit code, e.g. :class:`LockHeld`
for 73) carrying ``exit_code`` and the binary's message. The environment is passed through, so
the AWS chain (``AWS_PROFILE``, ``AWS_REGION``, web identity) and the CI identity work as they do
for the command line tool.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "Lock",
    "binary",
    "LockError",
    "UsageError",
    "StoreUnavailable",
    "HeldByOther",
    "LockHeld",
    "Superseded",
    "LockTimeout",
    "LeaseLost",
    "AccessDenied",
    "ConfigError",
    "StateRefused",
    "MaxDurationExceeded",
    "EXIT_CODES",
]

Duration = Union[int, float, str, _dt.timedelta]


class LockError(Exception):
    """The binary exited non-zero. ``exit_code`` is its exit code (see ``EXIT_CODES``),
    ``message`` what it printed on stderr, ``command`` the arguments it ran with."""

    exit_code: int = 1

    def __init__(self, message: str, exit_code: Optional[int] = None, command: Optional[List[str]] = None):
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code
        self.command = command or []

    def __str__(self) -> str:
        return f"{self.message} (exit code {self.exit_code})"


class UsageError(LockError):
    """2: bad flags, names, durations or environment values."""

    exit_code = 2


class StoreUnavailable(LockError):
    """69: the store could not be reached, or throttled past the retries."""

    exit_code = 69


class HeldByOther(LockError):
    """72: ``release(strict=True)`` and someone else holds the lock."""

    exit_code = 72


class LockHeld(LockError):
    """73: ``acquire(wait=False)`` and the lock is held."""

    exit_code = 73


class Superseded(LockError):
    """74: a newer pipeline of the same project waits for or holds the lock."""

    exit_code = 74


class LockTimeout(LockError):
    """75: gave up waiting (``wait``, ``max_retries``)."""

    exit_code = 75


class LeaseLost(LockError):
    """76: the lease was lost (taken over) while we held it."""

    exit_code = 76


class AccessDenied(LockError):
    """77: the store refused our credentials a permission."""

    exit_code = 77


class ConfigError(LockError):
    """78: no table or bucket, wrong key schema, bad record, no credentials or region."""

    exit_code = 78


class StateRefused(LockError):
    """79: ``state put``/``state delete`` refused: a newer fence or another version is stored."""

    exit_code = 79


class MaxDurationExceeded(LockError):
    """80: ``run --max-duration``: the command ran too long and was stopped; the lock was released."""

    exit_code = 80


#: Exit code -> exception class; the codes are those of the binary (src/exit.rs).
EXIT_CODES: Dict[int, type] = {
    cls.exit_code: cls
    for cls in (
        UsageError,
        StoreUnavailable,
        HeldByOther,
        LockHeld,
        Superseded,
        LockTimeout,
        LeaseLost,
        AccessDenied,
        ConfigError,
        StateRefused,
        MaxDurationExceeded,
    )
}

_EXE = "pipeline-lock.exe" if os.name == "nt" else "pipeline-lock"


def binary() -> str:
    """Path of the ``pipeline-lock`` binary: ``$PIPELINE_LOCK_BIN``, else the one this wheel
    installed into the interpreter's scripts directory (a venv's ``bin``, or the user scheme's
    for ``pip install --user``), else the first on ``PATH``."""
    explicit = os.environ.get("PIPELINE_LOCK_BIN")
    if explicit:
        return explicit
    dirs = [sysconfig.get_path("scripts")]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    for d in dirs:
        if d:
            p = os.path.join(d, _EXE)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    found = shutil.which(_EXE)
    if found:
        return found
    raise FileNotFoundError("pipeline-lock binary not found: install the wheel (pip install pipeline-lock) or set PIPELINE_LOCK_BIN")


def _duration(value: Duration) -> str:
    """Seconds (int or float), a timedelta, or a string the binary parses (``90s``, ``1h 30m``)."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool):
        raise TypeError("a duration is seconds, a timedelta or a string, not a bool")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"negative duration: {value}")
        if float(value).is_integer():
            return str(int(value))
        return f"{round(value * 1000)}ms"
    return str(value)


def _seconds(value: Duration) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)):
        return float(value)
    total = 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    for part in str(value).split():
        num = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = part[len(num):] or "s"
        total += float(num) * units.get(unit, 1)
    return total


def _in_ci(env: Mapping[str, str]) -> bool:
    return bool(env.get("GITLAB_CI") or env.get("GITHUB_ACTIONS"))


class Lock:
    """One lock in one store.

    Store (one of): ``table`` (DynamoDB), ``bucket`` + ``prefix`` (S3), or ``store``, a URL
    (``dynamodb://TABLE``, ``s3://BUCKET/PREFIX``, ``file:///DIR``). None of them: the binary's
    default (``PIPELINE_LOCK_STORE``/``PIPELINE_LOCK_TABLE``..., else ``dynamodb://pipeline-locks``).
    ``endpoint_url`` and ``region`` override the AWS settings.

    ``owner``: in GitLab CI and GitHub Actions the binary derives it from the pipeline (every job
    of one pipeline is the same owner). Elsewhere it is ``PIPELINE_LOCK_OWNER``, else
    ``python:HOST/pid/PID`` (this process).

    ``renew_every``: how often the context manager renews (default: a third of ``ttl``, or of
    the one hour default lease).
    """

    def __init__(
        self,
        name: str,
        table: Optional[str] = None,
        *,
        store: Optional[str] = None,
        bucket: Optional[str] = None,
        prefix: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        region: Optional[str] = None,
        owner: Optional[str] = None,
        ttl: Optional[Duration] = None,
        renew_every: Optional[Duration] = None,
        reason: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        binary_path: Optional[str] = None,
    ):
        if sum(x is not None for x in (table, store, bucket)) > 1:
            raise ValueError("give one of table=, bucket= or store=")
        if prefix is not None and bucket is None:
            raise ValueError("prefix= needs bucket=")
        self.name = name
        self.env = dict(os.environ if env is None else env)
        self._store_args: List[str] = []
        if store is not None:
            self._store_args += ["--store", store]
        if table is not None:
            self._store_args += ["--table", table]
        if bucket is not None:
            self._store_args += ["--bucket", bucket]
        if prefix is not None:
            self._store_args += ["--prefix", prefix]
        if endpoint_url is not None:
            self._store_args += ["--endpoint-url", endpoint_url]
        if region is not None:
            self._store_args += ["--region", region]
        if owner is None and not _in_ci(self.env) and not self.env.get("PIPELINE_LOCK_OWNER"):
            owner = f"python:{socket.gethostname()}/pid/{os.getpid()}"
        self.owner = owner
        self.ttl = ttl
        self.renew_every = renew_every
        self.reason = reason
        self._binary = binary_path
        self.token: Optional[str] = None
        self.fence: Optional[int] = None
        self.grant: Optional[Dict[str, Any]] = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None
        self._renew_error: Optional[LockError] = None

    # --- the binary ---------------------------------------------------------------------

    def _run(self, command: str, args: List[str], with_owner: bool = True) -> Dict[str, Any]:
        argv = [self._binary or binary(), *self._store_args, command, "--lock", self.name, "--output", "json"]
        if with_owner and self.owner is not None:
            argv += ["--owner", self.owner]
        argv += args
        p = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            message = p.stderr.strip() or f"pipeline-lock {command} failed"
            cls = EXIT_CODES.get(p.returncode, LockError)
            raise cls(message, p.returncode, argv)
        if p.stderr:
            sys.stderr.write(p.stderr)
        out = p.stdout.strip()
        return json.loads(out) if out else {}

    def _token_args(self) -> List[str]:
        return ["--token", self.token] if self.token else []

    # --- the API ------------------------------------------------------------------------

    def acquire(
        self,
        force_after: Optional[Duration] = 3600,
        *,
        wait: Union[None, bool, Duration] = None,
        ttl: Optional[Duration] = None,
        reason: Optional[str] = None,
        args: Optional[List[str]] = None,
    ) -> Dict[str, Any]:
        """Take the lock, waiting while someone else holds it. ``force_after``: take over a
        holder that has not renewed for this long (``None``: never). ``wait``: ``False`` fails
        at once with :class:`LockHeld`, a duration gives up after it with :class:`LockTimeout`,
        ``None`` waits forever. Returns the grant (``token``, ``fence``, ``lease_expires_at``...)."""
        a: List[str] = []
        if force_after is not None:
            a += ["--force-after", _duration(force_after)]
        if wait is False:
            a.append("--no-wait")
        elif wait is not None and wait is not True:
            a += ["--wait", _duration(wait)]
        ttl = ttl if ttl is not None else self.ttl
        if ttl is not None:
            a += ["--ttl", _duration(ttl)]
        reason = reason if reason is not None else self.reason
        if reason is not None:
            a += ["--reason", reason]
        grant = self._run("acquire", a + list(args or []))
        self._remember(grant)
        return grant

    def renew(self, ttl: Optional[Duration] = None) -> Dict[str, Any]:
        """Extend the lease (by the grant's own length, or ``ttl``); :class:`LeaseLost` if the
        lock was taken over from us."""
        a = self._token_args()
        if ttl is not None:
            a += ["--ttl", _duration(ttl)]
        grant = self._run("renew", a)
        self._remember(grant)
        return grant

    def release(self, *, strict: bool = False) -> Dict[str, Any]:
        """Give the lock back (idempotent). :class:`LeaseLost` if it was taken over from us;
        with ``strict``, :class:`HeldByOther` if someone else holds it."""
        a = self._token_args()
        if strict:
            a.append("--strict")
        out = self._run("release", a)
        self.token = None
        return out

    def status(self) -> Dict[str, Any]:
        """The lock as the store has it: ``state`` (free/held), ``record``, ``queue``..."""
        return self._run("status", [], with_owner=False)

    def _remember(self, grant: Dict[str, Any]) -> None:
        self.grant = grant
        self.token = grant.get("token", self.token)
        self.fence = grant.get("fence", self.fence)

    # --- context manager: hold the lock around a block, renewing it ----------------------

    def _interval(self) -> float:
        if self.renew_every is not None:
            return max(0.1, _seconds(self.renew_every))
        ttl = _seconds(self.ttl) if self.ttl is not None else 3600.0
        return max(0.5, ttl / 3)

    def _renew_loop(self) -> None:
        interval = self._interval()
        while not self._stop.wait(interval):
            try:
                self.renew()
                self._renew_error = None
            except LeaseLost as e:
                self._renew_error = e
                return
            except LockError as e:  # store trouble: keep trying until the lease is gone
                self._renew_error = e

    def __enter__(self) -> "Lock":
        self.acquire()
        self._stop.clear()
        self._renew_error = None
        self._renewer = threading.Thread(target=self._renew_loop, name=f"pipeline-lock renew {self.name}", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        try:
            self.release()
        except LockError:
            if exc_type is None:
                raise
        if exc_type is None and isinstance(self._renew_error, LeaseLost):
            raise self._renew_error
