"""Playbooks for Redis logins: clients AUTH to the proxy (``codec_options.auth``), the proxy
AUTHs to its upstreams (cluster ``auth``), and a refused upstream login is a connect failure."""

from __future__ import annotations

from metaprotocol.core.config import (
    ClusterConfig,
    Endpoint,
    OutlierDetection,
    RetryPolicy,
    RouteAction,
)
from metaprotocol.core.events import Accepted, Closed, DataReceived, UpstreamConnected
from metaprotocol.core.outputs import (
    CloseConnection,
    EndpointConnectFailed,
    OpenUpstream,
    Output,
    Write,
)
from metaprotocol.core.proxy import Proxy
from metaprotocol.core.secrets import Credentials, Secret
from metaprotocol.testing import Playbook

from .helpers import UP, bulk, cmd, config, playbook, route

PASSWORD = "p4ss-w0rd"
NOAUTH = b"-NOAUTH Authentication required.\r\n"
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
LABELS = (("listener", "main"),)


def _client_auth(username: str | None = None) -> dict[str, object]:
    return {"auth": Credentials(Secret(PASSWORD), username)}


def _logged_in_playbook(username: str | None = None) -> Playbook:
    return playbook(config(codec="redis", codec_options=_client_auth(username)))


def test_every_command_before_auth_gets_noauth_then_auth_lets_them_through() -> None:
    pb = _logged_in_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "a") + cmd("PING") + cmd("CLIENT", "SETINFO", "x", "y"))
    pb << Write(1, NOAUTH) << Write(1, NOAUTH) << Write(1, NOAUTH)
    pb >> DataReceived(1, cmd("SUBSCRIBE", "c"))  # even refused commands: NOAUTH first
    pb << Write(1, NOAUTH)
    # AUTH and the command pipelined behind it: the login is checked in request order.
    pb >> DataReceived(1, cmd("AUTH", PASSWORD) + cmd("GET", "a"))
    pb << Write(1, b"+OK\r\n")
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("GET", "a"))  # the AUTH itself never goes upstream
    pb >> DataReceived(-1, bulk("A"))
    pb << Write(1, bulk("A"))
    counters = pb.proxy.stats
    assert counters.counter("downstream_auth_failed", LABELS) == 0
    assert counters.counter("request_decoding_error", LABELS) == 4
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_a_wrong_password_gets_wrongpass_and_is_counted() -> None:
    pb = _logged_in_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("AUTH", "guess") + cmd("AUTH", "default", "guess2"))
    pb << Write(1, WRONGPASS) << Write(1, WRONGPASS)
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << Write(1, NOAUTH)
    pb >> DataReceived(1, cmd("AUTH"))  # wrong arity: an error, not a failed login
    pb << Write(1, b"-ERR wrong number of arguments for 'auth' command\r\n")
    assert pb.proxy.stats.counter("downstream_auth_failed", LABELS) == 2
    # Logged in, a wrong AUTH is refused but the connection stays logged in (as redis does).
    pb >> DataReceived(1, cmd("AUTH", "default", PASSWORD) + cmd("AUTH", "nope"))
    pb << Write(1, b"+OK\r\n") << Write(1, WRONGPASS)
    pb >> DataReceived(1, cmd("GET", "b"))
    pb << OpenUpstream(-1, *UP)
    assert pb.proxy.stats.counter("downstream_auth_failed", LABELS) == 3
    pb >> Closed(1)
    pb << CloseConnection(-1, flush=False)  # nobody waits for its answer any more
    pb >> Closed(-1)
    pb.assert_clean()


