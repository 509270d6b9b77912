"""Where Redis is: one server, a Sentinel-managed primary, or a Redis Cluster; one client factory.

    redis_client("redis://10.0.0.5:6379/0", 50, 5)                        # Redis
    redis_client("redis+sentinel://10.0.0.7:26379,10.0.0.8:26379/mymaster/0", 50, 5)
    redis_client("redis+cluster://10.0.0.5:7000,10.0.0.6:7000", 50, 5)    # RedisCluster

The cache, the shared learning state and the budgets all build their clients here, from the one
``redis.url`` (settings turn ``redis.cluster`` and ``redis.sentinel`` into that URL), so the three
follow the same server, the same failover and the same cluster map. Every client fails fast: a
bounded connect and read, and no retries of its own; the callers decide when to try again.

A cluster client follows ``MOVED``/``ASK`` redirections by itself and rebuilds its slot map after a
connection error, a ``CLUSTERDOWN`` or a failover, on the next call: nothing needs a restart.
Faults reach the callers as one of :data:`REDIS_FAULTS`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote

import redis.exceptions as redis_errors
from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from ._errors import ConfigError

__all__ = [
    "CLUSTER_SLOTS",
    "REDIS_FAULTS",
    "RedisClient",
    "RedisTarget",
    "describe",
    "parse_redis_url",
    "prepare",
    "redis_client",
    "target_url",
]

Kind = Literal["single", "sentinel", "cluster"]
RedisClient = Redis | RedisCluster
CLUSTER_SLOTS = 16384
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

# What a Redis call can raise when the server, the sentinels or the cluster are in trouble.
# RedisClusterException ("cannot be connected", "slots not covered") is not a RedisError;
# OSError includes TimeoutError, which is what asyncio.timeout raises.
REDIS_FAULTS: tuple[type[BaseException], ...] = (
    redis_errors.RedisError,
    redis_errors.RedisClusterException,
    OSError,
)

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_NODE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/]+))(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``redis.url``. ``nodes``: the server (single), the sentinels, or the cluster's
    seed nodes; ``url`` is what ``Redis.from_url`` reads for a single server."""

    kind: Kind
    url: str = field(repr=False)  # may carry a password
    nodes: tuple[tuple[str, int], ...] = ()
    service: str | None = None  # sentinel: the primary's name
    db: int = 0
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def node_names(self) -> list[str]:
        return [_node_name(host, port) for host, port in self.nodes]


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisTarget:
    """Read ``redis.url``; ``cluster`` (``redis.cluster: true``) reads a ``redis://`` URL as the
    cluster's seed node. Raises :class:`ConfigError` naming ``redis.url`` on anything else.

    - ``redis://[user:pass@]host:port/db``, ``rediss://...``, ``unix:///path.sock``: one server;
    - ``redis+cluster://[user:pass@]host:port[,host:port...]`` (``rediss+cluster`` for TLS);
      ``redis://host:port?cluster=true`` means the same;
    - ``redis+sentinel://[user:pass@]host:port[,host:port...]/primary-name[/db]`` (sentinels'
      addresses; ``?sentinel_password=`` when the sentinels want one).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError("redis.url", f"not a URL: {_redact(url)!r}")
    scheme = scheme.lower()
    rest, _, query = rest.partition("?")
    params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    flag = params.pop("cluster", None)
    if flag is not None:
        if flag.lower() not in ("true", "yes", "1", "false", "no", "0"):
            raise ConfigError("redis.url", f"cluster={flag!r}: use true or false")
        cluster = cluster or flag.lower() in ("true", "yes", "1")
    if scheme in ("redis", "rediss") and cluster:
        scheme += "+cluster"
    if scheme in _SCHEMES:
        kind, tls = _SCHEMES[scheme]
        return _parse_multi(kind, tls, url, rest, params)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "redis.url",
            f"scheme {scheme!r} is not one of redis, rediss, unix, redis+cluster, rediss+cluster, "
            "redis+sentinel, rediss+sentinel",
        )
    single = url if flag is None else _without_query_key(url, "cluster")
    host, port = _single_node(scheme, rest)
    return RedisTarget("single", single, ((host, port),) if host else (), tls=scheme == "rediss")


def target_url(
    url: str | None, *, cluster: bool, nodes: list[str], sentinel_master: str | None, db: int
) -> str | None:
    """The one URL for the settings' ways of naming Redis: ``url`` as given, or built from
    ``cluster``/``nodes`` (seed nodes) or the sentinel section (``nodes`` are the sentinels)."""
    if sentinel_master is not None:
        if not nodes:
            raise ConfigError("redis.sentinel.nodes", "name at least one sentinel as host:port")
        return f"redis+sentinel://{','.join(nodes)}/{quote(sentinel_master, safe='')}/{db}"
    if nodes:
        if not cluster:
            raise ConfigError("redis.nodes", "seed nodes name a cluster: set redis.cluster: true")
        if url is None:
            return f"redis+cluster://{','.join(nodes)}"
        target = parse_redis_url(url, cluster=True)
        credentials = _credentials(url)
        everything = [*target.node_names, *(n for n in nodes if n not in target.node_names)]
        return f"{'rediss' if target.tls else 'redis'}+cluster://{credentials}{','.join(everything)}"
    if url is not None and cluster:
        return url if parse_redis_url(url).kind == "cluster" else _as_cluster(url)
    if cluster:
        raise ConfigError("redis.nodes", "redis.cluster is true: give redis.url or redis.nodes")
    return url


def redis_client(
    url: str | RedisTarget, connect_timeout_ms: float, op_timeout_ms: float, *, max_connections: int = 256
) -> RedisClient:
    """An asyncio client for ``url`` that fails fast: bounded connect and read, and no retries.

    redis-py retries ConnectionError and TimeoutError with backoff by default (a cluster
    client 3 times, a plain one 10 times in redis-py >= 8), which would stretch a 5 ms budget
    into seconds; the failover wrapper, not the client, decides when to try again.
    """
    target = parse_redis_url(url) if isinstance(url, str) else url
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_ms / 1000.0,
        "socket_timeout": op_timeout_ms / 1000.0,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "max_connections": max_connections,
        # Off: otherwise every new connection spends one more round trip asking a server that
        # does not know CLIENT MAINT_NOTIFICATIONS (Redis < 8) to turn them on.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if target.kind == "cluster":
        return _cluster_client(target, options)
    if target.kind == "sentinel":
        return _sentinel_client(target, options)
    try:
        return Redis.from_url(target.url, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigError("redis.url", str(exc)) from exc


def _cluster_client(target: RedisTarget, options: dict[str, Any]) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in target.nodes]
    try:
        client = RedisCluster(
            startup_nodes=nodes,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            # A map with slots missing (mid-failover) still serves the others; after a
            # connection error or a CLUSTERDOWN the next call rebuilds the map.
            require_full_coverage=False,
            **options,
        )
    except redis_errors.RedisClusterException as exc:
        raise ConfigError("redis.url", str(exc)) from exc
    client.commands_parser = _KnownCommands()
    return client


def _key_command(name: str, last_key: int) -> dict[str, Any]:
    return {"name": name, "flags": ["write"], "first_key_pos": 1, "last_key_pos": last_key, "step_count": 1}


# Where the keys are in the commands the router sends with keys (EVAL/EVALSHA are read apart).
_KEY_COMMANDS = {
    "get": _key_command("get", 1),
    "set": _key_command("set", 1),
    "del": _key_command("del", -1),
}


class _KnownCommands(AsyncCommandsParser):
    """redis-py reads the server's whole ``COMMAND`` table (about 50 KB, some 50 ms of parsing in
    Python, far more on a busy machine) each time it rebuilds the slot map, that is at start
    and after every connection error or CLUSTERDOWN: in an outage, on every call. The router's
    own commands are known here; the server's table is read only for a command that is not."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self.commands.update(_KEY_COMMANDS)

    async def initialize(self, node: ClusterNode | None = None) -> None:
        if node is not None:
            self.node = node  # a new slot map, the same commands
            return
        await super().initialize()  # a command not known here: read the server's table


