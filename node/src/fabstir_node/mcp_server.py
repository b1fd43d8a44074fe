"""The node's MCP server (Model Context Protocol, streamable HTTP at ``/mcp``): the operator's
LLM tools search the answer cache and the host's documents, add documents, and read files of
the node's store.

Tools:

- ``search_cache(query, k)``: cached answers close in meaning to ``query``, among the entries
  their clients marked **shared** and that have not expired. A client's private answers never
  leave through MCP (nor does ``/cache/`` through ``read_result``).
- ``search_documents(query, k)`` and ``add_document(text, title)``: the :class:`DocumentIndex`.
- ``read_result(path)``: a file of the store (``/results/<session>/<start>``...): its size, CID
  and content (text when it is UTF-8, else base64).

:func:`serve_mcp` serves it inside the caller's event loop (uvicorn's ``Server.serve()`` on a
socket bound here). On a loopback address a token is optional; on any other a bearer token is
required, checked by the SDK's :class:`~mcp.server.auth.provider.TokenVerifier` middleware
(401 without it), and DNS-rebinding protection allows that host's name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import logging
import socket
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Protocol

import numpy as np
import uvicorn
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl, BaseModel, Field

from fabstir_node.cache.semantic import SemanticCache
from fabstir_node.documents import Document, DocumentIndex
from fabstir_node.embeddings import Embedder, EmbeddingError
from fabstir_node.errors import ConfigError
from fabstir_sdk.storage.blobs import cid_of
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.storage.tree import FileEntry, Store, split_path

log = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT, PATH = "127.0.0.1", 7531, "/mcp"
MAX_K = 50
#: The most cache neighbours ``search_cache`` looks through for shared entries.
MAX_FETCH = 8192
#: The largest file ``read_result`` returns.
MAX_READ = 4 << 20
#: Top-level directories of the store that ``read_result`` refuses: the cache holds clients'
#: answers, private ones included.
PRIVATE = frozenset({"cache"})

Query = Annotated[str, Field(description="what to look for, in plain words")]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"how many results (1-{MAX_K})")]


class StoreHolder(Protocol):
    """What holds the node's store: :class:`~fabstir_node.storage.NodeStorage`,
    :class:`~fabstir_node.storage.StoreFiles`."""

    @property
    def store(self) -> Store: ...


# --------------------------------------------------------------------------- tool results


class CacheHit(BaseModel):
    id: int
    question: str
    answer: str
    similarity: float
    model: str  # sha256 (hex) of the model that answered


class CacheResults(BaseModel):
    results: list[CacheHit]


class DocumentHit(BaseModel):
    id: str  # hex, as in /documents/entries/<id>
    title: str | None
    text: str
    similarity: float


class DocumentResults(BaseModel):
    results: list[DocumentHit]


class AddedDocument(BaseModel):
    id: str
    title: str | None
    path: str


class StoredFile(BaseModel):
    path: str
    size: int
    cid: str  # CIDv1 (raw, BLAKE3) of the file's root block, as IPFS tools name it
    media_type: str | None
    encoding: str  # "utf-8" or "base64"
    content: str


# --------------------------------------------------------------------------- auth


class BearerToken:
    """A :class:`~mcp.server.auth.provider.TokenVerifier` of one static token, compared in
    constant time (of the hashes, so not even the length leaks)."""

    def __init__(self, token: str) -> None:
        self._digest = hashlib.sha256(token.encode()).digest()

    def matches(self, token: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)

    async def verify_token(self, token: str) -> AccessToken | None:
        if not self.matches(token):
            return None
        return AccessToken(token=token, client_id="operator", scopes=[])


class NodeMCPServer(MCPServer[Any]):
    """The node's :class:`MCPServer`, which knows the token it was built with."""

    def __init__(self, token: BearerToken | None, **kwargs: Any) -> None:
        super().__init__(token_verifier=token, **kwargs)
        self.token = token


def _check_token(token: str) -> None:
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("the MCP token must be non-empty printable ASCII without spaces")


