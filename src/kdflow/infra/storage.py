"""One storage interface over local directories and ``s3://bucket/prefix`` (boto3).

Uploads are never visible half-written (local: temp name + rename; S3: a single PUT is atomic) and are
verified (size and sha256 kept as object metadata and checked after the upload). Downloads land under a
temp name and are checked against the stored sha256 before the rename. Transient S3 errors are retried
by botocore's standard mode: at most ``max_attempts`` retries after the first try; the endpoint comes from ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` and credentials from the standard chain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from kdflow.errors import StorageError
from kdflow.infra.io import sha256_file

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
META_SHA = "sha256"
META_SIZE = "size"


def validate_key(key: str, field: str = "key") -> str:
    """Relative POSIX key without '..', empty parts or a leading '/'."""
    if not key or key.startswith("/") or "\\" in key:
        raise StorageError(
            field, f"key '{key}' must be a relative path", "use a relative key such as runs/123/model.pt"
        )
    if any(p in ("..", ".", "") for p in key.split("/")):
        raise StorageError(field, f"key '{key}' contains '..', '.' or an empty part", "use a plain relative key")
    return key


def parse_s3_uri(uri: str, field: str = "storage.root") -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise StorageError(field, f"'{uri}' is not an s3:// URI", "write it as s3://bucket/prefix")
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket or ""):
        raise StorageError(
            field,
            f"'{uri}' has an invalid bucket name '{bucket}'",
            "use 3-63 lowercase letters, digits, dots or dashes, e.g. s3://kdflow/runs",
        )
    prefix = prefix.strip("/")
    if prefix:
        validate_key(prefix, field)
    return bucket, prefix


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StorageError("storage.root", f"'{self.root}' is not writable", "choose a writable directory")

    def put_file(self, local: str | os.PathLike, key: str) -> dict:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(local)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            if sha256_file(tmp) != digest:
                raise StorageError(key, "copy does not match its source (sha256)", "retry; check the disk")
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return {"uri": str(dest), META_SHA: digest, META_SIZE: dest.stat().st_size}

    def get_file(self, key: str, local: str | os.PathLike) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise StorageError(key, f"'{src}' not found", "check the key and the storage root")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)
        return local

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp")
        )


class S3Store:
    def __init__(self, uri: str, max_attempts: int = 4, connect_timeout: float = 3.0, read_timeout: float = 20.0):
        import boto3
        from botocore.config import Config as BotoConfig

        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(uri)
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        # a fresh session per store: boto3's default session caches credentials for the process lifetime
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=BotoConfig(
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                s3={"addressing_style": "path"},
            ),
        )

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, e: Exception, what: str) -> StorageError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(e, NoCredentialsError):
            return StorageError(
                "AWS_ACCESS_KEY_ID", "no S3 credentials found", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(e, ClientError):
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",) or (status == 404 and what == "bucket"):
                return StorageError(
                    "storage.root", f"bucket '{self.bucket}' does not exist", "create it or fix the bucket name"
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
                return StorageError(
                    "AWS_ACCESS_KEY_ID",
                    f"S3 refused the credentials ({code or status})",
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                )
            if code in ("NoSuchKey", "404") or status == 404:
                return StorageError(what, f"s3://{self.bucket}/{what} not found", "check the key and the storage root")
            return StorageError(what, f"S3 error {code or status}", "check the S3 server and try again")
        if isinstance(e, EndpointConnectionError) or "Connect" in type(e).__name__ or "Timeout" in type(e).__name__:
            return StorageError(
                "AWS_ENDPOINT_URL",
                f"S3 endpoint unreachable after retries ({type(e).__name__})",
                "start the S3 server (make stack) or fix AWS_ENDPOINT_URL",
            )
        return StorageError(
            what, f"S3 failure ({type(e).__name__}: {str(e)[:80]})", "check the S3 server and try again"
        )

    def check(self) -> None:
        """Fail fast before any training: endpoint reachable, credentials accepted, bucket present."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as e:  # noqa: BLE001 - translated to one line
            raise self._error(e, "bucket") from None

    def put_file(self, local: str | os.PathLike, key: str) -> dict:
        full = self._key(key)
        digest = sha256_file(local)
        size = Path(local).stat().st_size
        try:
            with open(local, "rb") as fh:  # one PUT: the object appears whole or not at all
                self.client.put_object(
                    Bucket=self.bucket, Key=full, Body=fh, Metadata={META_SHA: digest, META_SIZE: str(size)}
                )
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except Exception as e:  # noqa: BLE001
            raise self._error(e, key) from None
        if head["ContentLength"] != size or head.get("Metadata", {}).get(META_SHA) != digest:
            raise StorageError(key, "uploaded object does not match the local file (size/sha256)", "retry the upload")
        return {"uri": f"s3://{self.bucket}/{full}", META_SHA: digest, META_SIZE: size}

    def get_file(self, key: str, local: str | os.PathLike) -> Path:
        full = self._key(key)
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        os.close(fd)
        try:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=full)
                self.client.download_file(self.bucket, full, tmp)
            except Exception as e:  # noqa: BLE001
                raise self._error(e, key) from None
            expected = head.get("Metadata", {}).get(META_SHA)
            if expected and sha256_file(tmp) != expected:
                raise StorageError(
                    key, "downloaded object fails its sha256 check", "re-upload the object; it is corrupt"
                )
            os.replace(tmp, local)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return local

    def list(self, prefix: str = "") -> list[str]:
        """Keys under the folder ``prefix`` (relative to the store): ``fm`` lists ``fm/...``, never ``fm-old/...``."""
        folder = self._key(prefix) if prefix else self.prefix
        full = f"{folder}/" if folder else ""
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [o["Key"] for o in page.get("Contents", [])]
        except Exception as e:  # noqa: BLE001
            raise self._error(e, prefix or "/") from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)


