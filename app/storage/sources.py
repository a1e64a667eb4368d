"""Where a model tree comes from: one class per URI scheme, each listing the files under its URI and fetching one.

    s3://bucket/prefix     botocore; any S3-compatible endpoint through AWS_ENDPOINT_URL
    gs://bucket/prefix     google-cloud-storage; STORAGE_EMULATOR_HOST points it at an emulator
    http(s)://host/file    requests; one file (an archive among them is unpacked by the caller)
    file:///path, a path   the local file system

Credentials follow KServe's storage initializer, so a Secret written for KServe works here unchanged:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (or S3_ENDPOINT with
S3_USE_HTTPS), S3_VERIFY_SSL, S3_USER_VIRTUAL_BUCKET, awsAnonymousCredential; GOOGLE_APPLICATION_CREDENTIALS
(else the pod's own identity, else anonymous access for a public bucket).

Each transport's errors are translated here, at the boundary, into :class:`PullError`: transient ones (a
refused connection, a timeout, 408, 429, 5xx) to be retried, the others with the variable to set. The libraries'
own retries are turned off so that one policy (app/storage/pull.py) governs every scheme. The transports are
imported only when their scheme is used: the gateway itself never loads them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from app.storage.archives import unsafe_name
from app.storage.errors import PullError, one_line

SCHEMES = ("s3://", "gs://", "http://", "https://", "file://")
CONNECT_TIMEOUT = 15.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds without a byte before a transfer counts as stalled (and is retried)
CHUNK = 1 << 20
S3_KEYS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
ANONYMOUS_S3 = "awsAnonymousCredential"  # KServe's name: "true" reads a public bucket unsigned
GCS_CREDENTIALS = "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: where it lands (``key``, relative to DEST), its size when known, and its name there."""

    key: str
    size: int | None
    name: str


@dataclass(frozen=True)
class Listing:
    """The files under a URI; ``one_file`` when the URI names a single file rather than a folder or prefix."""

    files: list[RemoteFile]
    one_file: bool


class Source(Protocol):
    uri: str

    def list(self) -> Listing: ...

    def fetch(self, file: RemoteFile, target: Path) -> None: ...


def open_source(uri: str) -> Source:
    """The source for ``uri``; PullError for a scheme this command does not read (before anything is touched)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if not uri.strip():
        raise PullError(repr(uri), "no source given", hint=f"give one of {', '.join(SCHEMES)} or a path")
    if scheme in ("", "file"):
        return LocalSource(uri)
    if scheme in ("http", "https"):
        return HttpSource(uri)
    if scheme == "s3":
        return S3Source(uri)
    if scheme == "gs":
        return GcsSource(uri)
    raise PullError(uri, f"unknown scheme {parts.scheme + '://'!r}", hint=f"use {', '.join(SCHEMES)} or a path")


def relative_key(uri: str, key: str) -> str:
    """``key`` checked to stay inside DEST: an object named /etc/x or a/../../x would land elsewhere."""
    why = unsafe_name(key)
    if why or any(part in ("", ".") for part in key.split("/")):
        raise PullError(uri, f"the object {key!r} {why or 'has an empty or . step in its name'}: refused")
    return key


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if not parts.netloc:
        raise PullError(uri, "names no bucket", hint=f"write it as {parts.scheme}://bucket/prefix")
    return parts.netloc, unquote(parts.path).strip("/")


def _folder_files(uri: str, prefix: str, names: Iterator[tuple[str, int | None]]) -> list[RemoteFile]:
    """The objects under ``prefix/``, keyed by their path below it; folder markers (names ending in /) skipped."""
    start = f"{prefix}/" if prefix else ""
    return [
        RemoteFile(relative_key(uri, name[len(start) :]), size, name)
        for name, size in names
        if name.startswith(start) and not name.endswith("/")
    ]


def _write_stream(chunks: Iterator[bytes], target: Path) -> None:
    with target.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)


# -- the local file system ---------------------------------------------------------------------------------


class LocalSource:
    """file:///path or a plain path: a folder (every file below it) or one file."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        parts = urlsplit(uri)
        if parts.scheme.lower() == "file":
            if parts.netloc not in ("", "localhost"):
                raise PullError(uri, f"names the host {parts.netloc!r}", hint="write file:///absolute/path")
            self.path = Path(unquote(parts.path))
        else:
            self.path = Path(uri).expanduser()

    def list(self) -> Listing:
        if self.path.is_file():
            return Listing([RemoteFile(self.path.name, self.path.stat().st_size, str(self.path))], one_file=True)
        if not self.path.is_dir():
            raise PullError(self.uri, "no such file or folder")
        files = []
        for folder, _, names in os.walk(self.path):
            for name in sorted(names):
                path = Path(folder) / name
                key = path.relative_to(self.path).as_posix()
                files.append(RemoteFile(key, path.stat().st_size if path.is_file() else None, str(path)))
        return Listing(files, one_file=False)

    def fetch(self, file: RemoteFile, target: Path) -> None:
        try:
            shutil.copyfile(file.name, target)
        except OSError as exc:
            raise PullError(self.uri, f"cannot read {file.name}: {exc.strerror or exc}") from None


