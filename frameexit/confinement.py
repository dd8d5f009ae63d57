"""Where manifest rows may point: the one check every manifest row passes before its video
URI can be opened.

A manifest is input, and input may be hostile: a row naming ``../../etc/passwd``,
``file:///root/.aws/credentials``, another bucket or ``http://169.254.169.254/...`` must
never become a video that is opened (its ``missing`` vs ``not_video`` status would tell
whether a node-local file exists; an HTTP URL would be a request made with the job's
network position). :class:`Confinement` decides, from the URI's text alone, before any
filesystem or network access:

* the URI, normalised (scheme, bucket, path with ``.``/``..`` resolved), must lie under
  one of the allowed prefixes, compared by whole path components
  (``s3://b/videos`` allows ``s3://b/videos/x.mp4``, never ``s3://b/videos-private/x``).
  ``data.allowed_prefixes`` empty means the default. For a remote manifest: its own
  bucket, the video root given with it and the embedded synthetic default corpus. For a
  manifest on local disk (the user's own file): any local path except system
  directories (:data:`SYSTEM_DIRS`) and hidden ones (a component starting with ``.``,
  such as ``~/.aws``), and any object-store bucket;
* plain ``http(s)://`` is refused unless ``data.allow_http``; even then link-local
  (169.254.0.0/16, fe80::/10) and cloud metadata addresses and names are refused always;
* chained fsspec URLs (``simplecache::...``), control characters and URIs longer than
  :data:`MAX_URI_CHARS` are refused.

Relative paths in a manifest are joined under the video root with :func:`join_under`,
which refuses a path whose ``..`` would climb above that root.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from frameexit.storage import absolute_uri, is_local, local_path, parent_uri

MAX_URI_CHARS = 4096  # PATH_MAX; a longer "video" is no file name
HTTP_SCHEMES = frozenset({"http", "https"})
# schemes whose netloc is a network host (object stores name a bucket there instead)
HOST_SCHEMES = HTTP_SCHEMES | {"ftp", "sftp", "ssh", "smb", "webhdfs", "hdfs", "ws", "wss"}
SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "az": "abfs", "abfss": "abfs"}
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure, OpenStack, DigitalOcean metadata
        "fe80::/10",  # IPv6 link-local
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "168.63.129.16/32",  # Azure wire server
    )
)
SYNTHETIC_DEFAULT = "synthetic-default"
#: never read by default from a local manifest (credentials, keys, devices, the OS)
SYSTEM_DIRS = frozenset(
    {"/etc", "/proc", "/sys", "/dev", "/boot", "/run", "/var", "/usr", "/bin", "/sbin",
     "/lib", "/lib32", "/lib64", "/libx32", "/snap"}
)  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BRACKETS = re.compile(r"\[[^\]]*\]")  # an IPv6 host, whose "::" is no fsspec chain


class Refused(ValueError):
    """A manifest row's video URI may not be opened; the message is the reason."""


@dataclass(frozen=True)
class Place:
    """A URI reduced to what confinement compares: scheme (``file`` for local paths),
    bucket or host (``""`` locally), and the path with ``.``/``..`` resolved (``/a/b``;
    ``/`` for the top)."""

    scheme: str
    bucket: str
    path: str

    def within(self, prefix: Place) -> bool:
        """Whether this place is ``prefix`` or lies under it (whole components only)."""
        if self.scheme != prefix.scheme or self.bucket != prefix.bucket:
            return False
        top = prefix.path
        return top == "/" or self.path == top or self.path.startswith(top + "/")

    def __str__(self) -> str:
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.bucket}{self.path}"


def _check_text(uri: str) -> None:
    if len(uri) > MAX_URI_CHARS:
        raise Refused(f"video URI too long ({len(uri)} characters > {MAX_URI_CHARS})")
    if _CONTROL.search(uri):
        raise Refused(f"control character in video URI {uri!r}")
    if "::" in uri and "::" in _BRACKETS.sub("", uri):  # fsspec would read it as a chain
        raise Refused(f"chained fsspec URLs are not allowed in a manifest: {uri}")


