"""Downloads that survive an interruption and a bad network: resumed where they stopped (HTTP Range),
checked against a published checksum where there is one, written atomically, and when the network is not
there, one line that says so and names the command to rerun."""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from experiments.core.errors import MissingData

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TIMEOUT_S = 60


class Offline(MissingData):
    """The network (or the host) could not be reached."""


def offline_message(what: str, where: str, make_target: str, exc: BaseException) -> str:
    return (f"cannot download {what}: {where} is not reachable ({type(exc).__name__}: {exc}); rerun "
            f"`{make_target}` on a machine with internet (an interrupted download resumes)")


def is_network_error(exc: BaseException) -> bool:
    """A connection that could not be made or broke off (stdlib, requests or httpx, as libraries raise them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, urllib.error.HTTPError):  # the server answered: not a network problem
            return False
        if isinstance(exc, (urllib.error.URLError, TimeoutError, ConnectionError)):
            return True
        library = type(exc).__module__.split(".")[0]
        name = type(exc).__name__
        if library in ("httpx", "httpx2", "httpcore", "requests", "urllib3") and any(
                word in name for word in ("Connect", "Timeout", "Network", "Transport", "Protocol")):
            return True
        if name == "OfflineModeIsEnabled":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(path: Path, expected: dict[str, str] | None, what: str, make_target: str) -> None:
    """expected: {'md5': hex} or {'sha256': hex}; a mismatch removes the file and says to rerun."""
    for algorithm, value in (expected or {}).items():
        got = file_digest(path, algorithm)
        if got != value.lower():
            path.unlink(missing_ok=True)
            raise MissingData(f"{what}: {algorithm} of the download is {got}, the published one {value}; the file "
                              f"was removed, rerun `{make_target}` (a changed or damaged download)")


def fetch(url: str, dest: Path, make_target: str, expected: dict[str, str] | None = None,
          what: str | None = None) -> Path:
    """dest, downloaded from url unless it is there already. Bytes arrive in dest + '.part', which a later call
    continues with a Range request; the finished file is checked, then renamed into place."""
    dest, what = Path(dest), what or Path(url).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the range starts at the end: the part is complete
            response = None
        else:
            raise MissingData(f"cannot download {what} from {url}: HTTP {exc.code} {exc.reason}; the file may "
                              f"have moved: put it at {dest} yourself, then rerun `{make_target}`") from exc
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        raise Offline(offline_message(what, url, make_target, exc)) from exc
    if response is not None:
        with response:
            resumed = have and response.status == 206
            if have and not resumed:
                log.info("%s: the server does not resume; starting over", url)
            log.info("downloading %s%s", url, f" (resuming at {have} bytes)" if resumed else "")
            try:
                with open(part, "ab" if resumed else "wb") as out:
                    shutil.copyfileobj(response, out, CHUNK)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:  # cut mid-transfer
                raise Offline(offline_message(what, url, make_target, exc)) from exc
    check_digest(part, expected, what, make_target)
    part.replace(dest)
    return dest