def test_inline_auth_typed_into_telnet_works_too() -> None:
    pb = _logged_in_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, b"GET a\r\nAUTH wrong\r\nAUTH " + PASSWORD.encode() + b"\r\n")
    pb << Write(1, NOAUTH) << Write(1, WRONGPASS) << Write(1, b"+OK\r\n")
    pb >> DataReceived(1, b"GET a\r\n")
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("GET", "a"))
    pb >> DataReceived(-1, bulk("A"))
    pb << Write(1, bulk("A"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_a_username_must_match_when_one_is_configured() -> None:
    pb = _logged_in_playbook("app")
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("AUTH", PASSWORD))  # the default user: not "app"
    pb << Write(1, WRONGPASS)
    pb >> DataReceived(1, cmd("AUTH", "app", PASSWORD))
    pb << Write(1, b"+OK\r\n")
    pb >> Closed(1)
    pb.assert_clean()


def test_hello_with_auth_logs_in_and_picks_the_protocol() -> None:
    pb = _logged_in_playbook()
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("HELLO", "3"))  # no AUTH in it: not logged in yet
    pb << Write(1, NOAUTH)
    pb >> DataReceived(1, cmd("HELLO", "3", "AUTH", "default", "bad"))
    pb << Write(1, WRONGPASS)
    pb >> DataReceived(1, cmd("HELLO", "3", "AUTH", "default", PASSWORD))
    hello = pb.take()
    assert isinstance(hello, Write) and hello.data.startswith(b"%7\r\n")
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("HELLO", "3") + cmd("GET", "a"))  # a RESP3 upstream connection
    pb >> DataReceived(-1, b"%1\r\n+server\r\n+redis\r\n" + bulk("A"))
    pb << Write(1, bulk("A"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_without_client_auth_configured_auth_is_refused_as_before() -> None:
    pb = playbook(config(codec="redis"))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("AUTH", "x") + cmd("HELLO", "3", "AUTH", "default", "x"))
    answers = pb.take()  # both answers, whether written at once or one by one
    assert isinstance(answers, Write)
    first, second, end = answers.data.split(b"\r\n")
    assert first.startswith(b"-ERR command AUTH is not")
    assert second.startswith(b"-ERR command HELLO is not") and end == b""
    pb >> Closed(1)
    pb.assert_clean()


# -- the proxy logs in to its upstreams ------------------------------------------------------

UPSTREAM_AUTH = Credentials(Secret("up-secret"))
B = ("10.0.0.2", 9000)


def _cluster(*endpoints: tuple[str, int], auth: Credentials = UPSTREAM_AUTH) -> ClusterConfig:
    return ClusterConfig("main", tuple(Endpoint(*e) for e in endpoints), auth=auth)


def test_every_upstream_connection_opens_with_auth_and_its_reply_is_swallowed() -> None:
    pb = playbook(config(codec="redis", clusters=(_cluster(UP),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("AUTH", "up-secret") + cmd("GET", "a"))
    pb >> DataReceived(-1, b"+OK\r\n")
    pb << None
    pb >> DataReceived(-1, bulk("A"))
    pb << Write(1, bulk("A"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def test_resp3_upstream_connections_log_in_with_hello() -> None:
    auth = Credentials(Secret("up-secret"), "proxy")
    pb = playbook(config(codec="redis", clusters=(_cluster(UP, auth=auth),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("HELLO", "3"))
    pb.take()
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    hello = cmd("HELLO", "3", "AUTH", "proxy", "up-secret")
    pb << Write(-1, hello + cmd("GET", "a"))
    pb >> DataReceived(-1, b"%1\r\n+server\r\n+redis\r\n" + bulk("A"))
    pb << Write(1, bulk("A"))
    pb >> Closed(1) >> Closed(-1)
    pb.assert_clean()


def _feed(proxy: Proxy, event: object) -> list[Output]:
    return proxy.handle(event, 0.0)  # type: ignore[arg-type]


def test_a_refused_upstream_login_is_a_connect_failure_that_is_retried() -> None:
    action = RouteAction(cluster="main", retries=RetryPolicy(attempts=1))
    cfg = config(codec="redis", routes=(route(action=action),), clusters=(_cluster(UP, B),))
    proxy = Proxy(cfg, now=0.0)
    _feed(proxy, Accepted(1, "main"))
    assert OpenUpstream(-1, *B) in _feed(proxy, DataReceived(1, cmd("GET", "a")))
    _feed(proxy, UpstreamConnected(-1))
    refused = _feed(proxy, DataReceived(-1, WRONGPASS + NOAUTH))
    failed = [o for o in refused if isinstance(o, EndpointConnectFailed)]
    assert failed == [
        EndpointConnectFailed(
            "main", "10.0.0.2:9000", "upstream refused AUTH: WRONGPASS invalid "
            "username-password pair or user is disabled."
        )
    ]  # fmt: skip
    assert "up-secret" not in repr(refused)
    assert CloseConnection(-1, flush=False) in refused
    assert OpenUpstream(-2, *UP) in refused  # the retry, on the other endpoint
    cluster = (("cluster", "main"),)
    assert proxy.stats.counter("upstream_cx_connect_fail", cluster) == 1
    assert proxy.stats.counter("upstream_rq_retry", cluster) == 1
    _feed(proxy, UpstreamConnected(-2))
    outs = _feed(proxy, DataReceived(-2, WRONGPASS))
    replies = [o for o in outs if isinstance(o, Write) and o.conn == 1]
    # Retries spent: the client gets a connect-failure reply naming no address or password.
    assert replies == [Write(1, b"-ERR upstream connect failure: connect failed\r\n")]
    _feed(proxy, Closed(1))
    assert not proxy.upstreams and not proxy.downstreams and proxy.request_count() == 0


def test_a_secret_never_shows_in_reprs() -> None:
    credentials = Credentials(Secret(PASSWORD), "app")
    cfg = config(codec="redis", codec_options={"auth": credentials}, clusters=(_cluster(UP),))
    for text in (repr(cfg), str(cfg), f"{credentials}", repr(credentials.password)):
        assert PASSWORD not in text and "up-secret" not in text
    assert credentials.password.reveal() == PASSWORD
    assert credentials == Credentials(Secret(PASSWORD), "app")
    assert credentials != Credentials(Secret("other"), "app")


def test_refused_logins_count_towards_outlier_ejection() -> None:
    od = OutlierDetection(consecutive_failures=2, base_ejection_time=10.0, max_ejection_percent=50)
    cluster = ClusterConfig(
        "main", (Endpoint(*UP), Endpoint(*B)), auth=UPSTREAM_AUTH, outlier_detection=od
    )
    proxy = Proxy(config(codec="redis", clusters=(cluster,)), now=0.0)
    _feed(proxy, Accepted(1, "main"))
    for conn in (-1, -2, -3):
        # Round robin: B, A, B. Each connection's login is refused.
        outputs = _feed(proxy, DataReceived(1, cmd("GET", "a")))
        (opened,) = [o for o in outputs if isinstance(o, OpenUpstream)]
        assert opened.conn == conn
        _feed(proxy, UpstreamConnected(conn))
        _feed(proxy, DataReceived(conn, WRONGPASS))
    assert proxy.stats.counter("outlier_ejection", (("cluster", "main"),)) == 1
    # B failed twice in a row: ejected, so the next request goes to A.
    (opened,) = [
        o for o in _feed(proxy, DataReceived(1, cmd("GET", "a"))) if isinstance(o, OpenUpstream)
    ]
    assert (opened.host, opened.port) == UP
    _feed(proxy, Closed(1))
    _feed(proxy, Closed(opened.conn))
    assert not proxy.upstreams and proxy.request_count() == 0


def test_a_reload_logs_new_upstream_connections_in_with_the_new_password() -> None:
    pb = playbook(config(codec="redis", clusters=(_cluster(UP),)))
    pb >> Accepted(1, "main")
    pb >> DataReceived(1, cmd("GET", "a"))
    pb << OpenUpstream(-1, *UP)
    pb >> UpstreamConnected(-1)
    pb << Write(-1, cmd("AUTH", "up-secret") + cmd("GET", "a"))
    pb >> DataReceived(-1, b"+OK\r\n" + bulk("A"))
    pb << Write(1, bulk("A"))
    rotated = Credentials(Secret("rotated-secret"))
    assert pb.proxy.reload(config(codec="redis", clusters=(_cluster(UP, auth=rotated),)), 0.0) == []
    pb >> Closed(-1)  # the server closes the old connection; the next one logs in anew
    pb >> DataReceived(1, cmd("GET", "b"))
    pb << OpenUpstream(-2, *UP)
    pb >> UpstreamConnected(-2)
    pb << Write(-2, cmd("AUTH", "rotated-secret") + cmd("GET", "b"))
    pb >> DataReceived(-2, b"+OK\r\n" + bulk("B"))
    pb << Write(1, bulk("B"))
    pb >> Closed(1) >> Closed(-2)
    pb.assert_clean()
