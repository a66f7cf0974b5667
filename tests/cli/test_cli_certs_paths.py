"""``wanspec certs`` prints each file path whole, however narrow the terminal (paths used to be
wrapped at 80 columns, with trailing spaces)."""

from __future__ import annotations

from wanspec.cli.app import app, console


def test_certificate_paths_are_never_wrapped(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(console, "width", 40)
    out = tmp_path / ("a-rather-long-directory-name-" * 3)
    r = runner.invoke(app, ["certs", str(out)])
    assert r.exit_code == 0, r.output
    for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"):
        assert str(out / name) in r.stdout
    assert all(line == line.rstrip() for line in r.stdout.splitlines())