async def prepare(client: RedisClient, timeout_s: float) -> bool:
    """Connect now, with a start-up's patience, rather than in a first call bounded by a few
    milliseconds: a cluster's slot map and command table, and one open connection to each
    primary (to the server, or the primary Sentinel names). Says whether that worked; never
    raises."""
    try:
        async with asyncio.timeout(timeout_s):
            if isinstance(client, RedisCluster):
                await client.initialize()
                await client.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await client.ping()
    except REDIS_FAULTS:
        return False
    return True


def _sentinel_client(target: RedisTarget, options: dict[str, Any]) -> Redis:
    sentinel_options = {k: v for k, v in options.items() if k != "max_connections"}
    if target.sentinel_password is not None:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    assert target.service is not None
    extra: dict[str, Any] = {"ssl": True} if target.tls else {}
    client: Redis = sentinel.master_for(
        target.service,
        redis_class=_SentinelManaged,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
        **extra,
    )
    return client


class _SentinelManaged(Redis):
    """A primary's client that also closes its connections to the sentinels when closed."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


# --------------------------------------------------------------------------------------------
# What /ready shows


async def describe(client: RedisClient, timeout_s: float) -> dict[str, Any]:
    """The topology this client uses, for ``/ready``: kind, nodes, and for a cluster its state
    and the slots served. One bounded round trip; a fault is reported, never raised."""
    if isinstance(client, RedisCluster):
        return await _describe_cluster(client, timeout_s)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        body: dict[str, Any] = {"topology": "sentinel", "service": pool.service_name}
        body["sentinels"] = [_client_node(s) for s in pool.sentinel_manager.sentinels]
        try:
            async with asyncio.timeout(timeout_s):
                host, port = await pool.sentinel_manager.discover_master(pool.service_name)
            body["primary"] = _node_name(str(host), int(port))
            body["up"] = True
        except REDIS_FAULTS as exc:
            body.update(up=False, error=_short(exc))
        return body
    kwargs = pool.connection_kwargs
    host, port = str(kwargs.get("host", "localhost")), int(kwargs.get("port", DEFAULT_PORT))
    node = kwargs.get("path") or _node_name(host, port)
    return {"topology": "single", "nodes": [node], "db": int(kwargs.get("db", 0) or 0)}


async def _describe_cluster(client: RedisCluster, timeout_s: float) -> dict[str, Any]:
    body: dict[str, Any] = {"topology": "cluster", "slots": CLUSTER_SLOTS}
    try:
        async with asyncio.timeout(timeout_s):
            await client.initialize()
            primaries = client.get_primaries()
            info = await _first_answer(client, primaries)
    except REDIS_FAULTS as exc:
        body["nodes"] = [node.name for node in client.get_nodes()]
        body.update(up=False, error=_short(exc))
        return body
    body["nodes"] = sorted(node.name for node in primaries)
    body["replicas"] = len(client.get_replicas())
    body["state"] = str(info.get("cluster_state", "unknown"))
    body["slots_covered"] = int(info.get("cluster_slots_ok", 0))
    body["up"] = body["state"] == "ok"
    return body


async def _first_answer(client: RedisCluster, nodes: list[ClusterNode]) -> dict[str, Any]:
    """CLUSTER INFO from the first node that answers (a dead primary must not hide the rest)."""
    error: BaseException | None = None
    for node in nodes:
        try:
            info: dict[str, Any] = await client.cluster_info(target_nodes=node)
            return info
        except REDIS_FAULTS as exc:
            error = exc
    raise error or redis_errors.RedisClusterException("no cluster node known")


# --------------------------------------------------------------------------------------------
# Parsing


def _parse_multi(kind: Kind, tls: bool, url: str, rest: str, params: dict[str, str]) -> RedisTarget:
    netloc, _, path = rest.partition("/")
    username, password, hosts = _split_credentials(netloc)
    default_port = DEFAULT_SENTINEL_PORT if kind == "sentinel" else DEFAULT_PORT
    nodes = tuple(_node(item, default_port) for item in hosts.split(",") if item.strip())
    if not nodes:
        raise ConfigError("redis.url", f"{kind}: name at least one node as host:port")
    sentinel_password = params.pop("sentinel_password", None) if kind == "sentinel" else None
    if params:
        raise ConfigError("redis.url", f"unknown option(s) {sorted(params)} for a {kind} URL")
    parts = [unquote(p) for p in path.split("/") if p]
    service, db = None, 0
    if kind == "sentinel":
        if not parts:
            raise ConfigError("redis.url", "sentinel: name the primary, redis+sentinel://host:port/NAME[/db]")
        service, parts = parts[0], parts[1:]
    if len(parts) > 1 or (parts and not parts[0].isdigit()):
        raise ConfigError("redis.url", f"{kind}: unexpected path {path!r}")
    db = int(parts[0]) if parts else 0
    if kind == "cluster" and db != 0:
        raise ConfigError("redis.url", "a Redis Cluster has only database 0")
    return RedisTarget(kind, url, nodes, service, db, tls, username, password, sentinel_password)


def _split_credentials(netloc: str) -> tuple[str | None, str | None, str]:
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None), hosts


def _node(item: str, default_port: int) -> tuple[str, int]:
    match = _NODE.match(item.strip())
    port = int(match["port"]) if match and match["port"] else default_port
    if match is None or not 0 < port < 65536:
        raise ConfigError("redis.url", f"{item.strip()!r} is not host:port")
    return (match["v6"] or match["host"]), port


def _single_node(scheme: str, rest: str) -> tuple[str | None, int]:
    if scheme == "unix":
        return None, 0
    _, _, hosts = _split_credentials(rest.partition("/")[0])
    if "," in hosts:
        raise ConfigError("redis.url", "several hosts: use redis+cluster:// or redis+sentinel://")
    return _node(hosts, DEFAULT_PORT) if hosts else ("localhost", DEFAULT_PORT)


def _credentials(url: str) -> str:
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    userinfo, at, _ = netloc.rpartition("@")
    return f"{userinfo}@" if at else ""


def _as_cluster(url: str) -> str:
    scheme, _, rest = _without_query_key(url, "cluster").partition("://")
    netloc = rest.partition("/")[0].partition("?")[0]
    return f"{scheme.lower()}+cluster://{netloc}"


def _without_query_key(url: str, key: str) -> str:
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] != key]
    return base + ("?" + "&".join(kept) if kept else "")


def _redact(url: str) -> str:
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    return url if not at else url.replace(userinfo + "@", "***@", 1)


def _node_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _client_node(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return _node_name(str(kwargs.get("host")), int(kwargs.get("port", DEFAULT_SENTINEL_PORT)))


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"
