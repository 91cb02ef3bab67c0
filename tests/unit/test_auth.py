from __future__ import annotations

import base64

import pytest

from shared.auth import (
    USER_SCOPES,
    AuthError,
    KeyClaims,
    Keyring,
    make_api_key,
    make_named_key,
    make_stream_token,
    missing_scopes,
    new_key_id,
    parse_secrets,
    verify_api_key,
    verify_stream_token,
)

KEY_ID = "key_0123456789abcdef"


def test_api_keys_round_trip_and_resist_forgery() -> None:
    key = make_api_key("s3cret", "alice")
    assert verify_api_key("s3cret", key) == KeyClaims("alice", 0, None, USER_SCOPES, 0)
    with pytest.raises(AuthError):
        verify_api_key("other-secret", key)
    with pytest.raises(AuthError):
        verify_api_key("s3cret", key[:-2] + "xx")
    with pytest.raises(AuthError):
        verify_api_key("s3cret", "Bearer nonsense")


def test_account_keys_keep_their_format_and_hold_every_user_scope_but_ops() -> None:
    key = make_api_key("s3cret", "alice", generation=3)
    payload = key[len("pk_"):].rsplit(".", 1)[0]
    assert base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) == b"alice:3"  # the first format, unchanged
    claims = verify_api_key("s3cret", key)
    assert (claims.user_id, claims.generation, claims.key_id) == ("alice", 3, None)
    assert claims.has("packs:write") and claims.has("packs:read") and claims.has("keys") and not claims.has("ops")


def test_named_keys_carry_user_generation_id_and_scopes() -> None:
    key = make_named_key("s3cret", "alice", KEY_ID, ["packs:read", "keys", "packs:read"], generation=2)
    claims = verify_api_key("s3cret", key)
    assert claims == KeyClaims("alice", 2, KEY_ID, frozenset({"packs:read", "keys"}), 0)
    assert not claims.has("packs:write")
    with pytest.raises(AuthError, match="invalid"):
        verify_api_key("other", key)
    with pytest.raises(ValueError):
        make_named_key("s3cret", "alice", KEY_ID, [])


def test_one_format_cannot_pass_for_the_other() -> None:
    """The two formats are signed under different labels: a payload moved from one to the
    other (or edited to claim more scopes) no longer matches its mac."""
    named = make_named_key("s3cret", "alice", KEY_ID, ["packs:read"])
    payload, mac = named[len("pk_"):].rsplit(".", 1)
    text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    wider = base64.urlsafe_b64encode(text.replace("packs:read", "packs:read,ops").encode()).decode().rstrip("=")
    with pytest.raises(AuthError, match="invalid"):
        verify_api_key("s3cret", f"pk_{wider}.{mac}")
    account = make_api_key("s3cret", "alice")
    account_payload = account[len("pk_"):].rsplit(".", 1)[0]
    with pytest.raises(AuthError):
        verify_api_key("s3cret", f"pk_{account_payload}.{mac}")
    garbage = base64.urlsafe_b64encode(b"v2 alice x").decode().rstrip("=")
    with pytest.raises(AuthError):
        verify_api_key("s3cret", f"pk_{garbage}.{mac}")


def test_key_ids_are_random_and_well_formed() -> None:
    ids = {new_key_id() for _ in range(100)}
    assert len(ids) == 100 and all(i.startswith("key_") and len(i) == 20 for i in ids)


def test_stream_tokens_are_scoped_to_one_pack_and_expire() -> None:
    token = make_stream_token("s3cret", "alice", "pack-1", ttl_s=60, now=1000)
    assert verify_stream_token("s3cret", token, "pack-1", now=1030).user_id == "alice"
    with pytest.raises(AuthError, match="another pack"):
        verify_stream_token("s3cret", token, "pack-2", now=1030)
    with pytest.raises(AuthError, match="expired"):
        verify_stream_token("s3cret", token, "pack-1", now=1061)
    with pytest.raises(AuthError, match="invalid"):
        verify_stream_token("other", token, "pack-1", now=1030)


def test_stream_tokens_carry_the_key_that_minted_them() -> None:
    token = make_stream_token("s3cret", "alice", "pack-1", ttl_s=60, now=1000, generation=4, key_id=KEY_ID)
    claims = verify_stream_token("s3cret", token, "pack-1", now=1000)
    assert (claims.user_id, claims.pack_id, claims.generation, claims.key_id) == ("alice", "pack-1", 4, KEY_ID)
    by_account_key = verify_stream_token("s3cret", make_stream_token("s3cret", "bob", "p", 60, generation=1), "p")
    assert (by_account_key.generation, by_account_key.key_id) == (1, None)


def test_stream_tokens_of_the_first_format_count_as_minted_by_the_generation_0_account_key() -> None:
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(b"alice:pack-1:2000").decode().rstrip("=")
    mac = base64.urlsafe_b64encode(hmac.new(b"s3cret", f"stream:{payload}".encode(), hashlib.sha256).digest()[:24]).decode().rstrip("=")
    claims = verify_stream_token("s3cret", f"st_{payload}.{mac}", "pack-1", now=1000)
    assert (claims.user_id, claims.generation, claims.key_id) == ("alice", 0, None)


def test_secrets_list_first_signs_every_one_verifies() -> None:
    assert parse_secrets("new, old ,,new", "ignored") == ("new", "old")
    assert parse_secrets("", "only") == ("only",)
    assert parse_secrets(" , ", "") == ()
    ring = Keyring(parse_secrets("new,old"))
    assert ring.signing == "new"
    old_key = make_api_key("old", "alice")
    assert ring.verify_key(old_key).secret_index == 1
    assert ring.verify_key(make_named_key(ring.signing, "alice", KEY_ID, ["keys"])).secret_index == 0
    token = make_stream_token("old", "alice", "p", 60)
    assert ring.verify_stream_token(token, "p").secret_index == 1
    with pytest.raises(AuthError):
        Keyring(("new",)).verify_key(old_key)  # the old secret dropped: its keys are dead
    with pytest.raises(ValueError):
        Keyring(())


def test_settings_read_the_secrets_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.settings import CommonSettings

    monkeypatch.setenv("PACKLINE_SECRET", "old")
    assert CommonSettings().keyring.secrets == ("old",)
    monkeypatch.setenv("PACKLINE_SECRETS", "new,old")
    s = CommonSettings()
    assert s.keyring.secrets == ("new", "old") and s.packline_secret == "new"


def test_missing_scopes_are_named_in_the_contract_order() -> None:
    assert missing_scopes(USER_SCOPES, ["ops", "packs:read"]) == ["ops"]
    assert missing_scopes({"packs:read"}, ["keys", "packs:write"]) == ["packs:write", "keys"]
    assert missing_scopes({"keys"}, ["keys"]) == []
