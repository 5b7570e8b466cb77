"""Headers every answer carries, so that nothing the API serves can run as a page where it should not: no type
sniffing, no framing, no referrer; answers that are not the viewer's page get a policy that lets them run nothing
(a sandbox with no sources), and the page and its static files get the page's own policy."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page loads only its own files and talks only to this API; media and stills come as same-origin or blob URLs.
PAGE_POLICY = (b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; object-src 'none'; "
               b"base-uri 'none'; frame-ancestors 'none'")
# JSON, CSV, images, media: data, never a document that runs anything, even when opened directly.
DATA_POLICY = b"default-src 'none'; frame-ancestors 'none'; sandbox"
STATIC_PREFIX = "/static/"  # the page's own files, served at / and under this
# FastAPI's interactive docs load Swagger UI and ReDoc from their CDN: no policy of ours, the other headers kept.
DOCS_PATHS = ("/docs", "/redoc")
ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
          (b"referrer-policy", b"no-referrer"))


def policy_for(path: str) -> bytes | None:
    if path.startswith(DOCS_PATHS):
        return None
    return PAGE_POLICY if path == "/" or path.startswith(STATIC_PREFIX) else DATA_POLICY


class SecurityHeaders:
    """ASGI middleware: adds the headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = policy_for(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [*ALWAYS, *(((b"content-security-policy", policy),) if policy else ())]
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
