"""Property tests of the Authorization header parser and the ID-token checks (no I/O).

Whatever the header or token, the answer is a token, an Unauthorized or an InvalidIdToken:
never another exception (a 500) and never an acceptance of something that was not signed.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from id_token_signer import AUDIENCE, KEY_ID, _key_and_cert, token
from starlette.datastructures import Headers

from common.http.auth import Unauthorized, bearer_token
from common.http.id_tokens import IdTokenVerifier, InvalidIdToken

PRIVATE, CERT = _key_and_cert()
CERTS = {KEY_ID: CERT.decode()}
CALLER = "caller@example.iam.gserviceaccount.com"
LATIN_1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=200)
HEADER_TEXT = LATIN_1 | st.builds(
    lambda s, t: f"{s} {t}", st.sampled_from(["Bearer", "bearer", "Basic", "B"]), LATIN_1
)


def _headers(*values: str) -> Headers:
    return Headers(raw=[(b"authorization", value.encode("latin-1")) for value in values])


@settings(max_examples=500)
@given(HEADER_TEXT)
def test_any_authorization_header_is_a_token_or_a_401(value):
    try:
        found = bearer_token(_headers(value))
    except Unauthorized:
        return
    assert value.strip().lower().startswith("bearer ")
    assert found and found == value.strip().split()[-1]


def test_parser_cases():
    assert bearer_token(_headers("Bearer abc.def-ghi_~+/==")) == "abc.def-ghi_~+/=="
    assert bearer_token(_headers("bEaReR    abc")) == "abc"
    for bad in ("", "Bearer", "Bearer ", "Bearer a b", "Token abc", "Bearer =abc", "Bearer a=b"):
        with pytest.raises(Unauthorized):
            bearer_token(_headers(bad))
    with pytest.raises(Unauthorized, match="more than one"):
        bearer_token(_headers("Bearer a", "Bearer a"))


def _signer():
    from google.auth import crypt

    return crypt.RSASigner.from_string(PRIVATE, key_id=KEY_ID)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@settings(max_examples=300)
@given(st.text(max_size=300) | st.binary(max_size=300).map(_b64))
def test_any_token_text_is_invalid_not_a_crash(text):
    with pytest.raises(InvalidIdToken):
        IdTokenVerifier(AUDIENCE).check(text, CERTS)


@settings(max_examples=200)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "x"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=10),
            st.sampled_from(["RS256", "none", "HS256", KEY_ID]),
        ),
    ),
    payload=st.one_of(st.lists(st.integers()), st.dictionaries(st.text(max_size=5), st.integers())),
)
def test_forged_headers_and_payloads_are_refused(header, payload):
    forged = ".".join(
        (_b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode()), _b64(b"sig"))
    )
    with pytest.raises(InvalidIdToken):
        IdTokenVerifier(AUDIENCE).check(forged, CERTS)


@pytest.mark.parametrize(
    "claims, allowed, accepted",
    [
        ({}, set(), True),
        ({"email_verified": True}, {"caller@example.iam.gserviceaccount.com"}, True),
        ({"email_verified": False}, {"caller@example.iam.gserviceaccount.com"}, False),
        ({}, {"caller@example.iam.gserviceaccount.com"}, False),  # email_verified missing
        ({"email_verified": True}, {"someone@else.com"}, False),
        ({"iss": "https://evil.example"}, set(), False),
        ({"iat": int(time.time()) + 3600}, set(), False),  # issued in the future
        ({"aud": ["other", AUDIENCE]}, set(), True),  # RFC 7519 4.1.3: an array holding ours
        ({"aud": ["other", "another"]}, set(), False),
        ({"aud": [AUDIENCE, 5]}, set(), False),  # an array of strings or nothing
        ({"aud": "https://other.a.run.app"}, set(), False),
        ({"nbf": int(time.time()) + 3600}, set(), False),  # RFC 7519 4.1.5: not valid yet
        ({"nbf": int(time.time()) + 5}, set(), True),  # within the clock skew exp gets too
        ({"nbf": int(time.time()) - 60}, set(), True),
        ({"nbf": "yesterday"}, set(), False),
        ({"exp": "never"}, set(), False),
        ({"exp": True}, set(), False),
        ({"iat": [1]}, set(), False),
        ({"iss": ["https://accounts.google.com"]}, set(), False),
        (
            {"email": ["caller@example.iam.gserviceaccount.com"], "email_verified": True},
            {"caller@example.iam.gserviceaccount.com"},
            False,
        ),
        ({"email": {"a": 1}, "email_verified": True}, {"x@y.z"}, False),
        ({"email_verified": "true"}, {"caller@example.iam.gserviceaccount.com"}, False),
    ],
)
def test_claims_are_checked_as_googles_docs_say(claims, allowed, accepted):
    verifier = IdTokenVerifier(AUDIENCE, allowed_emails=allowed)
    signed = token(_signer(), **claims)
    if accepted:
        assert verifier.check(signed, CERTS)["sub"] == "123"
    else:
        with pytest.raises(InvalidIdToken):
            verifier.check(signed, CERTS)
