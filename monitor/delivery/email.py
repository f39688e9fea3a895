"""E-mail senders: SMTP (smtplib in a worker thread, STARTTLS/TLS, login from env) and, with no SMTP server
configured, .eml files (plus an .html copy for humans) in `settings.outbox_dir`.

SMTP replies map onto the outbox's retry policy: 4xx (and dropped connections, timeouts) retry, 5xx is a
permanent failure for that recipient. Each message has one recipient, so one refusal affects no one else."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import ssl
from email import message_from_bytes, policy
from email.utils import parseaddr
from pathlib import Path

from monitor.config import SmtpSettings
from monitor.delivery import Outgoing
from monitor.errors import DeliveryError


class SmtpSender:
    def __init__(self, smtp: SmtpSettings, mail_from: str, password: str | None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._smtp = smtp
        self._from = parseaddr(mail_from)[1] or mail_from
        self._password = password
        self._ssl = ssl_context

    async def send(self, message: Outgoing) -> str:
        return await asyncio.to_thread(self._send_sync, message)

    def _send_sync(self, message: Outgoing) -> str:
        s = self._smtp
        where = f"SMTP {s.host}:{s.port}"
        try:
            if s.security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s,
                                                      context=self._ssl or ssl.create_default_context())
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
            try:
                conn.ehlo()
                if s.security == "starttls":
                    conn.starttls(context=self._ssl or ssl.create_default_context())
                    conn.ehlo()
                if s.username:
                    conn.login(s.username, self._password or "")
                conn.sendmail(self._from, [message.target], message.payload)
            finally:
                _close_quietly(conn)  # the message is accepted; a failed QUIT must not turn that into a retry
            return "250"
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()), (0, b""))
            # Only a refusal that is about the address ("recipient refused") leads to suppressing it; a relay
            # or policy refusal (5.7.x "relay access denied") is the operator's problem, and suppressing on
            # it would silence the whole list.
            refused = address_refused(int(code), text)
            what = "recipient refused" if refused else "refused by the mail server's policy"
            raise _reply_error(where, what, int(code), text, recipient_only=int(code) != 421,
                               address_refused=refused) from e
        except smtplib.SMTPDataError as e:  # the server took the connection and refused this message
            raise _reply_error(where, "rejected", e.smtp_code, e.smtp_error, recipient_only=e.smtp_code != 421) from e
        except smtplib.SMTPAuthenticationError as e:
            # The login is the operator's problem, not the recipient's: retry (and say what to fix).
            raise DeliveryError(f"{where}: login failed ({e.smtp_code}); check username and the password env var",
                                code=str(e.smtp_code)) from e
        except smtplib.SMTPResponseException as e:
            raise _reply_error(where, "rejected", e.smtp_code, e.smtp_error) from e
        except smtplib.SMTPNotSupportedError as e:
            raise DeliveryError(f"{where}: {e}; check `security` in [settings.smtp]") from e
        except (smtplib.SMTPException, OSError) as e:  # disconnects, timeouts, refused connections, TLS errors
            raise DeliveryError(f"{where}: {type(e).__name__}: {e}") from e


def _close_quietly(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


# RFC 3463 enhanced status codes about the address itself: 5.1.x (bad mailbox, domain, ...), 5.2.1 (mailbox
# disabled). Servers without enhanced codes say it in words.
_ADDRESS_STATUS = re.compile(r"\b5\.(1\.\d{1,3}|2\.1)\b")
_ADDRESS_WORDS = re.compile(r"no such (user|mailbox|recipient)|user unknown|unknown (user|recipient|mailbox)"
                            r"|mailbox (unavailable|not found|does not exist|disabled)|does not exist|invalid recipient",
                            re.I)
_ENHANCED = re.compile(r"\b[245]\.\d{1,3}\.\d{1,3}\b")


def address_refused(code: int, text: bytes | str) -> bool:
    """Whether a 5xx refusal of RCPT TO is about the address (unknown user, bad domain, disabled mailbox),
    as opposed to relay or policy (5.7.x, authentication, rate limits)."""
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    if not 500 <= code < 600:
        return False
    if _ENHANCED.search(reply):
        return bool(_ADDRESS_STATUS.search(reply))
    return bool(_ADDRESS_WORDS.search(reply))


def _reply_error(where: str, what: str, code: int, text: bytes | str, *, recipient_only: bool = False,
                 address_refused: bool = False) -> DeliveryError:
    reply = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    msg = f"{where}: {what}: {code} {reply}".strip()
    return DeliveryError(msg, permanent=500 <= code < 600, code=str(code), recipient_only=recipient_only,
                         address_refused=address_refused and 500 <= code < 600)


class EmlFileSender:
    """Writes each message to `<dir>/<delivery id>-<message id>.eml` (and `.html`); a retry overwrites the
    same file, so a resend is still one file."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)

    async def send(self, message: Outgoing) -> str:
        await asyncio.to_thread(self._write, message)
        return "file"

    def paths(self, message: Outgoing) -> tuple[Path, Path]:
        stem = f"{message.delivery_id:06d}-" + re.sub(r"[^A-Za-z0-9.@_-]", "", message.idempotency_key)[:120]
        return self._dir / f"{stem}.eml", self._dir / f"{stem}.html"

    def _write(self, message: Outgoing) -> None:
        eml, html = self.paths(message)
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(eml, message.payload)
            body = message_from_bytes(message.payload, policy=policy.default).get_body(("html",))
            if body is not None:
                _atomic_write(html, body.get_content().encode("utf-8"))  # type: ignore[attr-defined]
        except OSError as e:
            raise DeliveryError(f"cannot write {eml}: {e}; check outbox_dir") from e


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