def open_store(root: str | os.PathLike):
    root = str(root)
    if root.startswith("s3://"):
        return S3Store(root)
    if "://" in root:
        raise StorageError("storage.root", f"unsupported URI '{root}'", "use a local directory or s3://bucket/prefix")
    return LocalStore(root)


COMPLETE = "_COMPLETE.json"  # written last: a prefix without it holds an interrupted upload


def put_files(store, files: list[tuple[Path, str]], prefix: str) -> list[dict]:
    """Upload ``(local file, relative key)`` pairs under ``prefix``, then the completion marker listing them.

    A server that dies midway leaves no marker, so readers (:func:`is_complete`) see the prefix as absent.
    """
    uploaded = [store.put_file(local, f"{prefix}/{key}") for local, key in files]
    marker = {"files": {key: meta[META_SHA] for (_, key), meta in zip(files, uploaded, strict=True)}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / COMPLETE
        path.write_text(json.dumps(marker, sort_keys=True))
        store.put_file(path, f"{prefix}/{COMPLETE}")
    return uploaded


def is_complete(store, prefix: str) -> bool:
    return f"{prefix}/{COMPLETE}" in store.list(prefix)


def put_dir(store, local_dir: str | os.PathLike, prefix: str) -> list[dict]:
    base = Path(local_dir)
    files = [(p, p.relative_to(base).as_posix()) for p in sorted(base.rglob("*")) if p.is_file()]
    return put_files(store, files, prefix)


def get_dir(store, prefix: str, local_dir: str | os.PathLike) -> Path:
    """Download every key under the folder ``prefix`` into ``local_dir``, keeping the layout below it."""
    keys = store.list(prefix)
    if not keys:
        raise StorageError("data.source", f"nothing stored under '{prefix}'", "upload the data first or fix the URI")
    for key in keys:
        store.get_file(key, Path(local_dir) / (key[len(prefix) + 1 :] if prefix else key))
    return Path(local_dir)


def s3_source_resolver(uri: str, cache_dir: Path) -> Path:
    """data.source = s3://bucket/prefix -> a verified local copy (registered with kdflow.data.prepared)."""
    bucket, prefix = parse_s3_uri(uri, "data.source")
    store = S3Store(f"s3://{bucket}")
    store.check()
    target = Path(cache_dir) / bucket / (prefix or "_root")
    return get_dir(store, prefix, target) if prefix else get_dir(store, "", target)


def s3_model_resolver(uri: str) -> Path:
    """teacher.source = s3://bucket/key/model.pt -> a verified local file."""
    bucket, key = parse_s3_uri(uri, "teacher.source")
    if not key:
        raise StorageError("teacher.source", f"'{uri}' names no object", "write s3://bucket/path/model.pt")
    store = S3Store(f"s3://{bucket}")
    target = Path(tempfile.mkdtemp(prefix="kdflow-teacher-")) / PurePosixPath(key).name
    return store.get_file(key, target)
