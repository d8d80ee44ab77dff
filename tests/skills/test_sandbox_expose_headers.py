"""What an exposed app's answer may carry to a browser on the server's origin (fast tier)."""

from __future__ import annotations

from skills.sandbox.expose import ISOLATION, answer_headers, scoped_cookie

HOME = "/sandboxes/sb_1/ports/8080/tok/"


def test_its_cookies_are_scoped_to_its_own_url_and_none_is_folded() -> None:
    answer = [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "session=a1; Path=/; Domain=example.org; HttpOnly"),
        ("Set-Cookie", "theme=dark"),
        ("Content-Length", "12"),
        ("Connection", "close"),
    ]
    headers = answer_headers(answer, HOME)
    cookies = [v.decode() for k, v in headers if k == b"set-cookie"]
    assert cookies == [f"session=a1; HttpOnly; Path={HOME}", f"theme=dark; Path={HOME}"]
    names = [k for k, _ in headers]
    assert b"content-length" not in names and b"connection" not in names
    assert (b"content-type", b"text/html") in headers


def test_its_page_is_an_opaque_origin_whatever_policy_it_sends() -> None:
    headers = answer_headers([("Content-Security-Policy", "default-src 'self'")], HOME)
    policies = [v.decode() for k, v in headers if k == b"content-security-policy"]
    assert policies == ["default-src 'self'", ISOLATION]  # both hold: the browser enforces each
    assert "allow-same-origin" not in ISOLATION and ISOLATION.startswith("sandbox ")


def test_a_cookie_without_attributes_gets_its_path() -> None:
    assert scoped_cookie("a=b", HOME) == f"a=b; Path={HOME}"
