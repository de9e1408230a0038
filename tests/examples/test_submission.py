"""examples/submission: its listeners are Postfix's submission and smtps
services, and its test user logs in with the password its README gives."""

from __future__ import annotations

from pathlib import Path

from postfleet.core.sasl_users import UserTable, verify_password

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "submission"


def test_the_example_is_postfix_submission_and_smtps(monkeypatch, tmp_path) -> None:
    from postfleet.ingress_smtp.settings import IngressSettings

    monkeypatch.setenv("POSTFLEET_CONFIG", str(EXAMPLE / "postfleet.yaml"))
    # The README makes the certificate; any file path will do for the settings.
    monkeypatch.setenv("POSTFLEET_SMTPD_TLS_CERT_FILE", str(tmp_path / "tls.crt"))
    settings = IngressSettings()
    params = {x.name: settings.params_for(x) for x in settings.listeners}
    assert {x.name: x.port for x in settings.listeners} == {
        "smtp": 2525, "submission": 2587, "smtps": 2465}
    submission, smtps, smtp = params["submission"], params["smtps"], params["smtp"]
    assert submission.tls_level() == "encrypt" and submission.auth_needs_tls()
    assert smtps.smtpd_tls_wrappermode and smtps.tls_level() == "encrypt"
    for p in (submission, smtps):
        assert p.smtpd_sasl_auth_enable and p.smtpd_sasl_type == "builtin"
        assert p.smtpd_relay_restrictions == ["permit_sasl_authenticated", "reject"]
    assert not smtp.smtpd_sasl_auth_enable and smtp.tls_level() == "may"
    assert "reject_unauth_destination" in smtp.smtpd_relay_restrictions


def test_the_test_user_and_password_of_the_readme() -> None:
    table = UserTable(EXAMPLE / "users")
    assert list(table.users()) == ["user@example.test"]
    stored = table.stored_hash("user@example.test") or ""
    assert verify_password(stored, "submission-test")
    assert "submission-test" in (EXAMPLE / "README.md").read_text()