def place_of(uri: str) -> Place:
    """The normalised :class:`Place` of ``uri`` (local paths made absolute as
    :func:`frameexit.storage.absolute_uri` makes them, so the place checked is the file
    opened). Raises :class:`Refused` for a URI that cannot be judged."""
    uri = str(uri)
    _check_text(uri)
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme in ("file", "local"):
        local = uri if is_local(uri) else "file://" + uri.split("://", 1)[1]
        path = os.path.abspath(local_path(local))
        return Place("file", "", "/" + path.lstrip("/") if path.startswith("//") else path)
    scheme = SCHEME_ALIASES.get(scheme, scheme)
    if scheme in HOST_SCHEMES:
        try:
            split = urllib.parse.urlsplit(uri)
        except ValueError as error:
            raise Refused(f"unparsable URL {uri} ({error})") from None
        bucket = split.netloc.lower()
        path = urllib.parse.unquote(split.path)  # a server may decode %2e%2e itself
    else:
        rest = uri.split("://", 1)[1]
        bucket, _, path = rest.partition("/")
        bucket = bucket.lower()
    if not bucket:
        raise Refused(f"no bucket or host in {uri}")
    normal = posixpath.normpath("/" + path)
    return Place(scheme, bucket, "/" + normal.lstrip("/"))  # normpath keeps a leading "//"


def join_under(root: str, relative: str) -> str:
    """``relative`` joined onto ``root``; :class:`Refused` when its ``..`` climbs above
    ``root`` (``../../etc/passwd`` never leaves the video root)."""
    _check_text(relative)
    parts: list[str] = []
    for part in relative.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise Refused(f"relative path {relative!r} climbs above the video root {root}")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise Refused(f"relative path {relative!r} names the video root itself")
    return root.rstrip("/") + "/" + "/".join(parts)


def metadata_address(host: str, *, resolve: bool = True) -> str | None:
    """Why ``host`` is a link-local or cloud metadata endpoint, or None.

    Literal addresses in every spelling libc accepts (``169.254.169.254``, ``[fe80::1]``,
    ``::ffff:169.254.169.254``, ``2852039166``, ``0xa9.0xfe.0xa9.0xfe``) are checked as
    addresses; names against :data:`METADATA_NAMES` and, with ``resolve``, every address
    they resolve to (a name that does not resolve is left to the open to fail)."""
    name = host.strip("[]").rstrip(".").lower()
    if not name:
        return None
    if name in METADATA_NAMES:
        return f"cloud metadata host {name}"
    addresses = _literal(name)
    if addresses is None and resolve:
        addresses = _resolved(name)
    for address in addresses or ():
        why = _forbidden_address(address)
        if why:
            return f"{why} ({name})" if str(address) != name else why
    return None


