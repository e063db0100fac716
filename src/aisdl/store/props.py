"""Bucket properties: AIS defaults, and the validated partial merge of `set-bprops`.

Props are kept as the JSON AIS sends in `Ais-Bucket-Props`, string-typed fields included, so the
API hands them out unchanged and Go clients can unmarshal them.
"""

from __future__ import annotations

import copy
from typing import Any

from aisdl.errors import BadRequest
from aisdl.models import (
    PROVIDER_SCHEME,
    REMOTE_PROVIDERS,
    Bucket,
    check_bucket_name,
    normalize_provider,
)

Props = dict[str, Any]

CHECKSUM_TYPES = ("xxhash2", "xxhash", "md5", "crc32c", "sha256", "sha512", "none")
_SETTABLE = (
    "backend_bck", "versioning", "checksum", "lru", "mirror", "chunks", "ec", "access",
    "rate_limit", "features", "write_policy", "extra",
)
_NO_BACKEND: Props = {"name": "", "provider": "", "namespace": {"uuid": "", "name": ""}}


def default_props(bck: Bucket, created_ns: int, bid: int) -> Props:
    """The props AIS gives a new bucket (spec 5.4): xxhash2 checksums, versioning on."""
    return {
        "backend_bck": copy.deepcopy(_NO_BACKEND),
        "write_policy": {"data": "immediate", "md": "immediate"},
        "provider": bck.provider,
        "checksum": {"type": "xxhash2", "validate_cold_get": False, "validate_warm_get": False,
                     "validate_obj_move": False, "enable_read_range": False},
        "extra": {},
        "rate_limit": {
            "backend": {"interval": "1m", "max_tokens": 1000, "enabled": False, "num_retries": 3},
            "frontend": {"interval": "1m", "max_tokens": 1000, "enabled": False,
                         "burst_size": 375},
        },
        "ec": {"compression": "never", "bundle_multiplier": 2, "burst_buffer": 128,
               "objsize_limit": 262144, "data_slices": 2, "parity_slices": 2, "enabled": False,
               "disk_only": False},
        "chunks": {"objsize_limit": "0B"},
        "mirror": {"copies": 2, "burst_buffer": 128, "enabled": False},
        "lru": {"dont_evict_time": "2h", "capacity_upd_time": "10m", "enabled": False},
        "access": "18446744073709551615", "features": "0", "bid": str(bid),
        "created": str(created_ns),
        "versioning": {"enabled": True, "validate_warm_get": False, "synchronize": False},
    }


def with_defaults(stored: Props, defaults: Props) -> Props:
    """Stored props over the defaults, so keys added to the defaults later appear too."""
    out = copy.deepcopy(defaults)
    for key, value in stored.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "extra":
            out[key] = with_defaults(value, out[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_props(bck: Bucket, old: Props, partial: Props) -> Props:
    """`old` with the partial `BpropsToSet` applied; BadRequest on unknown keys or bad types."""
    if not isinstance(partial, dict):
        raise BadRequest("bucket props must be a JSON object")
    new = copy.deepcopy(old)
    for key, value in partial.items():
        if key == "force":
            continue
        if key not in _SETTABLE:
            raise BadRequest(f"invalid bucket property {key!r}")
        if key == "backend_bck":
            new[key] = _backend(bck, value)
        elif key == "extra":
            new[key] = _merge_free(old.get(key, {}), value, key)
        else:
            new[key] = _merge_typed(old[key], value, key)
    if new["checksum"]["type"] not in CHECKSUM_TYPES:
        raise BadRequest(f"invalid checksum type {new['checksum']['type']!r}"
                         f" (expected one of {', '.join(CHECKSUM_TYPES)})")
    return new


def _merge_typed(old: Any, new: Any, path: str) -> Any:
    """Merge `new` into `old`, keeping the type of every existing leaf."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            raise BadRequest(f"bucket property {path!r} must be a JSON object")
        out = dict(old)
        for k, v in new.items():
            if k not in old:
                raise BadRequest(f"invalid bucket property {path + '.' + k!r}")
            out[k] = _merge_typed(old[k], v, f"{path}.{k}")
        return out
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise BadRequest(f"bucket property {path!r} must be true or false")
        return new
    if isinstance(old, int):
        if isinstance(new, bool) or not isinstance(new, int):
            raise BadRequest(f"bucket property {path!r} must be an integer")
        return new
    # Strings: AIS sends some integers as decimal strings (access, features); accept both.
    if isinstance(new, bool) or not isinstance(new, (str, int)):
        raise BadRequest(f"bucket property {path!r} must be a string")
    return str(new)


def _merge_free(old: Any, new: Any, path: str) -> Any:
    if not isinstance(new, dict):
        raise BadRequest(f"bucket property {path!r} must be a JSON object")
    out = dict(old) if isinstance(old, dict) else {}
    out.update(copy.deepcopy(new))
    return out


def _backend(bck: Bucket, value: Any) -> Props:
    """Validate a `backend_bck` value: empty name and provider detach; else a remote bucket."""
    if not isinstance(value, dict):
        raise BadRequest("bucket property 'backend_bck' must be a JSON object")
    name = value.get("name") or ""
    provider = value.get("provider") or ""
    if not isinstance(name, str) or not isinstance(provider, str):
        raise BadRequest("backend_bck name and provider must be strings")
    if not name and not provider:
        return copy.deepcopy(_NO_BACKEND)
    provider = normalize_provider(provider)
    if provider not in REMOTE_PROVIDERS or not name:
        raise BadRequest(f'Backend bucket "{PROVIDER_SCHEME[provider]}://{name}" must be remote')
    if bck.provider != "ais":
        raise BadRequest(f"bucket {bck.cname}: only ais buckets can have a backend bucket")
    check_bucket_name(name)
    return {"name": name, "provider": provider, "namespace": {"uuid": "", "name": ""}}
