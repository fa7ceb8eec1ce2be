"""kernel.cluster and kernel.leases on SQLite and PostgreSQL: membership, leases dated by the
database's clock, atomic hand-over between connections, and the keeper threads."""
from __future__ import annotations

import threading
import time

import pytest

from kernel import cluster as cluster_module
from kernel.cluster import NODE_ID, ClusterStore, Lease, Node, NodeIdConflict
from kernel.database import open_database
from kernel.leases import LeaseKeeper, Membership

#: Long enough that a loaded test machine's pauses do not lose a renewal (rounds of TTL / 3).
TTL = 1.0


@pytest.fixture
def open_store(database_location):
    """Opens a ClusterStore on a connection of its own to the test's database (one "node" each)."""
    opened = []

    def make() -> ClusterStore:
        database = open_database(database_location)
        opened.append(database)
        return ClusterStore(database)

    yield make
    for database in opened:
        database.close()


@pytest.fixture
def store(open_store) -> ClusterStore:
    return open_store()


def wait_for(condition, timeout_s: float = 5.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not hold within {timeout_s} s")


# -- membership ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["", "-a", ".a", "a b", "a/b", "a" * 65, "ü", None])
def test_a_node_id_outside_the_grammar_is_refused_by_name(store, bad):
    with pytest.raises(ValueError, match="node id must match"):
        store.join(bad, ["bridge"], TTL)
    assert NODE_ID.fullmatch("node-1.ward_A") and NODE_ID.fullmatch("a" * 64)


def test_join_refuses_a_live_duplicate_and_admits_it_after_the_ttl(store, open_store):
    other = open_store()
    node = store.join("n1", ["bridge", "gateway"], TTL, host="host-a", pid=100)
    assert isinstance(node, Node) and node.roles == ("bridge", "gateway") and (node.host, node.pid) == ("host-a", 100)
    assert node.started_at == node.heartbeat_at
    with pytest.raises(NodeIdConflict, match=r"'n1'.*host 'host-a', pid 100, last heartbeat \d+\.\d s ago"):
        other.join("n1", ["bridge"], TTL, host="host-b", pid=100)
    with pytest.raises(NodeIdConflict):
        other.join("n1", ["bridge"], TTL, host="host-a", pid=101)  # same host, another process
    assert store.join("n1", ["bridge"], TTL, host="host-a", pid=100).roles == ("bridge",)  # itself: rejoins
    time.sleep(TTL + 0.1)
    taken = other.join("n1", ["serving"], TTL, host="host-b", pid=200)
    assert (taken.host, taken.pid, taken.roles) == ("host-b", 200, ("serving",))
    assert store.heartbeat("n1", host="host-a", pid=100) is False  # no longer ours
    assert other.heartbeat("n1", host="host-b", pid=200) is True


def test_heartbeat_keeps_a_node_live_and_nodes_filters_by_it(store):
    store.join("a", ["bridge"], TTL)
    store.join("b", ["serving"], TTL)
    time.sleep(1.0)
    assert store.heartbeat("a")
    assert [n.node_id for n in store.nodes(live_within_s=0.9)] == ["a"]
    assert [n.node_id for n in store.nodes()] == ["a", "b"]
    a, b = store.nodes()
    assert a.heartbeat_at >= a.started_at + 1.0 and 0 <= store.now() - a.heartbeat_at < 0.9
    assert b.heartbeat_at == b.started_at


def test_leave_removes_the_node_and_releases_its_leases(store):
    store.join("a", ["bridge"], 10)
    store.acquire("bridge/ICU", "a", 10)
    store.acquire("bridge/ER", "b", 10)
    store.leave("a")
    assert store.nodes() == [] and store.heartbeat("a") is False
    assert store.holder("bridge/ICU") is None and store.holder("bridge/ER") == "b"
    assert store.acquire("bridge/ICU", "b", 10).epoch == 2


# -- leases -------------------------------------------------------------------------------------
def test_acquire_renew_expire_takeover_and_the_epoch(store):
    first = store.acquire("bridge/ICU", "n1", 5)
    assert isinstance(first, Lease) and (first.holder, first.epoch) == ("n1", 1)
    assert 4 < first.expires_at - store.now() <= 5
    assert store.acquire("bridge/ICU", "n2", 5) is None
    assert store.renew("bridge/ICU", "n2", 5) is None
    again = store.acquire("bridge/ICU", "n1", 6)  # already ours: renewed, same epoch
    assert again.epoch == 1 and again.expires_at > first.expires_at
    renewed = store.renew("bridge/ICU", "n1", 0.5)
    assert renewed.epoch == 1 and renewed.expires_at < first.expires_at  # renewing may shorten it
    time.sleep(0.6)
    assert store.holder("bridge/ICU") is None and store.leases() == []
    assert [lease.holder for lease in store.leases(include_expired=True)] == ["n1"]
    assert store.renew("bridge/ICU", "n1", 0.5).epoch == 1  # expired but not taken: still ours
    time.sleep(0.6)
    taken = store.acquire("bridge/ICU", "n2", 5)
    assert (taken.holder, taken.epoch) == ("n2", 2)
    assert store.renew("bridge/ICU", "n1", 5) is None and store.acquire("bridge/ICU", "n1", 5) is None
    store.release("bridge/ICU", "n1")  # not n1's: nothing
    assert store.holder("bridge/ICU") == "n2"
    store.release("bridge/ICU", "n2")
    assert store.holder("bridge/ICU") is None
    assert store.renew("bridge/ICU", "n2", 5) is None  # released: a renewal does not bring it back
    assert store.acquire("bridge/ICU", "n2", 5).epoch == 3  # a new tenure after a release
    assert store.acquire("bridge/ER", "n1", 5).epoch == 1
    assert [(lease.name, lease.holder) for lease in store.leases("bridge/")] == [("bridge/ER", "n1"),
                                                                                ("bridge/ICU", "n2")]
    assert [lease.name for lease in store.leases("bridge/E")] == ["bridge/ER"] and store.leases("job/") == []


def test_lease_arguments_are_checked(store):
    with pytest.raises(ValueError, match="ttl_s must be a positive number of seconds, 0 is given"):
        store.acquire("x", "n1", 0)
    with pytest.raises(ValueError, match="holder must be a non-empty string"):
        store.acquire("x", "", 1)
    with pytest.raises(ValueError, match="lease name must be"):
        store.renew("", "n1", 1)


def test_two_nodes_racing_for_a_lease_exactly_one_wins(open_store):
    nodes = [open_store() for _ in range(3)]
    names = [f"job/{i}" for i in range(15)]
    won: dict[str, list[str]] = {name: [] for name in names}
    barrier = threading.Barrier(len(nodes))

    def race(index: int) -> None:
        for name in names:
            barrier.wait()
            if nodes[index].acquire(name, f"node-{index}", 30) is not None:
                won[name].append(f"node-{index}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(len(winners) == 1 for winners in won.values()), won
    assert {name: nodes[0].holder(name) for name in names} == {name: w[0] for name, w in won.items()}


def test_a_node_clock_far_ahead_neither_steals_nor_keeps_a_lease(store, open_store, monkeypatch):
    lease = store.acquire("bridge/ICU", "n1", 1.0)
    skewed = open_store()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)  # this process's clock an hour ahead
    assert skewed.acquire("bridge/ICU", "n2", 1.0) is None and skewed.holder("bridge/ICU") == "n1"
    assert abs(skewed.now() - real()) < 1.0
    assert abs(store.renew("bridge/ICU", "n1", 1.0).expires_at - lease.expires_at) < 0.5
    node = skewed.join("n2", ["bridge"], 1.0)
    assert abs(node.heartbeat_at - real()) < 1.0
    assert "time" not in vars(cluster_module)  # the store never reads the process's clock


# -- keepers ------------------------------------------------------------------------------------
class Recorder:
    """on_acquired / on_lost of one keeper, with the database clock at each call."""

    def __init__(self, store: ClusterStore) -> None:
        self.store, self.events, self.held = store, [], set()

    def acquired(self, name: str) -> None:
        self.held.add(name)
        self.events.append(("acquired", name, self.store.now()))

    def lost(self, name: str) -> None:
        self.held.discard(name)
        self.events.append(("lost", name, self.store.now()))


WARDS = ["bridge/ICU", "bridge/ER", "bridge/NICU", "bridge/CCU"]


def keeper(store: ClusterStore, node_id: str, names=WARDS, ttl_s: float = TTL) -> tuple[LeaseKeeper, Recorder]:
    recorder = Recorder(store)
    return LeaseKeeper(store, node_id, names, ttl_s, recorder.acquired, recorder.lost), recorder


def test_two_keepers_share_four_leases_and_one_takes_over_a_dead_ones(open_store):
    a_store, b_store, observer = open_store(), open_store(), open_store()
    a_member = Membership(a_store, "node-a", ["bridge"], TTL)
    b_member = Membership(b_store, "node-b", ["bridge"], TTL)
    a_member.start(), b_member.start()
    (a, a_calls), (b, b_calls) = keeper(a_store, "node-a"), keeper(b_store, "node-b")
    a.start(), b.start()
    try:
        wait_for(lambda: len(a.held()) == 2 and len(b.held()) == 2, what="two leases each")
        assert a.held() | b.held() == set(WARDS) and a_calls.held == a.held() and b_calls.held == b.held()
        assert {lease.name: lease.holder for lease in observer.leases("bridge/")} == \
            {**{n: "node-a" for n in a.held()}, **{n: "node-b" for n in b.held()}}
        time.sleep(1.5 * TTL)  # renewed, not lost, over several rounds
        assert len(a.held()) == 2 and len(b.held()) == 2 and all(e[0] == "acquired" for e in a_calls.events)
        # node-a dies: its threads stop, nothing is released, its heartbeat lapses
        was_a = a.held()
        a.stop(release=False)
        a_member.stop(leave=False)
        expiry = {lease.name: lease.expires_at for lease in observer.leases(include_expired=True)
                  if lease.holder == "node-a"}
        assert set(expiry) == was_a
        wait_for(lambda: b.held() == set(WARDS), what="node-b holding all four")
        for name in was_a:
            taken_at = next(at for kind, n, at in b_calls.events if kind == "acquired" and n == name)
            assert taken_at >= expiry[name]  # not before the dead node's lease expired
            assert b.epochs[name] == 2
    finally:
        a.stop(), b.stop()
        a_member.stop(), b_member.stop()
    assert b_calls.held == set() and observer.leases() == [] and observer.nodes() == []


def test_a_node_joining_later_gets_its_share_as_the_other_sheds(open_store):
    a_store, b_store = open_store(), open_store()
    a_member = Membership(a_store, "node-a", ["bridge"], TTL)
    a_member.start()
    (a, _), (b, _) = keeper(a_store, "node-a"), keeper(b_store, "node-b")
    a.start()
    b_member = Membership(b_store, "node-b", ["bridge"], TTL)
    try:
        wait_for(lambda: len(a.held()) == 4, what="node-a alone holding all four")
        b_member.start()
        b.start()
        wait_for(lambda: len(a.held()) == 2 and len(b.held()) == 2, what="two leases each")
    finally:
        b.stop(), a.stop()
        b_member.stop(), a_member.stop()


def test_a_keeper_that_cannot_renew_gives_the_lease_up_before_it_expires(store, monkeypatch):
    store.join("node-a", ["bridge"], 5)
    k, calls = keeper(store, "node-a", ["bridge/ICU"], ttl_s=0.9)
    k.start()
    try:
        wait_for(lambda: k.held() == {"bridge/ICU"}, what="the lease held")
        hang = threading.Event()
        monkeypatch.setattr(store, "renew", lambda *args: hang.wait(30))  # the database stops answering
        wait_for(lambda: not k.held(), timeout_s=3, what="the lease given up")
        expires_at = store.leases(include_expired=True)[0].expires_at  # as the last renewal left it
        (kind, name, lost_at), = [e for e in calls.events if e[0] == "lost"]
        # stopped by its own deadline, no later than the lease's expiry (plus the callback's latency)
        assert lost_at <= expires_at + 0.1
        assert store.holder("bridge/ICU") in ("node-a", None)
        hang.set()
    finally:
        k.stop()


def test_a_failing_callback_is_logged_and_the_lease_handed_back(store, caplog):
    store.join("node-a", ["bridge"], 5)
    failures = []

    def on_acquired(name: str) -> None:
        if not failures:
            failures.append(name)
            raise RuntimeError("broker down")

    k = LeaseKeeper(store, "node-a", ["bridge/ICU"], TTL, on_acquired, lambda name: None, interval_s=0.1)
    k.start()
    try:
        wait_for(lambda: k.held() == {"bridge/ICU"}, what="the lease held on the second try")
        assert failures == ["bridge/ICU"] and "on_acquired failed" in caplog.text
    finally:
        k.stop()
    assert store.holder("bridge/ICU") is None


def test_membership_refuses_a_duplicate_node_and_keeps_its_own_alive(store, open_store):
    first = Membership(store, "node-a", ["bridge"], TTL, pid=1)
    first.start()
    second = Membership(open_store(), "node-a", ["bridge"], TTL, pid=2)
    try:
        with pytest.raises(NodeIdConflict, match="'node-a'.*pid 1"):
            second.start()
        time.sleep(1.5 * TTL)  # heartbeats keep the id taken
        with pytest.raises(NodeIdConflict):
            second.start()
        assert first.healthy
    finally:
        first.stop()
    assert store.nodes() == []
    second.start()
    second.stop()


def test_a_live_node_of_another_role_does_not_shrink_the_share(open_store):
    a_store = open_store()
    a_store.join("node-a", ["bridge"], 30)
    a_store.join("node-g", ["gateway"], 30)
    k, _ = keeper(a_store, "node-a")
    k.role = "bridge"
    k.step()
    assert len(k.held()) == 4  # share = 4 / 1 bridge node; without the role it would be 2
    k.stop()


def test_names_no_keeper_takes_are_taken_beyond_the_share_without_flapping(open_store):
    a_store = open_store()
    a_store.join("node-a", ["bridge"], 60)
    a_store.join("node-p", ["bridge"], 60)  # live, but runs no keeper
    k, calls = keeper(a_store, "node-a")
    for _ in range(2):
        k.step()
    assert len(k.held()) == 2  # its share of 4 among 2
    k.step()
    assert len(k.held()) == 4  # the other two were free three rounds in a row
    k.step()
    assert len(k.held()) == 3  # above the share, every name held: one shed for node-p
    for _ in range(3):
        k.step()
    assert len(k.held()) == 4  # node-p did not take it in three rounds: taken back
    for _ in range(12):
        k.step()
    assert len(k.held()) == 4
    assert sum(1 for e in calls.events if e[0] == "lost") == 1  # shed once only: shedding paused
    k.stop()


def test_a_keeper_keeps_its_lease_through_a_terminated_postgresql_connection(postgres_url):
    import psycopg

    store = ClusterStore(open_database(postgres_url))

    store.join("node-a", ["bridge"], 30)
    k, calls = keeper(store, "node-a", ["bridge/ICU"], ttl_s=1.5)
    k.start()
    try:
        wait_for(lambda: k.held() == {"bridge/ICU"}, what="the lease held")
        with psycopg.connect(str(store.database.location), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        time.sleep(2.5)  # several rounds: one renewal fails, the next reconnects
        assert k.held() == {"bridge/ICU"} and [e[0] for e in calls.events] == ["acquired"]
        assert store.holder("bridge/ICU") == "node-a"
    finally:
        k.stop()
        store.database.close()
