"""Web tools: `http_get` on allowed hosts, and the `web_search` and `weather` provider tools.

They share one fetch helper with the guarantees a model-chosen URL needs: a host allowlist checked before
any request and again at every redirect (redirects are followed by hand, at most three), a total deadline,
a body read in chunks that stops at a byte cap, no proxy or cookie settings from the environment, and
retries (stamina) of connection errors, 5xx and 429, which are safe because every request is a GET.

Provider keys travel in a header or the query string, so no message built here contains a URL, and no
aiohttp exception (whose text may hold the URL with the key) is passed on or chained: each becomes a short
ToolError raised outside the `except` block that caught it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import stamina
from yarl import URL

from agent.tools.registry import ToolError, tool

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRY_ATTEMPTS = 3
# Retries stay well inside a tool's deadline: a few seconds in all, short waits between attempts.
RETRY_TIMEOUT_S = 5.0
RETRY_WAIT_INITIAL_S = 0.2
RETRY_WAIT_MAX_S = 1.0
RETRY_WAIT_JITTER_S = 0.2
READ_CHUNK = 16_384
PROVIDER_MAX_BYTES = 1_000_000
# The runner's own timeout sits a little past the tool's deadline, so the tool's clearer message wins.
SPEC_MARGIN_S = 2.0
USER_AGENT = "Parley/0.1 (chat bot tool)"
TEXT_TYPES = frozenset({"application/json", "application/xml", "application/javascript", "application/x-ndjson"})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
SEARCH_RESULTS = 5

SessionFactory = Callable[[float], aiohttp.ClientSession]
URLCheck = Callable[[str, URL | None], URL]


@dataclass(frozen=True)
class Fetched:
    """A response as far as it was read: at most `max_bytes` of body."""

    status: int
    content_type: str
    charset: str | None
    body: bytes
    truncated: bool

    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class _Transient(Exception):
    """A failure worth another attempt. Its message is safe to log: a status or an exception type, no URL."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.attempts = 1


def _retry_on(exc: Exception) -> bool | float:
    """stamina's backoff hook: retry transient failures, waiting as long as Retry-After asks (capped)."""
    if not isinstance(exc, _Transient):
        return False
    if exc.retry_after is not None:
        return min(exc.retry_after, RETRY_WAIT_MAX_S)
    return True


def new_session(timeout_s: float) -> aiohttp.ClientSession:
    """A session that ignores proxy variables and keeps no cookies between hosts."""
    return aiohttp.ClientSession(
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=timeout_s),
        headers={"User-Agent": USER_AGENT},
    )


async def fetch(
    url: URL,
    *,
    check: URLCheck,
    what: str,
    max_bytes: int,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    accept: Callable[[str], bool] | None = None,
    session_factory: SessionFactory = new_session,
) -> Fetched:
    """GET `url` (already checked) within `timeout_s`, following redirects that `check` accepts.

    `what` names the server in messages ("example.com", "the weather provider"); it is all they say about it.
    """
    failure: str
    try:
        async with asyncio.timeout(timeout_s), session_factory(timeout_s) as session:
            for _ in range(MAX_REDIRECTS + 1):
                answer = await _get_with_retries(session, url, headers or {}, what, max_bytes, accept)
                if isinstance(answer, Fetched):
                    return answer
                url = check(answer, url)
            failure = f"{what} redirected more than {MAX_REDIRECTS} times; not followed further"
    except TimeoutError:
        failure = f"{what} did not answer within {timeout_s:g} s"
    except _Transient as exc:
        tries = f"{exc.attempts} attempt" + ("s" if exc.attempts != 1 else "")
        failure = f"{what} could not be reached after {tries} ({exc.reason})"
    raise ToolError(failure)


async def _get_with_retries(
    session: aiohttp.ClientSession,
    url: URL,
    headers: Mapping[str, str],
    what: str,
    max_bytes: int,
    accept: Callable[[str], bool] | None,
) -> Fetched | str:
    retrying = stamina.retry_context(
        on=_retry_on,
        attempts=RETRY_ATTEMPTS,
        timeout=RETRY_TIMEOUT_S,
        wait_initial=RETRY_WAIT_INITIAL_S,
        wait_max=RETRY_WAIT_MAX_S,
        wait_jitter=RETRY_WAIT_JITTER_S,
    )
    async for attempt in retrying:
        with attempt:
            try:
                return await _get_once(session, url, headers, what, max_bytes, accept)
            except _Transient as exc:
                exc.attempts = attempt.num
                raise
    raise AssertionError("stamina ends with a result or an exception")


