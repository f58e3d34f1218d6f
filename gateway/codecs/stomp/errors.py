"""The typed error raised by the STOMP codec, carrying the ERROR frame to send back."""

from __future__ import annotations

from .frames import Frame


class StompError(Exception):
    """The peer sent something malformed or out of order; the connection must end.

    ``message`` is a short single-line phrase for the ERROR frame's ``message``
    header; ``detail`` is longer text for its body. ``receipt`` is the offending
    frame's ``receipt`` header when it had been read, so that the ERROR can carry
    it back as ``receipt-id`` (spec 1.2 "ERROR"). ``error_frame()`` builds that
    frame; a server sends it (``STOMPConnection.send``) and then closes.
    """

    def __init__(
        self,
        message: str,
        detail: str = "",
        *,
        receipt: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message, detail)
        self.message = message
        self.detail = detail
        self.receipt = receipt
        self.headers = headers  # extra headers for the ERROR frame

    def __str__(self) -> str:
        return f"{self.message}: {self.detail}" if self.detail else self.message

    def error_frame(self) -> Frame:
        """The ERROR frame that reports this error to the peer."""
        headers = [("message", self.message)]
        if self.receipt is not None:
            headers.append(("receipt-id", self.receipt))
        headers.extend(self.headers)
        if self.detail:
            headers.append(("content-type", "text/plain"))
        return Frame(command="ERROR", headers=tuple(headers), body=self.detail.encode())
