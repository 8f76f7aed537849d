import hashlib

import pytest

from shared.pow import PowError, leading_zero_bits, make_challenge, parse_solution, solve, verify_solution, work_of

SECRET = b"s" * 32


def _solved(bits=8, account="acct1", body=b'{"input":[]}', now=1000.0, ttl=60.0):
    ch = make_challenge(SECRET, account, body, bits, ttl_s=ttl, now=now)
    nonce, tries = solve(ch.token, bits)
    return ch, f"{ch.token}:{nonce}", tries


def test_leading_zero_bits():
    assert leading_zero_bits(b"\x00\x00\xff") == 16
    assert leading_zero_bits(b"\x00\x10") == 11
    assert leading_zero_bits(b"\x80") == 0
    assert leading_zero_bits(b"\x00") == 8


def test_solution_verifies_and_has_the_work():
    ch, header, _ = _solved(bits=10)
    stamp = verify_solution(SECRET, header, "acct1", b'{"input":[]}', now=1001.0)
    assert stamp.bits == 10 and stamp.token_id == hashlib.sha256(ch.token.encode()).hexdigest()
    assert work_of(ch.token, header.split(":")[1]) >= 10
    assert ch.as_dict()["algorithm"] == "SHA-256" and ch.as_dict()["difficulty"] == 10


@pytest.mark.parametrize("case,reason", [
    ("wrong_nonce", "insufficient_work"), ("expired", "expired"), ("other_account", "wrong_account"),
    ("other_body", "wrong_body"), ("forged", "bad_signature"), ("other_secret", "bad_signature"), ("garbage", "malformed"),
])
def test_bad_solutions_refused(case, reason):
    ch, header, _ = _solved(bits=12)
    token, nonce = header.split(":")
    secret, account, body, now = SECRET, "acct1", b'{"input":[]}', 1001.0
    if case == "wrong_nonce":
        n = int(nonce) + 1
        while work_of(token, n) >= 12:
            n += 1
        header = f"{token}:{n}"
    elif case == "expired":
        now = 1000.0 + 61
    elif case == "other_account":
        account = "acct2"
    elif case == "other_body":
        body = b'{"input":["x"]}'
    elif case == "forged":  # raise the difficulty claim... or lower it: payload edited, mac kept
        p64, mac = token.split(".")
        header = f"{p64[:-2]}AA.{mac}:{nonce}"
    elif case == "other_secret":
        secret = b"t" * 32
    elif case == "garbage":
        header = "no-colon-here"
    with pytest.raises(PowError) as e:
        verify_solution(secret, header, account, body, now=now)
    assert e.value.reason == reason


def test_solve_cost_grows_with_bits_and_disjoint_search():
    ch = make_challenge(SECRET, "a", b"", 6, now=0)
    even = solve(ch.token, 6, start=0, step=2)
    odd = solve(ch.token, 6, start=1, step=2)
    assert even[0] % 2 == 0 and odd[0] % 2 == 1
    assert solve(ch.token, 30, max_tries=100) is None


def test_parse_rejects_bad_headers():
    for h in ["", "a:b:c", "tok:", ":1", "tok:" + "1" * 65, "tok:ab$"]:
        with pytest.raises(PowError):
            parse_solution(h)
    with pytest.raises(ValueError):
        make_challenge(SECRET, "a", b"", 0)