# -- http(s) -----------------------------------------------------------------------------------------------


def http_status_error(uri: str, status: int, reason: str, *, credentials: str = "") -> PullError:
    """An HTTP status as a PullError: 408, 429 and 5xx are transient; 401/403 name the credentials to set."""
    what = f"the server answered {status} {reason}".rstrip()
    if status in (401, 403):
        return PullError(uri, what, hint=credentials or "the URL needs credentials this command does not send")
    if status == 404:
        return PullError(uri, f"{what}: nothing at that address")
    return PullError(uri, what, transient=status in (408, 429) or status >= 500)


class HttpSource:
    """http(s)://host/path/file: one file, fetched with requests (the caller unpacks an archive)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        name = Path(unquote(urlsplit(uri).path)).name
        if not name:
            raise PullError(uri, "names no file", hint="end the URL with the file's name, e.g. …/models.tar.gz")
        self.name = name

    def list(self) -> Listing:
        return Listing([RemoteFile(self.name, None, self.uri)], one_file=True)

    def fetch(self, file: RemoteFile, target: Path) -> None:
        import requests

        try:
            with requests.get(self.uri, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as response:
                if response.status_code >= 400:
                    raise http_status_error(self.uri, response.status_code, response.reason or "")
                _write_stream(response.iter_content(CHUNK), target)
        except requests.exceptions.InvalidURL as exc:
            raise PullError(self.uri, f"is not a usable URL: {exc}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PullError(self.uri, f"connection failed: {_root_cause(exc)}", transient=True) from None
        except requests.exceptions.RequestException as exc:  # a broken transfer (short read, bad chunking)
            raise PullError(self.uri, f"transfer failed: {_root_cause(exc)}", transient=True) from None


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a chained error ("Connection refused", "Read timed out"), on one line."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    reason = getattr(exc, "reason", None) or exc
    return one_line(getattr(reason, "strerror", None) or reason, 160)


# -- s3:// -------------------------------------------------------------------------------------------------


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def s3_endpoint() -> str | None:
    """AWS_ENDPOINT_URL, else KServe's older S3_ENDPOINT (host:port) with S3_USE_HTTPS (default on)."""
    if os.environ.get("AWS_ENDPOINT_URL"):
        return os.environ["AWS_ENDPOINT_URL"]
    legacy = os.environ.get("S3_ENDPOINT")
    if not legacy:
        return None
    if "://" in legacy:
        return legacy
    https = os.environ.get("S3_USE_HTTPS", "1").strip().lower() not in ("0", "false", "no", "off")
    return f"{'https' if https else 'http'}://{legacy}"