# --------------------------------------------------------------------------- the server


def build_mcp_server(
    *,
    cache: SemanticCache | None,
    documents: DocumentIndex,
    storage: StoreHolder,
    token: str | None,
) -> MCPServer[Any]:
    """The MCP server over the node's cache (None: the node runs without one), documents and
    store; with ``token``, every request needs ``Authorization: Bearer <token>``."""
    verifier = None
    auth = None
    if token is not None:
        _check_token(token)
        verifier = BearerToken(token)
        # A static token has no authorization server; the SDK wants an issuer all the same.
        auth = AuthSettings(issuer_url=AnyHttpUrl("http://localhost"), resource_server_url=None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server = NodeMCPServer(
        verifier,
        name="fabstir-node",
        instructions=(
            "Search this Fabstir host's answer cache (shared answers only) and its documents "
            "by meaning, add documents, and read files of its content-addressed store."
        ),
        auth=auth,
        log_level="WARNING",
    )
    # MCPServer's constructor calls logging.basicConfig when nothing configured logging yet:
    # undo that, the node configures its own.
    for handler in root.handlers[len(handlers) :]:
        root.removeHandler(handler)
    root.setLevel(level)
    store = storage.store

    async def search_cache(query: Query, k: K = 5) -> CacheResults:
        """Search the answer cache by meaning: cached answers whose question is close to
        `query`, among those their clients shared (never a client's private answers), best
        first, with their cosine similarity (0-1)."""
        _need_text(query)
        if cache is None:
            raise ToolError("this node runs without the answer cache")
        if not len(cache.index):
            return CacheResults(results=[])
        vector = await _embed(cache.embedder, query)
        now = cache.clock()
        fetch = max(4 * k, 32)
        while True:  # private entries crowd the nearest ones: look further until k are shared
            scores, ids = await asyncio.to_thread(cache.index.search, vector[None, :], fetch)
            hits = []
            for score, entry_id in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
                entry = cache.entries.get(entry_id)
                if entry is not None and entry.shared and entry.expires > now:
                    hits.append(
                        CacheHit(
                            id=entry.id,
                            question=entry.question,
                            answer=entry.text,
                            similarity=round(float(score), 6),
                            model=entry.model.hex(),
                        )
                    )
            if len(hits) >= k or fetch >= min(len(cache.index), MAX_FETCH):
                return CacheResults(results=hits[:k])
            fetch = min(fetch * 4, MAX_FETCH)

    async def search_documents(query: Query, k: K = 5) -> DocumentResults:
        """Search the host's documents by meaning: those closest to `query`, best first, with
        their cosine similarity (0-1)."""
        _need_text(query)
        with _tool_errors():
            found = await documents.search(query, k)
        return DocumentResults(
            results=[
                DocumentHit(id=_hex(d), title=d.title, text=d.text, similarity=round(s, 6))
                for d, s in found
            ]
        )

    async def add_document(
        text: Annotated[str, Field(description="the document's text")],
        title: Annotated[str | None, Field(description="an optional title")] = None,
    ) -> AddedDocument:
        """Add a document to the host's searchable documents (long texts are indexed by their
        first 256 tokens and kept whole)."""
        _need_text(text, "text")
        with _tool_errors():
            doc = await documents.add(text, title)
        return AddedDocument(id=_hex(doc), title=doc.title, path=doc.path)

    async def read_result(
        path: Annotated[str, Field(description="a file's path, e.g. /results/<session>/<start>")],
    ) -> StoredFile:
        """Read a file of the host's content-addressed store: its size, CID and content (text
        when it is UTF-8, else base64). /cache/ is not readable."""
        try:
            parts = split_path(path)
        except StorageError as exc:
            raise ToolError(f"bad path {path!r}: {exc}") from None
        if not parts:
            raise ToolError("give the path of a file, e.g. /results/<session>/<start>")
        if parts[0] in PRIVATE:
            raise ToolError(f"/{parts[0]}/ holds clients' data and is not readable through MCP")
        clean = "/" + "/".join(parts)
        try:
            entry = await asyncio.to_thread(store.stat, clean)
            if not isinstance(entry, FileEntry):
                raise ToolError(f"{clean} is a directory")
            if entry.size > MAX_READ:
                raise ToolError(f"{clean} has {entry.size} bytes; at most {MAX_READ} are read")
            data = await asyncio.to_thread(store.get, clean, MAX_READ)
        except NotFound:
            raise ToolError(f"no file at {clean}") from None
        except StorageError as exc:
            raise ToolError(f"cannot read {clean}: {exc}") from None
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode(), "base64"
        return StoredFile(
            path=clean,
            size=len(data),
            cid=cid_of(entry.ref.content.root),
            media_type=entry.ref.media_type,
            encoding=encoding,
            content=content,
        )

    for tool in (search_cache, search_documents, add_document, read_result):
        server.add_tool(tool, description=inspect.cleandoc(tool.__doc__ or ""))
    return server


def _need_text(text: str, what: str = "query") -> None:
    if not text.strip():
        raise ToolError(f"the {what} is empty")


@contextlib.contextmanager
def _tool_errors() -> Iterator[None]:
    """The index's refusals (bad input, a text the model cannot embed) as tool errors."""
    try:
        yield
    except (ValueError, EmbeddingError, StorageError) as exc:
        raise ToolError(str(exc)) from None


async def _embed(embedder: Embedder, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    with _tool_errors():
        vector: np.ndarray[Any, np.dtype[np.float32]] = await embedder.embed_for_search(text)
    return vector


def _hex(doc: Document) -> str:
    return f"{doc.id:016x}"


# --------------------------------------------------------------------------- serving


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _transport_security(host: str, extra: Sequence[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: the Host header must name this server (with or without a
    port). A wildcard bind (0.0.0.0, ::) has no one name: unless ``extra`` names them, the
    check is off there and the bearer token (required off loopback) is what guards."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    bare = host.strip("[]")
    if bare in ("0.0.0.0", "::", "") and not extra:
        log.warning("MCP on a wildcard address: Host headers are not checked (the token is)")
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if bare not in ("0.0.0.0", "::", ""):
        names.append(f"[{bare}]" if ":" in bare else bare)
    names.extend(extra)
    names = list(dict.fromkeys(names))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[h for n in names for h in (n, f"{n}:*")],
        allowed_origins=[o for n in names for o in (f"http://{n}", f"http://{n}:*")],
    )


def _bind(host: str, port: int) -> socket.socket:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    return socket.create_server((bare, port), family=family)


async def serve_mcp(
    server: MCPServer[Any],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    *,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve ``server`` over streamable HTTP at ``http://host:port/mcp`` until cancelled.

    Off loopback the server must check a bearer token (raises :class:`ConfigError` when it was
    built without one); ``token``, when given, must be the one it was built with.
    ``allowed_hosts`` adds Host names clients may use (a DNS name, a public address)."""
    built = server.token if isinstance(server, NodeMCPServer) else None
    if token is not None and (built is None or not built.matches(token)):
        raise ConfigError("serve_mcp: build the MCP server with this token (build_mcp_server)")
    if not is_loopback(host) and server.settings.auth is None:
        raise ConfigError(
            f"MCP on {host} (not a loopback address) needs a token: "
            "--token or FABSTIR_MCP_TOKEN (mcp_token in the config)"
        )
    app = server.streamable_http_app(
        streamable_http_path=PATH,
        transport_security=_transport_security(host, allowed_hosts),
        host=host,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the node's logging stays as it is
        access_log=False,
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    http = _QuietServer(config)
    sock = _bind(host, port)  # OSError (address in use...) reaches the caller
    task = asyncio.ensure_future(http.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        http.should_exit = True  # stop gracefully; a second cancel stops it hard
        with contextlib.suppress(Exception):
            await task
        raise
    finally:
        sock.close()


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the node's loop keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
