from __future__ import annotations

import pytest

from shared.auth import AuthError, make_api_key, make_stream_token, verify_api_key, verify_stream_token


def test_api_keys_round_trip_and_resist_forgery() -> None:
    key = make_api_key("s3cret", "alice")
    assert verify_api_key("s3cret", key) == ("alice", 0)
    with pytest.raises(AuthError):
        verify_api_key("other-secret", key)
    with pytest.raises(AuthError):
        verify_api_key("s3cret", key[:-2] + "xx")
    with pytest.raises(AuthError):
        verify_api_key("s3cret", "Bearer nonsense")


def test_stream_tokens_are_scoped_to_one_pack_and_expire() -> None:
    token = make_stream_token("s3cret", "alice", "pack-1", ttl_s=60, now=1000)
    assert verify_stream_token("s3cret", token, "pack-1", now=1030) == "alice"
    with pytest.raises(AuthError, match="another pack"):
        verify_stream_token("s3cret", token, "pack-2", now=1030)
    with pytest.raises(AuthError, match="expired"):
        verify_stream_token("s3cret", token, "pack-1", now=1061)
    with pytest.raises(AuthError, match="invalid"):
        verify_stream_token("other", token, "pack-1", now=1030)
