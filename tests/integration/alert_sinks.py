"""Real receivers for the alert tests: an SMTP server (aiosmtpd, with a login) and an HTTP server
that records each POST, both on 127.0.0.1, and the Airflow Connections that point at them
(``mlops_alerts_smtp``, ``mlops_alerts_webhook``) as ``AIRFLOW_CONN_*`` variables. Each has a
secret (the SMTP password, the webhook's bearer token) that no alert may contain."""

from __future__ import annotations

import email
import email.policy
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stack import free_port


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    body: str  # the HTML part, as sent
    raw: str


@dataclass
class AlertSinks:
    smtp_password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)
    webhook_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    mails: list[Mail] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)

    def start(self) -> AlertSinks:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        sinks = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                raw = envelope.content.decode("utf-8", "replace")
                message = email.message_from_string(raw, policy=email.policy.default)
                part = message.get_body(preferencelist=("html", "plain"))
                sinks.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos),
                                        str(message["subject"]),
                                        part.get_content() if part else "", raw))
                return "250 OK"

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            login = auth_data.login.decode() if isinstance(auth_data.login, bytes) else auth_data.login
            password = auth_data.password.decode() if isinstance(auth_data.password, bytes) \
                else auth_data.password
            sinks.logins.append((login, mechanism))
            return AuthResult(success=login == "alerts" and password == self.smtp_password)

        self.smtp_port = free_port()
        self._smtp = Controller(Handler(), hostname="127.0.0.1", port=self.smtp_port,
                                authenticator=authenticate, auth_require_tls=False)
        self._smtp.start()

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sinks.headers.append(dict(self.headers))
                sinks.posts.append({"path": self.path, **json.loads(body or b"{}")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.http_port = free_port()
        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Hook)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._smtp.stop()
        self._http.shutdown()

    def connection_env(self) -> dict[str, str]:
        smtp = {"conn_type": "smtp", "host": "127.0.0.1", "port": self.smtp_port,
                "login": "alerts", "password": self.smtp_password,
                "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10,
                          "retry_limit": 1, "from_email": "mlops@example.com",
                          "to": ["oncall@example.com", "ml-team@example.com"]}}
        webhook = {"conn_type": "http", "host": f"http://127.0.0.1:{self.http_port}/hooks/mlops",
                   "extra": {"Authorization": f"Bearer {self.webhook_token}"}}
        return {"AIRFLOW_CONN_MLOPS_ALERTS_SMTP": json.dumps(smtp),
                "AIRFLOW_CONN_MLOPS_ALERTS_WEBHOOK": json.dumps(webhook)}

    def secrets(self) -> list[str]:
        return [self.smtp_password, self.webhook_token]

    def wait(self, count: int, timeout: float = 10) -> None:
        """Until ``count`` mails and ``count`` posts arrived (the SMTP server's thread hands
        them over asynchronously)."""
        deadline = time.monotonic() + timeout
        while (len(self.mails) < count or len(self.posts) < count) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.mails) >= count and len(self.posts) >= count, \
            f"{len(self.mails)} mail(s), {len(self.posts)} post(s); expected {count} of each"