async def _get_once(
    session: aiohttp.ClientSession,
    url: URL,
    headers: Mapping[str, str],
    what: str,
    max_bytes: int,
    accept: Callable[[str], bool] | None,
) -> Fetched | str:
    """One GET: a Fetched response, or the Location of a redirect; transient failures raise _Transient."""
    transient: _Transient | None = None
    failure: str | None = None
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status == 429 or resp.status >= 500:
                transient = _Transient(f"HTTP {resp.status}", _retry_after(resp.headers.get("Retry-After")))
            elif resp.status in REDIRECT_STATUSES and "Location" in resp.headers:
                return resp.headers["Location"]
            elif accept is not None and not accept(resp.content_type):
                failure = f"{what} sent {resp.content_type}, which is not text; only text pages can be read"
            else:
                body, truncated = await _read_capped(resp.content, max_bytes)
                return Fetched(resp.status, resp.content_type, resp.charset, body, truncated)
    except aiohttp.ClientConnectionError as exc:
        transient = _Transient(type(exc).__name__)
    except (aiohttp.ClientError, ValueError) as exc:
        failure = f"{what} sent an answer that could not be read ({type(exc).__name__})"
    if transient is not None:
        raise transient
    raise ToolError(failure)


async def _read_capped(content: aiohttp.StreamReader, max_bytes: int) -> tuple[bytes, bool]:
    """At most `max_bytes` of the body; one byte more is read to know whether there was more."""
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        chunk = await content.read(min(READ_CHUNK, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:max_bytes], len(body) > max_bytes


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class _HostEntry:
    host: str
    wildcard: bool
    port: int | None


def _looks_like_ip(host: str) -> bool:
    """IP literals, including the forms a resolver still reads as IPv4 ("2130706433", "0x7f.1")."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)", host.rsplit(".", 1)[-1]) is not None
    return True


def _parse_entry(entry: str) -> _HostEntry:
    text = entry.strip().lower()
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if text.count(":") > 1 and not text.startswith("["):
        text = f"[{text}]"
    try:
        parsed = URL(f"https://{text}")
    except ValueError:
        raise ValueError(f"allow_hosts entry {entry!r} is not a host name") from None
    host = (parsed.raw_host or "").rstrip(".")
    if not host or parsed.raw_user is not None or parsed.path not in ("", "/") or parsed.query_string:
        raise ValueError(f"allow_hosts entry {entry!r} must be a host, '*.domain' or host:port")
    if wildcard and _looks_like_ip(host):
        raise ValueError(f"allow_hosts entry {entry!r}: wildcards apply to names, not IP addresses")
    return _HostEntry(host, wildcard, parsed.explicit_port)


def _parse_url(raw: str, base: URL | None) -> URL:
    """An absolute URL without fragment, joined to `base` when relative (a redirect Location)."""
    try:
        url = URL(raw.strip())
        if base is not None and not url.is_absolute():
            url = base.join(url)
    except (ValueError, TypeError):
        raise ToolError("that is not a valid URL") from None
    if not url.is_absolute() or not url.raw_host:
        raise ToolError("the URL must be absolute, like https://example.com/page")
    # yarl drops an empty "user@"; the raw text still shows it.
    if url.raw_user is not None or url.raw_password is not None or "@" in urlsplit(raw.strip()).netloc:
        raise ToolError("URLs with a user name or password are not allowed")
    return url.with_fragment(None)


class HostRules:
    """Which URLs `http_get` may fetch: scheme, host (exact or `*.domain`), and port."""

    def __init__(self, allow_hosts: list[str], *, allow_http: bool = False) -> None:
        self.entries = tuple(_parse_entry(entry) for entry in allow_hosts)
        self.schemes = ("https", "http") if allow_http else ("https",)

    def check(self, raw: str, base: URL | None = None) -> URL:
        """The URL if it may be fetched; a ToolError naming the rule it breaks if not."""
        url = _parse_url(raw, base)
        if url.scheme not in self.schemes:
            allowed = " and ".join(self.schemes)
            raise ToolError(f"only {allowed} URLs are allowed (got {url.scheme or 'no scheme'})")
        host = (url.raw_host or "").rstrip(".")
        default_port = 443 if url.scheme == "https" else 80
        matching = [entry for entry in self.entries if _host_matches(entry, host)]
        if not matching:
            raise ToolError(f"{host} is not on the list of allowed hosts")
        if not any(url.port in (default_port, entry.port) for entry in matching):
            raise ToolError(f"port {url.port} of {host} is not allowed")
        return url


def _host_matches(entry: _HostEntry, host: str) -> bool:
    """Exact names and IPs; `*.domain` matches names below the domain only, never the domain or an IP."""
    if entry.wildcard:
        return host.endswith("." + entry.host) and not _looks_like_ip(host)
    return host == entry.host


def _is_text(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in TEXT_TYPES or content_type.endswith(("+json", "+xml"))


class _TextExtractor(HTMLParser):
    """The readable text of an HTML page: no tags, scripts, styles; blocks on their own lines."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre", "title"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """HTML reduced to readable text with the standard library's parser (no new dependency)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    body = "\n".join(line for line in lines if line)
    title = " ".join(parser.title.split())
    return f"{title}\n\n{body}" if title and body else title or body


def http_get_tool(
    allow_hosts: list[str], *, allow_http: bool = False, max_bytes: int = 200_000, timeout_s: float = 10.0
) -> Callable[[str], Awaitable[str]]:
    """`http_get` limited to `allow_hosts` (exact names, `*.domain`, or `host:port`)."""
    rules = HostRules(allow_hosts, allow_http=allow_http)

    async def http_get(url: str) -> str:
        """Fetch a page from an allowed web site and return its status and text (HTML is reduced to text)."""
        target = rules.check(url)
        page = await fetch(
            target,
            check=rules.check,
            what=(target.raw_host or "the site").rstrip("."),
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            accept=_is_text,
        )
        text = page.text()
        if page.content_type in HTML_TYPES:
            text = html_to_text(text)
        note = f"\n[truncated at {max_bytes} bytes]" if page.truncated else ""
        return f"HTTP {page.status} {page.content_type}\n\n{text}{note}"

    def allowed(url: str) -> None:
        """Refuse a URL off the allowlist before anyone is asked to approve fetching it."""
        rules.check(url)

    # Registered by call, not as a decorator: `tool` is untyped, and the factory returns a typed function.
    tool(
        name="http_get",
        approval="approve",
        check=allowed,
        timeout_s=timeout_s + SPEC_MARGIN_S,
        returns="HTTP status and content type, a blank line, then the page text",
    )(http_get)
    return http_get


def _same_site(base_url: str, label: str) -> URLCheck:
    """A redirect check for a provider: only its own scheme, host and port, so the key goes nowhere else."""
    base = URL(base_url)

    def check(raw: str, current: URL | None = None) -> URL:
        url = _parse_url(raw, current)
        if (url.scheme, url.raw_host, url.port) != (base.scheme, base.raw_host, base.port):
            raise ToolError(f"{label} redirected to another site; not followed")
        return url

    return check


def _endpoint(base_url: str, path: str) -> URL:
    return URL(base_url.rstrip("/") + path)


def _json(page: Fetched, label: str) -> Any:
    if page.truncated:
        raise ToolError(f"{label} sent an answer too large to read")
    try:
        return json.loads(page.body)
    except ValueError:
        raise ToolError(f"{label} sent an answer that is not JSON") from None


def _refusal(status: int, label: str) -> ToolError:
    if status in (401, 403):
        return ToolError(f"{label} refused the API key")
    return ToolError(f"{label} answered HTTP {status}")


def web_search_tool(base_url: str, api_key: str, *, timeout_s: float = 10.0) -> Callable[[str], Awaitable[str]]:
    """`web_search` through a Brave Search API compatible endpoint (`{base_url}/web/search`)."""
    label = "the search provider"
    check = _same_site(base_url, label)
    endpoint = _endpoint(base_url, "/web/search")
    headers = {"X-Subscription-Token": api_key, "Accept": "application/json"}

    async def web_search(query: str) -> str:
        """Search the web; returns the top results as a numbered list of title, URL and summary."""
        if not query.strip():
            raise ToolError("the search query is empty")
        if not endpoint.is_absolute() or not api_key:
            raise ToolError(f"{label} is not configured")
        url = endpoint.update_query(q=query.strip(), count=SEARCH_RESULTS)
        page = await fetch(
            url, check=check, what=label, max_bytes=PROVIDER_MAX_BYTES, timeout_s=timeout_s, headers=headers
        )
        if page.status != 200:
            raise _refusal(page.status, label)
        data = _json(page, label)
        web = data.get("web") if isinstance(data, dict) else None
        results = web.get("results") if isinstance(web, dict) else None
        lines: list[str] = []
        for result in results if isinstance(results, list) else []:
            if not isinstance(result, dict):
                continue
            title = html_to_text(str(result.get("title") or "")) or "(untitled)"
            summary = html_to_text(str(result.get("description") or ""))
            entry = f"{len(lines) + 1}. {title}\n   {result.get('url', '')}"
            lines.append(f"{entry}\n   {summary}" if summary else entry)
            if len(lines) == SEARCH_RESULTS:
                break
        return "\n".join(lines) if lines else "No results."

    tool(name="web_search", approval="allow", timeout_s=timeout_s + SPEC_MARGIN_S, returns="a numbered list")(
        web_search
    )
    return web_search


def weather_tool(base_url: str, api_key: str, *, timeout_s: float = 10.0) -> Callable[[str], Awaitable[str]]:
    """`weather` through an OpenWeatherMap compatible current-weather endpoint (`{base_url}/weather`)."""
    label = "the weather provider"
    check = _same_site(base_url, label)
    endpoint = _endpoint(base_url, "/weather")

    async def weather(location: str) -> str:
        """Current weather for a place, e.g. "Paris" or "Paris,FR": conditions, temperature, humidity, wind."""
        place = location.strip()
        if not place:
            raise ToolError("the location is empty")
        if not endpoint.is_absolute() or not api_key:
            raise ToolError(f"{label} is not configured")
        url = endpoint.update_query(q=place, appid=api_key, units="metric")
        page = await fetch(url, check=check, what=label, max_bytes=PROVIDER_MAX_BYTES, timeout_s=timeout_s)
        if page.status in (400, 404):
            raise ToolError(f"unknown location {place!r}; try a city name, optionally with a country code")
        if page.status != 200:
            raise _refusal(page.status, label)
        data = _json(page, label)
        if not isinstance(data, dict):
            raise ToolError(f"{label} sent an answer in an unexpected shape")
        return _describe_weather(data, place)

    tool(name="weather", approval="allow", timeout_s=timeout_s + SPEC_MARGIN_S, returns="one line of weather")(weather)
    return weather


def _describe_weather(data: dict[str, Any], place: str) -> str:
    """One line such as "Paris, FR: light rain, 14.2 °C (feels like 13.1 °C), humidity 81%, wind 4.1 m/s"."""
    main, sys_, wind = _object(data.get("main")), _object(data.get("sys")), _object(data.get("wind"))
    listed = data.get("weather")
    conditions: list[Any] = listed if isinstance(listed, list) else []
    name = str(data.get("name") or place)
    if sys_.get("country"):
        name += f", {sys_['country']}"
    parts = [", ".join(str(c["description"]) for c in conditions if isinstance(c, dict) and c.get("description"))]
    if _is_number(main.get("temp")):
        temp = f"{float(main['temp']):.1f} °C"
        if _is_number(main.get("feels_like")):
            temp += f" (feels like {float(main['feels_like']):.1f} °C)"
        parts.append(temp)
    if _is_number(main.get("humidity")):
        parts.append(f"humidity {float(main['humidity']):g}%")
    if _is_number(wind.get("speed")):
        parts.append(f"wind {round(float(wind['speed']), 1):g} m/s")
    described = ", ".join(part for part in parts if part)
    return f"{name}: {described}" if described else f"{name}: no weather data"


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