class S3Source:
    """s3://bucket/prefix: every object below the prefix, or the one object it names."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.prefix = _bucket_and_prefix(uri)
        self.endpoint = s3_endpoint()
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import botocore.session
            from botocore import UNSIGNED
            from botocore.config import Config

            virtual = _is_true(os.environ.get("S3_USER_VIRTUAL_BUCKET"))
            config = Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"total_max_attempts": 1},  # one retry policy for every scheme: app/storage/pull.py
                # S3-compatible servers (MinIO, Ceph, rclone) want the bucket in the path; AWS takes either.
                s3={"addressing_style": "virtual" if virtual else ("path" if self.endpoint else "auto")},
                # KServe's spelling of this variable is mixed-case.
                signature_version=UNSIGNED if _is_true(os.environ.get(ANONYMOUS_S3)) else None,
            )
            verify: bool | None = None
            if os.environ.get("S3_VERIFY_SSL", "").strip().lower() in ("0", "false", "no", "off"):
                verify = False
            session = botocore.session.get_session()
            self._client = session.create_client("s3", endpoint_url=self.endpoint, config=config, verify=verify)
        return self._client

    def list(self) -> Listing:
        try:
            client = self.client()
            names = []
            start = f"{self.prefix}/" if self.prefix else ""
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                names += [(item["Key"], item.get("Size")) for item in page.get("Contents", [])]
            if names:
                return Listing(_folder_files(self.uri, self.prefix, iter(names)), one_file=False)
            if self.prefix:
                head = self._head()
                if head is not None:
                    name = self.prefix.rsplit("/", 1)[-1]
                    return Listing([RemoteFile(name, head.get("ContentLength"), self.prefix)], one_file=True)
        except Exception as exc:
            raise self.error(exc) from None
        raise PullError(self.uri, "the bucket holds nothing under that prefix, and no object of that name")

    def _head(self) -> dict | None:
        """The object the URI names, or None when there is none (the URI was a prefix with nothing under it)."""
        from botocore.exceptions import ClientError

        try:
            return self.client().head_object(Bucket=self.bucket, Key=self.prefix)
        except ClientError as exc:
            if int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) == 404:
                return None
            raise

    def fetch(self, file: RemoteFile, target: Path) -> None:
        try:
            body = self.client().get_object(Bucket=self.bucket, Key=file.name)["Body"]
            try:
                _write_stream(body.iter_chunks(CHUNK), target)
            finally:
                body.close()
        except Exception as exc:
            raise self.error(exc, file.name) from None

    def error(self, exc: Exception, key: str = "") -> PullError:
        """botocore's exceptions as PullError (anything else, a bug, is raised as it is)."""
        from botocore import exceptions as aws

        where = f"s3://{self.bucket}/{key}" if key else self.uri
        endpoint = f" at {self.endpoint}" if self.endpoint else ""
        if isinstance(exc, PullError):
            return exc
        if isinstance(exc, aws.NoCredentialsError):
            return PullError(where, "no credentials found", hint=f"set {S3_KEYS}, or {ANONYMOUS_S3}=true")
        if isinstance(exc, aws.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            message = error.get("Message") or code or "no message"
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status in (401, 403):
                return PullError(where, f"access refused{endpoint}: {message}", hint=f"check {S3_KEYS}")
            if code in ("NoSuchBucket",):
                return PullError(where, f"no bucket {self.bucket!r}{endpoint}")
            if code in ("NoSuchKey", "404") or status == 404:
                return PullError(where, f"nothing at that key{endpoint}")
            transient = status in (408, 429) or status >= 500 or code in ("SlowDown", "RequestTimeout", "Throttling")
            said = f"{status} {message}" if code in ("", str(status)) else f"{status} {code}: {message}"
            return PullError(where, f"the server answered {said}", transient=transient)
        if isinstance(exc, aws.EndpointConnectionError | aws.ConnectionError | aws.HTTPClientError):
            hint = "is AWS_ENDPOINT_URL right?" if self.endpoint else ""
            return PullError(where, f"cannot reach {self.endpoint or 'S3'}: {_root_cause(exc)}", hint=hint,
                             transient=True)  # fmt: skip
        if isinstance(exc, aws.IncompleteReadError | aws.ResponseStreamingError | aws.ReadTimeoutError):
            return PullError(where, f"transfer broke off: {one_line(exc)}", transient=True)
        if isinstance(exc, aws.ParamValidationError):
            return PullError(where, f"not a valid bucket or key: {one_line(exc)}")
        if isinstance(exc, aws.BotoCoreError | ValueError):  # e.g. a malformed AWS_ENDPOINT_URL
            return PullError(where, one_line(exc), hint="check AWS_ENDPOINT_URL and AWS_DEFAULT_REGION")
        raise exc


# -- gs:// -------------------------------------------------------------------------------------------------


class GcsSource:
    """gs://bucket/prefix: every object below the prefix, or the one object it names."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.prefix = _bucket_and_prefix(uri)
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from google.auth import exceptions as auth
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            project = os.environ.get("GOOGLE_CLOUD_PROJECT")
            if os.environ.get("STORAGE_EMULATOR_HOST"):  # the library sends every call there
                self._client = storage.Client(project=project or "emulator", credentials=AnonymousCredentials())
            else:
                try:
                    self._client = storage.Client(project=project)
                except auth.DefaultCredentialsError as exc:
                    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
                        raise PullError(self.uri, f"unusable credentials: {one_line(exc)}",
                                        hint="GOOGLE_APPLICATION_CREDENTIALS must name a service account key file"
                                        ) from None  # fmt: skip
                    # No key and no workload identity: a public bucket can still be read, as KServe does.
                    self._client = storage.Client.create_anonymous_client()
        return self._client

    def list(self) -> Listing:
        try:
            client = self.client()
            start = f"{self.prefix}/" if self.prefix else ""
            blobs = client.list_blobs(self.bucket, prefix=start, retry=None)
            names = [(blob.name, blob.size) for blob in blobs]
            if names:
                return Listing(_folder_files(self.uri, self.prefix, iter(names)), one_file=False)
            if self.prefix:
                blob = client.bucket(self.bucket).get_blob(self.prefix, retry=None)
                if blob is not None:
                    name = self.prefix.rsplit("/", 1)[-1]
                    return Listing([RemoteFile(name, blob.size, self.prefix)], one_file=True)
        except Exception as exc:
            raise self.error(exc) from None
        raise PullError(self.uri, "the bucket holds nothing under that prefix, and no object of that name")

    def fetch(self, file: RemoteFile, target: Path) -> None:
        try:
            blob = self.client().bucket(self.bucket).blob(file.name)
            blob.download_to_filename(str(target), retry=None, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except Exception as exc:
            raise self.error(exc, file.name) from None

    def error(self, exc: Exception, key: str = "") -> PullError:
        """google-cloud-storage's, google-auth's and requests' exceptions as PullError."""
        import requests
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from google.resumable_media import common as media

        where = f"gs://{self.bucket}/{key}" if key else self.uri
        if isinstance(exc, PullError):
            return exc
        if isinstance(exc, api.NotFound):
            return PullError(where, f"no such bucket or object: {_api_message(exc)}")
        if isinstance(exc, api.Unauthorized | api.Forbidden):
            return PullError(where, f"access refused: {_api_message(exc)}", hint=GCS_CREDENTIALS)
        if isinstance(exc, api.GoogleAPICallError):
            status = int(exc.code or 0)
            transient = status in (408, 429) or status >= 500
            return PullError(where, f"{status} {_api_message(exc)}", transient=transient)
        if isinstance(exc, auth.RefreshError):
            return PullError(where, f"credentials refused: {one_line(exc)}", hint=GCS_CREDENTIALS)
        if isinstance(exc, auth.TransportError | requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            hint = "is STORAGE_EMULATOR_HOST right?" if os.environ.get("STORAGE_EMULATOR_HOST") else ""
            return PullError(where, f"connection failed: {_root_cause(exc)}", hint=hint, transient=True)
        if isinstance(exc, media.DataCorruption | requests.exceptions.RequestException):
            return PullError(where, f"transfer failed: {one_line(exc)}", transient=True)
        if isinstance(exc, media.InvalidResponse):
            status = int(getattr(exc.response, "status_code", 0) or 0)
            return http_status_error(where, status, "", credentials=GCS_CREDENTIALS)
        raise exc


def _api_message(exc: Any) -> str:
    return one_line(getattr(exc, "message", None) or exc, 200)