def _literal(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    try:
        return [ipaddress.ip_address(name.split("%", 1)[0])]
    except ValueError:
        pass
    try:  # the legacy spellings inet_aton accepts: 2852039166, 0xa9fea9fe, 169.254.43518
        return [ipaddress.IPv4Address(socket.inet_aton(name))]
    except OSError:
        return None


def _resolved(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    out = []
    for info in infos:
        try:
            out.append(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:
            continue
    return out


def _forbidden_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for candidate in candidates:
        for network in METADATA_NETWORKS:
            if candidate.version == network.version and candidate in network:
                return f"link-local or cloud metadata address {candidate}"
    return None


def synthetic_default_root() -> str:
    """Where the embedded synthetic default corpus lives (``$FRAMEEXIT_DATA`` or the
    repository's ``data/``, then ``synthetic-default``), as ``pipelines.defaults`` puts it."""
    base = os.environ.get("FRAMEEXIT_DATA", str(Path(__file__).resolve().parents[1] / "data"))
    return os.path.join(os.path.abspath(base), SYNTHETIC_DEFAULT)


@dataclass(frozen=True)
class Confinement:
    """The places a manifest's rows may point to (see the module docstring)."""

    prefixes: tuple[Place, ...]
    allow_http: bool = False
    explicit: bool = False  # prefixes came from data.allowed_prefixes (else: the default)
    # the default for a manifest on local disk (the user's own file): any local path but
    # system and hidden ones, and any object-store bucket
    local_manifest: bool = False
    _hosts: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_manifest(
        cls,
        manifest: str,
        *,
        video_root: str | None = None,
        allowed_prefixes: Sequence[str] | None = None,
        allow_http: bool = False,
    ) -> Confinement:
        """The confinement of the rows of ``manifest``: ``allowed_prefixes`` when given
        (non-empty), else the default: for a remote manifest its own bucket, ``video_root``
        and the synthetic default corpus; for a manifest on local disk any local path
        except system and hidden ones (:data:`SYSTEM_DIRS`, a component starting with
        ``.``), any object-store bucket, and those same places."""
        if allowed_prefixes:
            return cls(_places(allowed_prefixes), allow_http=allow_http, explicit=True)
        manifest = str(manifest)
        local = is_local(manifest)
        if local:
            own = parent_uri(manifest)
        else:
            scheme, rest = manifest.split("://", 1)
            own = f"{scheme}://{rest.split('/', 1)[0]}/"
        defaults = [own, synthetic_default_root()]
        if video_root:
            defaults.append(absolute_uri(video_root))
        return cls(_places(defaults), allow_http=allow_http, local_manifest=local)

    def describe(self) -> str:
        """The allowed prefixes, for a reason text."""
        listed = ", ".join(str(p) for p in self.prefixes)
        if self.local_manifest:
            listed = "any local path but system and hidden ones, any bucket"
        return listed if self.explicit else f"default: {listed}"

    def refusal(self, uri: str) -> str | None:
        """Why ``uri`` may not be opened, or None when it may."""
        try:
            place = place_of(uri)
        except Refused as error:
            return str(error)
        if place.scheme in HOST_SCHEMES:
            host = urllib.parse.urlsplit(str(uri)).hostname or ""
            refused_http = place.scheme in HTTP_SCHEMES and not self.allow_http
            # a refused URL's name is not looked up; an accepted one's is (once per host)
            if refused_http:
                why = metadata_address(host, resolve=False)
            elif host in self._hosts:
                why = self._hosts[host]
            else:
                why = self._hosts[host] = metadata_address(host)
            if why:
                return f"{why} is never allowed: {uri}"
            if refused_http:
                return f"plain http(s) video URIs are refused (data.allow_http is false): {uri}"
            if place.scheme in HTTP_SCHEMES and not self.explicit:
                return None  # data.allow_http with the default prefixes: any other host
        if any(place.within(prefix) for prefix in self.prefixes):
            return None
        if self.local_manifest and place.scheme == "file":
            why = sensitive_path(place.path)
            if why is None:
                return None
            return f"{why} is not read by default (set data.allowed_prefixes to allow it): {uri}"
        if self.local_manifest and place.scheme not in HOST_SCHEMES:
            return None  # an object-store bucket
        return f"outside data.allowed_prefixes ({self.describe()}): {uri}"

    def check(self, uri: str) -> None:
        """Raise :class:`Refused` with the reason unless ``uri`` may be opened."""
        why = self.refusal(uri)
        if why:
            raise Refused(why)


def sensitive_path(path: str) -> str | None:
    """Why a local ``path`` (absolute, normalised) is a system or hidden place, or None."""
    parts = [p for p in path.split("/") if p]
    if parts and "/" + parts[0] in SYSTEM_DIRS:
        return f"the system directory /{parts[0]}"
    hidden = next((p for p in parts[:-1] if p.startswith(".")), None)
    if hidden is not None:
        return f"the hidden directory {hidden}"
    if parts and parts[-1].startswith("."):
        return f"the hidden file {parts[-1]}"
    return None


def _places(prefixes: Iterable[str]) -> tuple[Place, ...]:
    out: list[Place] = []
    for prefix in prefixes:
        try:
            place = place_of(str(prefix))
        except Refused as error:
            raise ValueError(f"allowed prefix {prefix!r}: {error}") from None
        if place not in out:
            out.append(place)
    return tuple(out)
