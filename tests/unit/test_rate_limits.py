"""The front door's rate limits: token buckets per key, per tenant and per keyless
address, stepped with an injected clock (no sleeping)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from google.rpc import code_pb2, error_details_pb2

from avgate.kernel.errors import ResourceExhausted
from avgate.kernel.grpc.errors import status_for
from avgate.kernel.principal import Principal, bind_principal, unbind_principal
from gateway.addresses import ClientAddresses, address_group
from gateway.domain import RateLimit
from gateway.limits import LimitDefaults, RateLimiter, RateLimitInterceptor, retry_after
from tests.support import provider, public, unpack

TEN_PER_SECOND = RateLimit(requests_per_second=10, burst=5)
DEFAULTS = LimitDefaults(
    api_key=RateLimit(10, 5),
    tenant=RateLimit(20, 8),
    address=RateLimit(1, 2),
)


class Elapsed:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def admitted(limiter: RateLimiter, wanted: Sequence[tuple[str, RateLimit]], calls: int) -> int:
    return sum(1 for _ in range(calls) if limiter.admit(wanted)[0] == 0.0)


class TestTokenBucket:
    def test_a_full_bucket_admits_its_burst_at_once_and_no_more(self) -> None:
        limiter = RateLimiter(clock=Elapsed())
        assert admitted(limiter, [("k", TEN_PER_SECOND)], 20) == 5

    def test_it_refills_at_the_rate(self) -> None:
        elapsed = Elapsed()
        limiter = RateLimiter(clock=elapsed)
        four_per_second = RateLimit(requests_per_second=4, burst=5)
        admitted(limiter, [("k", four_per_second)], 5)
        elapsed.seconds += 0.75  # three tokens at 4/s (a time binary floating point holds exactly)
        assert admitted(limiter, [("k", four_per_second)], 10) == 3

    def test_it_never_holds_more_than_its_burst(self) -> None:
        elapsed = Elapsed()
        limiter = RateLimiter(clock=elapsed)
        admitted(limiter, [("k", TEN_PER_SECOND)], 5)
        elapsed.seconds += 3600
        assert admitted(limiter, [("k", TEN_PER_SECOND)], 20) == 5

    def test_a_refusal_says_how_long_until_a_token_is_there(self) -> None:
        elapsed = Elapsed()
        limiter = RateLimiter(clock=elapsed)
        admitted(limiter, [("k", TEN_PER_SECOND)], 5)
        elapsed.seconds += 0.04  # 0.4 of a token
        wait, name = limiter.admit([("k", TEN_PER_SECOND)])
        assert wait == pytest.approx(0.06)
        assert name == "k"
        elapsed.seconds += wait
        assert limiter.admit([("k", TEN_PER_SECOND)]) == (0.0, "")

    def test_a_refused_call_takes_no_token_from_the_other_buckets(self) -> None:
        limiter = RateLimiter(clock=Elapsed())
        tight, roomy = RateLimit(1, 1), RateLimit(1, 3)
        assert admitted(limiter, [("tight", tight), ("roomy", roomy)], 5) == 1
        assert admitted(limiter, [("roomy", roomy)], 5) == 2  # only the admitted call took from it

    def test_a_changed_limit_applies_to_a_bucket_in_use(self) -> None:
        limiter = RateLimiter(clock=Elapsed())
        admitted(limiter, [("k", TEN_PER_SECOND)], 2)  # 3 left
        assert admitted(limiter, [("k", RateLimit(10, 1))], 5) == 1  # cut to the new burst

    def test_each_replica_enforces_its_share(self) -> None:
        elapsed = Elapsed()
        limiter = RateLimiter(replicas=4, clock=elapsed)
        limit = RateLimit(requests_per_second=40, burst=20)
        assert admitted(limiter, [("k", limit)], 50) == 5
        elapsed.seconds += 0.1  # 10/s here: one token
        assert admitted(limiter, [("k", limit)], 5) == 1

    def test_a_share_never_drops_below_one_call(self) -> None:
        limiter = RateLimiter(replicas=10, clock=Elapsed())
        assert limiter.share(RateLimit(1, 2)) == (0.1, 1.0)


class TestEviction:
    def test_buckets_are_bounded_whatever_the_callers(self) -> None:
        limiter = RateLimiter(max_buckets=100, clock=Elapsed())
        for i in range(10_000):
            limiter.admit([(f"address:10.0.{i // 256}.{i % 256}", TEN_PER_SECOND)])
        assert len(limiter) == 100

    def test_the_least_recently_used_bucket_goes_first(self) -> None:
        limiter = RateLimiter(max_buckets=2, clock=Elapsed())
        admitted(limiter, [("busy", TEN_PER_SECOND)], 5)  # emptied
        limiter.admit([("idle", TEN_PER_SECOND)])
        limiter.admit([("busy", TEN_PER_SECOND)])  # refused, but now the most recent
        limiter.admit([("new", TEN_PER_SECOND)])  # evicts "idle"
        assert limiter.admit([("busy", TEN_PER_SECOND)])[0] > 0  # still empty: it was kept


class TestClientAddress:
    @pytest.mark.parametrize(
        ("address", "group"),
        [
            ("203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
        ],
        ids=["ipv4-alone", "ipv6-its-64", "ipv6-same-64", "ipv6-next-64", "ipv4-mapped"],
    )
    def test_ipv6_is_limited_per_64(self, address: str, group: str) -> None:
        assert address_group(address) == group

    def test_without_trusted_proxies_the_peer_is_the_client_and_the_header_is_ignored(self) -> None:
        addresses = ClientAddresses()
        assert addresses.of("ipv4:198.51.100.9:4242", [("x-forwarded-for", "1.2.3.4")]) == "198.51.100.9"

    def test_an_untrusted_peers_header_is_ignored(self) -> None:
        addresses = ClientAddresses(["10.0.0.0/8"])
        assert addresses.of("ipv4:198.51.100.9:4242", [("x-forwarded-for", "1.2.3.4")]) == "198.51.100.9"

    def test_a_trusted_proxy_names_the_client_in_the_last_hop(self) -> None:
        addresses = ClientAddresses(["10.0.0.0/8", "fd00::/8"])
        metadata = [("x-forwarded-for", "6.6.6.6, 203.0.113.7")]  # the first hop is what the client wrote
        assert addresses.of("ipv4:10.1.2.3:4242", metadata) == "203.0.113.7"
        assert addresses.of("ipv6:[fd00::5]:4242", [("x-forwarded-for", "2001:db8::9")]) == "2001:db8::9"

    def test_the_last_header_wins_when_a_proxy_appends_one(self) -> None:
        addresses = ClientAddresses(["10.0.0.0/8"])
        metadata = [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.7")]
        assert addresses.of("ipv4:10.1.2.3:4242", metadata) == "203.0.113.7"

    def test_a_malformed_hop_leaves_the_proxy_limited(self) -> None:
        addresses = ClientAddresses(["10.0.0.0/8"])
        assert addresses.of("ipv4:10.1.2.3:4242", [("x-forwarded-for", "nonsense")]) == "10.1.2.3"
        assert addresses.of("ipv4:10.1.2.3:4242", []) == "10.1.2.3"


class FakeContext:
    def __init__(self, metadata: Sequence[tuple[str, str]] = (), peer: str = "ipv4:198.51.100.9:4242"):
        self._metadata = tuple(metadata)
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer


class OperatorSetLimits:
    def __init__(self, keys: dict[str, RateLimit] | None = None, tenants: dict[str, RateLimit] | None = None):
        self.keys = keys or {}
        self.tenants = tenants or {}

    async def rate_limits(self, key_id: str, tenant_id: str | None) -> tuple[RateLimit | None, RateLimit | None]:
        return self.keys.get(key_id), self.tenants.get(tenant_id or "")


KEYED = (("authorization", "Bearer avgk_x_secret"),)
METHOD = "/avgate.identity.v1.IdentityService/CheckEligibility"


def interceptor(limits: OperatorSetLimits | None = None, trusted: Sequence[str] = ()) -> RateLimitInterceptor:
    return RateLimitInterceptor(
        RateLimiter(clock=Elapsed()), DEFAULTS, limits or OperatorSetLimits(), ClientAddresses(trusted)
    )


async def calls_admitted(limits: RateLimitInterceptor, principal: Principal, context: FakeContext, calls: int) -> int:
    bound = bind_principal(principal)
    try:
        admitted = 0
        for _ in range(calls):
            try:
                async with limits.scope(METHOD, context):  # type: ignore[arg-type]
                    admitted += 1
            except ResourceExhausted:
                pass
        return admitted
    finally:
        unbind_principal(bound)


class TestWhoIsLimited:
    async def test_each_key_has_a_bucket_of_its_own(self) -> None:
        limits = interceptor()
        a = provider("acme", subject="key-a")
        b = provider("globex", subject="key-b")
        assert await calls_admitted(limits, a, FakeContext(KEYED), 10) == 5
        assert await calls_admitted(limits, b, FakeContext(KEYED), 10) == 5

    async def test_a_tenants_keys_share_the_tenant_bucket(self) -> None:
        limits = interceptor()
        admitted = [
            await calls_admitted(limits, provider("acme", subject=f"key-{i}"), FakeContext(KEYED), 10) for i in range(3)
        ]
        assert admitted == [5, 3, 0]  # the tenant's burst of 8, whichever key asks

    async def test_keyless_callers_are_limited_per_address(self) -> None:
        limits = interceptor()
        anonymous = public()
        assert await calls_admitted(limits, anonymous, FakeContext(peer="ipv4:198.51.100.9:1"), 5) == 2
        assert await calls_admitted(limits, anonymous, FakeContext(peer="ipv4:198.51.100.10:1"), 5) == 2

    async def test_keyless_ipv6_callers_share_their_64(self) -> None:
        limits = interceptor()
        anonymous = public()
        assert await calls_admitted(limits, anonymous, FakeContext(peer="ipv6:[2001:db8::1]:1"), 1) == 1
        assert await calls_admitted(limits, anonymous, FakeContext(peer="ipv6:[2001:db8::ffff]:1"), 5) == 1
        assert await calls_admitted(limits, anonymous, FakeContext(peer="ipv6:[2001:db8:0:1::1]:1"), 5) == 2

    async def test_a_forged_forwarded_for_does_not_buy_a_fresh_bucket(self) -> None:
        limits = interceptor(trusted=["10.0.0.0/8"])
        anonymous = public()
        admitted = [
            await calls_admitted(limits, anonymous, FakeContext([("x-forwarded-for", f"1.2.3.{i}")]), 1)
            for i in range(5)
        ]
        assert sum(admitted) == 2

    async def test_behind_a_trusted_proxy_each_client_has_its_bucket(self) -> None:
        limits = interceptor(trusted=["10.0.0.0/8"])
        anonymous = public()
        for client in ("203.0.113.1", "203.0.113.2"):
            context = FakeContext([("x-forwarded-for", client)], peer="ipv4:10.0.0.2:1")
            assert await calls_admitted(limits, anonymous, context, 5) == 2

    async def test_an_operator_set_key_limit_replaces_the_default(self) -> None:
        limits = interceptor(OperatorSetLimits(keys={"key-a": RateLimit(1, 2)}))
        assert await calls_admitted(limits, provider("acme", subject="key-a"), FakeContext(KEYED), 10) == 2

    async def test_an_operator_set_tenant_limit_replaces_the_default(self) -> None:
        limits = interceptor(OperatorSetLimits(tenants={"acme": RateLimit(1, 3)}))
        admitted = [
            await calls_admitted(limits, provider("acme", subject=f"key-{i}"), FakeContext(KEYED), 10) for i in range(2)
        ]
        assert admitted == [3, 0]

    async def test_calls_without_a_principal_are_not_limited_here(self) -> None:
        limits = interceptor()
        for _ in range(50):
            async with limits.scope(METHOD, FakeContext()):  # type: ignore[arg-type]
                pass

    def test_health_and_reflection_are_not_limited(self) -> None:
        limits = interceptor()
        assert not limits.applies_to("/grpc.health.v1.Health/Check")
        assert limits.applies_to(METHOD)


class TestRefusal:
    async def test_over_the_limit_is_resource_exhausted_with_retry_info(self) -> None:
        limits = interceptor()
        principal = provider("acme", subject="key-a")
        await calls_admitted(limits, principal, FakeContext(KEYED), 5)
        bound = bind_principal(principal)
        try:
            with pytest.raises(ResourceExhausted) as refused:
                async with limits.scope(METHOD, FakeContext(KEYED)):  # type: ignore[arg-type]
                    pass
        finally:
            unbind_principal(bound)
        assert refused.value.retry_after_seconds == pytest.approx(0.1)  # one token at 10/s
        status = status_for(refused.value)
        assert status.code == code_pb2.RESOURCE_EXHAUSTED
        (retry,) = unpack(status.details, error_details_pb2.RetryInfo)
        assert retry.retry_delay.ToMilliseconds() == 100
        (info,) = unpack(status.details, error_details_pb2.ErrorInfo)
        assert info.reason == "ERROR_REASON_RATE_LIMITED"
        assert info.metadata["limit"] == "api_key"

    @pytest.mark.parametrize(("wait", "said"), [(0.0001, 0.001), (0.1, 0.1), (0.1234, 0.124)])
    def test_retry_info_rounds_up_to_the_millisecond(self, wait: float, said: float) -> None:
        assert retry_after(wait) == pytest.approx(said)
