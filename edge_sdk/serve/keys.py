"""Tenants' API keys: random bearer tokens, stored only as their SHA-256 (a key has 256 random bits, so a fast
hash is as safe as a slow one and keeps every request's check cheap)."""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edge_sdk.errors import ConfigError
from edge_sdk.serve.db import ApiKey, Tenant, now

KEY_PREFIX = "esk-"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(sessions: sessionmaker, tenant_name: str) -> str:
    """A new key for ``tenant_name`` (the tenant is made on its first key). The key is shown only here."""
    if not _TENANT_NAME.match(tenant_name):
        raise ConfigError(f"tenant name {tenant_name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with sessions.begin() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
        if tenant is None:
            tenant = Tenant(name=tenant_name)
            session.add(tenant)
            session.flush()
        session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:12]))
    return key


def revoke_key(sessions: sessionmaker, key: str) -> str:
    """Revoke ``key``; returns its tenant's name. ConfigError when no active key matches."""
    with sessions.begin() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key.strip())))
        if row is None or row.revoked_at is not None:
            raise ConfigError("no active API key matches; pass the whole key as `keys create` printed it")
        row.revoked_at = now()
        return session.get(Tenant, row.tenant_id).name


def authenticate(sessions: sessionmaker, key: str) -> Tenant | None:
    """The tenant whose active key ``key`` is, or None."""
    with sessions() as session:
        return session.scalar(select(Tenant).join(ApiKey, ApiKey.tenant_id == Tenant.id)
                              .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
