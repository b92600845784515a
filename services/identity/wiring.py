"""Builds the code, limit, SMS and verifier components from IdentitySettings
(for the composition root; the verification flow's service step uses them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from avgate.kernel.settings import Environment
from services.identity.codes import HashKeyRing, OneTimeCodes
from services.identity.config import IdentitySettings
from services.identity.http_post import JsonPoster, read_secret_file
from services.identity.limits import AbuseLimits, LockoutPolicy, SendPolicy
from services.identity.sms import FileSmsSink, HttpSmsSender, SmsSender
from services.identity.vault import BlindIndexer, Vault
from services.identity.verifier import HttpIdentityVerifier, IdentityVerifier


def _now() -> datetime:
    return datetime.now(UTC)


def vault_and_indexer(settings: IdentitySettings) -> tuple[Vault, BlindIndexer]:
    """The personal-data vault and the blind indexer from the configured key files."""
    keks, index_keys = settings.vault_keys()
    return Vault(keks), BlindIndexer(index_keys)


def code_keys(settings: IdentitySettings) -> HashKeyRing:
    """The one-time-code hash keys from their key file (avgate.kernel.keyring, like the vault's keys)."""
    return HashKeyRing.from_key_file(settings.code_hash_keys())


def one_time_codes(
    settings: IdentitySettings, keys: HashKeyRing, *, clock: Callable[[], datetime] = _now
) -> OneTimeCodes:
    return OneTimeCodes(
        keys,
        ttl=timedelta(seconds=settings.code_ttl_seconds),
        max_attempts=settings.code_max_attempts,
        clock=clock,
    )


def abuse_limits(settings: IdentitySettings, keys: HashKeyRing, *, clock: Callable[[], datetime] = _now) -> AbuseLimits:
    return AbuseLimits(
        clock=clock,
        address_secret=keys.derive("limits/client-address"),
        sends=SendPolicy(
            phone_interval=timedelta(seconds=settings.send_interval_per_phone_seconds),
            phone_per_hour=settings.sends_per_phone_per_hour,
            address_per_hour=settings.sends_per_address_per_hour,
        ),
        lockouts=LockoutPolicy(
            per_address_threshold=settings.lockout_threshold_per_address,
            per_account_threshold=settings.lockout_threshold_per_account,
            durations=tuple(timedelta(seconds=s) for s in settings.lockout_seconds),
        ),
    )


def sms_sender(settings: IdentitySettings) -> SmsSender:
    if not settings.sms_url:
        return FileSmsSink(settings.own_sms_sink_file)
    poster = JsonPoster(
        settings.sms_url,
        bearer_token=read_secret_file(settings.sms_bearer_token_file),
        timeout=settings.sms_timeout_seconds,
        max_attempts=settings.sms_max_attempts,
    )
    return HttpSmsSender(poster)


def identity_verifier(settings: IdentitySettings) -> IdentityVerifier | None:
    """None when no verifier is configured (then no flow reaches AUTHORITATIVELY_VERIFIED)."""
    if not settings.verifier_url:
        return None
    poster = JsonPoster(
        settings.verifier_url,
        bearer_token=read_secret_file(settings.verifier_credentials_file),
        timeout=settings.verifier_timeout_seconds,
        max_attempts=settings.verifier_max_attempts,
    )
    return HttpIdentityVerifier(poster, refuse_stand_in=settings.env is Environment.PRODUCTION)
