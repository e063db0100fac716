"""Where and as whom the node reaches the clouds: read once from the environment the node was
started with (AWS_*, GOOGLE_APPLICATION_CREDENTIALS / STORAGE_EMULATOR_HOST, AZURE_STORAGE_*).
Kept apart from `cloud.py` so that configuration does not import obstore."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CloudSettings:
    """Credentials and endpoints for the three clouds; None = not configured (anonymous)."""

    allow_private: bool = False
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    aws_region: str | None = None
    aws_endpoint: str | None = None
    aws_web_identity_token_file: str | None = None   # with aws_role_arn: EKS/IRSA via STS
    aws_role_arn: str | None = None
    gcs_service_account: str | None = None      # path of a service-account JSON file
    gcs_authorized_user: str | None = None      # path of a `gcloud auth` ADC file
    gcs_base_url: str | None = None             # emulator (STORAGE_EMULATOR_HOST)
    azure_account: str | None = None
    azure_key: str | None = field(default=None, repr=False)
    azure_sas: str | None = field(default=None, repr=False)
    azure_endpoint: str | None = None
    # a service principal: (AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID)
    azure_client: tuple[str, str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, allow_private: bool = False) -> CloudSettings:
        """Read the standard AWS_*, GOOGLE_* / STORAGE_EMULATOR_HOST and AZURE_* variables."""
        return cls(allow_private=allow_private, **_aws_env(env), **_gcs_env(env),
                   **_azure_env(env))


def _get(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def _aws_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "aws_access_key_id": _get(env, "AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": _get(env, "AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": _get(env, "AWS_SESSION_TOKEN"),
        "aws_region": _get(env, "AWS_REGION", "AWS_DEFAULT_REGION"),
        "aws_endpoint": _get(env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        "aws_web_identity_token_file": _get(env, "AWS_WEB_IDENTITY_TOKEN_FILE"),
        "aws_role_arn": _get(env, "AWS_ROLE_ARN"),
    }
    if not out["aws_access_key_id"]:
        out.update(_aws_profile(env, out["aws_region"]))
    return out


def _aws_profile(env: Mapping[str, str], region: str | None) -> dict[str, Any]:
    """Static keys (and region) of AWS_PROFILE or `default` from the shared files. Profiles
    that need SSO, a role or credential_process are not supported (obstore has no chain)."""
    home = Path(env.get("HOME", "~")).expanduser()
    profile = _get(env, "AWS_PROFILE", "AWS_DEFAULT_PROFILE") or "default"
    creds = _ini_section(_get(env, "AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials",
                         profile)
    conf = _ini_section(_get(env, "AWS_CONFIG_FILE") or home / ".aws/config",
                        profile if profile == "default" else f"profile {profile}")
    keys = {**conf, **creds}
    out: dict[str, Any] = {}
    if keys.get("aws_access_key_id") and keys.get("aws_secret_access_key"):
        out = {"aws_access_key_id": keys["aws_access_key_id"],
               "aws_secret_access_key": keys["aws_secret_access_key"],
               "aws_session_token": keys.get("aws_session_token")}
    if not region and keys.get("region"):
        out["aws_region"] = keys["region"]
    return out


def _ini_section(path: str | Path, section: str) -> dict[str, str]:
    import configparser  # here: every `ais` command imports this module, few read INI files

    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
        return dict(parser[section]) if parser.has_section(section) else {}
    except (OSError, configparser.Error):
        return {}


def _gcs_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    emulator = _get(env, "STORAGE_EMULATOR_HOST")
    if emulator:  # as Google's own clients do: the emulator wins and needs no credentials
        out["gcs_base_url"] = emulator if "://" in emulator else f"http://{emulator}"
        return out
    path = _get(env, "GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        kind = _gcs_file_kind(path)
        out["gcs_authorized_user" if kind == "authorized_user" else "gcs_service_account"] = path
    return out


def _gcs_file_kind(path: str) -> str:
    try:
        return str(json.loads(Path(path).read_text()).get("type", "service_account"))
    except (OSError, ValueError, AttributeError):
        return "service_account"  # obstore reports the unreadable file when the store is built


def _azure_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "azure_account": _get(env, "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT"),
        "azure_key": _get(env, "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY"),
        "azure_sas": _get(env, "AZURE_STORAGE_SAS_TOKEN"),
        "azure_endpoint": _get(env, "AZURE_STORAGE_ENDPOINT", "AZURE_STORAGE_BLOB_ENDPOINT"),
    }
    client = [_get(env, n) for n in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID")]
    if all(client):
        out["azure_client"] = tuple(client)
    conn = _get(env, "AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        out.update({k: v for k, v in _azure_connection_string(conn).items() if v})
    return out


def _azure_connection_string(conn: str) -> dict[str, str | None]:
    parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        parts.setdefault("AccountName", "devstoreaccount1")
        parts.setdefault("BlobEndpoint", "http://127.0.0.1:10000/devstoreaccount1")
    endpoint = parts.get("BlobEndpoint")
    if not endpoint and parts.get("AccountName") and parts.get("EndpointSuffix"):
        endpoint = (f"{parts.get('DefaultEndpointsProtocol', 'https')}://"
                    f"{parts['AccountName']}.blob.{parts['EndpointSuffix']}")
    return {"azure_account": parts.get("AccountName"), "azure_key": parts.get("AccountKey"),
            "azure_sas": parts.get("SharedAccessSignature"), "azure_endpoint": endpoint}
