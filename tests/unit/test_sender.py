"""mailapi.sender: the From address decided by the sender policy alone."""

import pytest

from mailapi.sender import (
    SenderDomainNotConfigured,
    SenderPolicy,
    SenderPolicyError,
    resolve_sender,
)


def _policy(*, domain: str = "example.org", allow_any: bool = False,
            allowlist: tuple[str, ...] = ()) -> SenderPolicy:
    return SenderPolicy(domain=domain, default_local_part="no-reply",
                        allow_any_local_part=allow_any, allowlist=allowlist,
                        display_name="Example")


@pytest.mark.parametrize("requested", [None, "no-reply", "support"])
def test_no_domain_configured(requested: str | None) -> None:
    with pytest.raises(SenderDomainNotConfigured):
        resolve_sender(_policy(domain="", allow_any=True), requested)


@pytest.mark.parametrize("requested", [None, "no-reply"])
def test_default_local_part(requested: str | None) -> None:
    assert resolve_sender(_policy(), requested) == "no-reply@example.org"


def test_allowlisted_local_part() -> None:
    policy = _policy(allowlist=("support", "Billing"))
    assert resolve_sender(policy, "support") == "support@example.org"
    # The allowlist is matched case-insensitively; the requested spelling is kept.
    assert resolve_sender(policy, "billing") == "billing@example.org"
    assert resolve_sender(policy, "SUPPORT") == "SUPPORT@example.org"


def test_allow_any_local_part() -> None:
    policy = _policy(allow_any=True)
    assert resolve_sender(policy, "anything.at-all") == "anything.at-all@example.org"


@pytest.mark.parametrize("allowlist", [(), ("support",)])
def test_refused_local_part(allowlist: tuple[str, ...]) -> None:
    with pytest.raises(SenderPolicyError) as caught:
        resolve_sender(_policy(allowlist=allowlist), "ceo")
    assert caught.value.field == "fromLocalPart"
    assert "not permitted" in str(caught.value)


@pytest.mark.parametrize(
    "requested",
    ["", "with space", "a..b", ".leading", "trailing.", "x@evil.example",
     "a\r\nBcc: x", "x" * 65, "ünï"],
)
@pytest.mark.parametrize("allow_any", [False, True])
def test_invalid_local_part(requested: str, allow_any: bool) -> None:
    policy = _policy(allow_any=allow_any, allowlist=(requested,))
    with pytest.raises(SenderPolicyError) as caught:
        resolve_sender(policy, requested)
    assert caught.value.field == "fromLocalPart"
    assert str(caught.value).startswith("fromLocalPart must be an e-mail local part")


def test_longest_valid_local_part_accepted() -> None:
    assert resolve_sender(_policy(allow_any=True), "x" * 64) == "x" * 64 + "@example.org"
