"""One Matrix client workload, run identically against meshserver and against Synapse.

    python bench/workload.py run --url URL --pid PID --label NAME --out RESULT.json [sizes]
    python bench/workload.py table MESHSERVER.json SYNAPSE.json [MESHSERVER_FULL_SYNC.json]

`run` drives one server that is already listening (started by bench/compare, which waited 5 s
after it first answered) and writes the figures as JSON; `table` prints the comparison.
Everything goes through the Client-Server API with one HTTP/1.1 keep-alive client per user, so
both servers see the same requests in the same order.
"""

import argparse
import http.client
import json
import os
import sqlite3
import statistics
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote, urlencode, urlsplit

PASSWORD = "bench-password-1"
# The same filter everywhere: a small timeline, as clients ask for on a first sync.
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 10}}}, separators=(",", ":"))
# How long the long-poll is given to reach the server and park before the message is sent.
PARK_S = 0.05


class Client:
    """One user's session: a keep-alive HTTP/1.1 connection and an access token.

    The standard library's http.client, not httpx: on this machine httpx spends ~0.7 ms of
    its own per request against ~0.2 ms here, and that client time would be counted as if
    it were the server's (it caps sequential sends well below what the faster server does)."""

    def __init__(self, base: str, token: str | None = None):
        url = urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        self.token = token

    def request(self, method: str, path: str, body: dict | None = None,
                params: dict | None = None) -> tuple[int, dict]:
        if params:
            path = f"{path}?{urlencode(params)}"
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection before reading the request.
                self.conn.close()
                if attempt == 2:
                    raise
        return r.status, (json.loads(raw) if raw else {})

    def ok(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
        status, resp = self.request(method, path, body, params)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status} {str(resp)[:300]}")
        return resp

    def close(self) -> None:
        self.conn.close()


def register(base: str, localpart: str) -> None:
    """Registers through user-interactive auth: the spec's flow, which both servers use."""
    c = Client(base)
    body = {"username": localpart, "password": PASSWORD, "inhibit_login": True}
    status, resp = c.request("POST", "/_matrix/client/v3/register", body)
    if status == 401:
        body["auth"] = {"type": "m.login.dummy", "session": resp.get("session")}
        status, resp = c.request("POST", "/_matrix/client/v3/register", body)
    c.close()
    if status != 200:
        raise RuntimeError(f"register {localpart} -> {status} {str(resp)[:300]}")


def login(base: str, localpart: str) -> Client:
    c = Client(base)
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": localpart},
        "password": PASSWORD,
    }
    while True:
        status, resp = c.request("POST", "/_matrix/client/v3/login", body)
        # meshserver limits password attempts per user (a burst of 10, then 2/s) and has no
        # setting for it; only the initial-sync phase logs one user in that often, and it
        # does not time the login, so waiting as the server asks is harmless there.
        if status == 429:
            time.sleep(resp.get("retry_after_ms", 500) / 1000)
            continue
        if status != 200:
            raise RuntimeError(f"login {localpart} -> {status} {str(resp)[:300]}")
        c.token = resp["access_token"]
        return c


def create_room(c: Client) -> str:
    return c.ok("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"})["room_id"]


def join(c: Client, room_id: str) -> None:
    c.ok("POST", f"/_matrix/client/v3/join/{quote(room_id, safe='')}", {})


def send(c: Client, room_id: str, body: str) -> str:
    txn = uuid.uuid4().hex
    path = f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/m.room.message/{txn}"
    return c.ok("PUT", path, {"msgtype": "m.text", "body": body})["event_id"]


def sync(c: Client, since: str | None = None, timeout_ms: int = 0) -> dict:
    params = {"filter": SYNC_FILTER, "timeout": str(timeout_ms)}
    if since:
        params["since"] = since
    return c.ok("GET", "/_matrix/client/v3/sync", params=params)


def rss_kib(pid: int) -> dict:
    """VmRSS (resident now) and VmHWM (peak resident) of the server process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    s = sorted(xs)
    rank = max(1, -(-len(s) * p // 100))
    return s[int(rank) - 1]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_register_login(base: str, prefix: str, n: int) -> tuple[list[float], list[str]]:
    """Seconds for register (both UIA round trips) + password login, per fresh user."""
    times, names = [], []
    for i in range(n):
        name = f"{prefix}u{i}"
        t0 = time.perf_counter()
        register(base, name)
        login(base, name).close()
        times.append(time.perf_counter() - t0)
        names.append(name)
    return times, names


def bench_sends(a: Client, b: Client, count: int) -> float:
    """Sequential sends per second by `a` into a fresh room that `b` has joined."""
    room = create_room(a)
    join(b, room)
    send(a, room, "warm-up")
    t0 = time.perf_counter()
    for i in range(count):
        send(a, room, f"message {i}")
    return count / (time.perf_counter() - t0)


def has_event(resp: dict, room_id: str, event_id: str) -> bool:
    room = resp.get("rooms", {}).get("join", {}).get(room_id, {})
    return any(e.get("event_id") == event_id for e in room.get("timeline", {}).get("events", []))


def bench_wake(a: Client, b: Client, count: int) -> tuple[list[float], int]:
    """Seconds from the start of `a`'s PUT /send to the end of `b`'s long-poll /sync that carries
    the event. `b`'s poll is parked before each send; a poll that returns early for something
    else (presence, say) is reissued and never counted as a wake."""
    room = create_room(a)
    join(b, room)
    since = sync(b)["next_batch"]
    pool = ThreadPoolExecutor(max_workers=1)

    def poll(since: str) -> tuple[dict, float]:
        resp = sync(b, since, timeout_ms=30000)
        return resp, time.perf_counter()

    latencies, early = [], 0
    for i in range(count):
        fut: Future = pool.submit(poll, since)
        time.sleep(PARK_S)
        while fut.done():
            # Woken by something before our send: take its token and park again.
            early += 1
            if early > 10 * count:
                raise RuntimeError("/sync long-poll keeps returning at once")
            since = fut.result()[0]["next_batch"]
            fut = pool.submit(poll, since)
            time.sleep(PARK_S)
        t0 = time.perf_counter()
        event_id = send(a, room, f"wake {i}")
        while True:
            resp, t1 = fut.result()
            since = resp["next_batch"]
            if has_event(resp, room, event_id):
                break
            fut = pool.submit(poll, since)
        latencies.append(t1 - t0)
    pool.shutdown()
    return latencies, early


def bench_initial_sync(base: str, c: Client, d_name: str, d: Client, history: int, count: int) -> list[float]:
    """Seconds for a first /sync (no `since`) of a user whose one room holds `history` messages.
    Each sync comes from a fresh login (a new device), as a client's first sync does; that also
    keeps Synapse's sync response cache, keyed by device, from answering a repeated request."""
    room = create_room(c)
    join(d, room)
    for i in range(history):
        send(c, room, f"history {i}")
    times = []
    for _ in range(count):
        fresh = login(base, d_name)
        t0 = time.perf_counter()
        resp = sync(fresh)
        times.append(time.perf_counter() - t0)
        fresh.close()
        if room not in resp.get("rooms", {}).get("join", {}):
            raise RuntimeError("initial sync lacks the 1,000-message room")
    return times


def client_floor(base: str, count: int = 500) -> float:
    """Sequential GET /versions per second: the most this client can drive, for reference."""
    c = Client(base)
    c.ok("GET", "/_matrix/client/versions")
    t0 = time.perf_counter()
    for _ in range(count):
        c.ok("GET", "/_matrix/client/versions")
    rate = count / (time.perf_counter() - t0)
    c.close()
    return rate


def machine_conditions(scratch_dir: str) -> dict:
    """What the shared machine was like when a server's run started: the load average, and what
    one SQLite commit with synchronous=FULL (an fsync, as Synapse commits) costs on this disk.
    Both move a lot between runs here, and Synapse's figures move with them."""
    with open("/proc/loadavg", encoding="ascii") as f:
        load1 = float(f.read().split()[0])
    path = os.path.join(scratch_dir, f"fsync-probe-{uuid.uuid4().hex}.db")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE t (x INTEGER)")
        times = []
        for i in range(100):
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (i,))
            db.execute("COMMIT")
            times.append(time.perf_counter() - t0)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    return {"loadavg_1m": load1, "sqlite_full_commit_s": median(times)}


def run(args: argparse.Namespace) -> None:
    base, pid = args.url, args.pid
    if args.users < 4:
        raise SystemExit("--users must be at least 4: the later phases reuse four of them")
    out: dict = {"label": args.label, "url": base, "sends_count": args.sends, "history": args.history}
    out["rss_idle_kib"] = rss_kib(pid)["VmRSS"]
    out["conditions"] = machine_conditions(os.path.dirname(os.path.abspath(args.out)))
    prefix = f"b{uuid.uuid4().hex[:6]}"

    log(f"[{args.label}] register+login x{args.users}")
    reg, names = bench_register_login(base, prefix, args.users)
    out["register_login_s"] = reg
    a, b, c, d = (login(base, n) for n in names[:4])

    out["sends_per_s"] = []
    for r in range(args.runs):
        rate = bench_sends(a, b, args.sends)
        log(f"[{args.label}] sends run {r + 1}: {rate:.1f}/s")
        out["sends_per_s"].append(rate)

    if not args.sends_only:
        log(f"[{args.label}] send -> /sync wake x{args.wake}")
        out["wake_s"], out["wake_early_returns"] = bench_wake(a, b, args.wake)
        log(f"[{args.label}] initial /sync x{args.initial_syncs} over {args.history} messages")
        out["initial_sync_s"] = bench_initial_sync(base, c, names[3], d, args.history, args.initial_syncs)
        out["client_floor_per_s"] = client_floor(base)

    rss = rss_kib(pid)
    out["rss_after_kib"], out["rss_peak_kib"] = rss["VmRSS"], rss["VmHWM"]
    for cl in (a, b, c, d):
        cl.close()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


def table(args: argparse.Namespace) -> None:
    m = json.load(open(args.meshserver, encoding="utf-8"))
    s = json.load(open(args.synapse, encoding="utf-8"))
    full = json.load(open(args.full_sync, encoding="utf-8")) if args.full_sync else None

    def ms(x: float) -> str:
        return f"{x * 1000:.1f} ms"

    def mib(kib: int) -> str:
        return f"{kib / 1024:.1f} MiB"

    # (metric, meshserver value, Synapse value, format, higher-is-better)
    rows = [
        ("sequential sends/s (median of runs)", median(m["sends_per_s"]), median(s["sends_per_s"]),
         lambda x: f"{x:.1f}/s", True),
        ("send → /sync wake p50", median(m["wake_s"]), median(s["wake_s"]), ms, False),
        ("send → /sync wake p99", percentile(m["wake_s"], 99), percentile(s["wake_s"], 99), ms, False),
        (f"initial /sync, room of {m['history']} msgs (median)", median(m["initial_sync_s"]),
         median(s["initial_sync_s"]), ms, False),
        ("register + login (median)", median(m["register_login_s"]), median(s["register_login_s"]), ms, False),
        ("idle RSS (5 s after ready)", m["rss_idle_kib"], s["rss_idle_kib"], mib, False),
        ("RSS after load", m["rss_after_kib"], s["rss_after_kib"], mib, False),
        ("peak RSS (VmHWM)", m["rss_peak_kib"], s["rss_peak_kib"], mib, False),
    ]
    print("| metric | meshserver | Synapse | ratio (× in meshserver's favour) |")
    print("| --- | ---: | ---: | ---: |")
    for name, mv, sv, fmt, higher in rows:
        ratio = mv / sv if higher else sv / mv
        print(f"| {name} | {fmt(mv)} | {fmt(sv)} | {ratio:.1f}× |")
    if full:
        fv = median(full["sends_per_s"])
        print(f"| sequential sends/s, meshserver with sqlite_synchronous=full | {fv:.1f}/s "
              f"| {median(s['sends_per_s']):.1f}/s | {fv / median(s['sends_per_s']):.1f}× |")
    print()
    n = lambda r, k: len(r[k])  # noqa: E731
    print(f"samples: register+login {n(m, 'register_login_s')} users; sends {len(m['sends_per_s'])} runs "
          f"of {m['sends_count']}; wake {n(m, 'wake_s')} messages (early long-poll returns: meshserver "
          f"{m['wake_early_returns']}, Synapse {s['wake_early_returns']}); initial /sync {n(m, 'initial_sync_s')}")
    print(f"client floor (sequential GET /versions with this client): meshserver "
          f"{m['client_floor_per_s']:.0f}/s, Synapse {s['client_floor_per_s']:.0f}/s")
    conds = [(r["label"], r["conditions"]) for r in (m, full, s) if r and "conditions" in r]
    if conds:
        print("conditions when each run started: " + "; ".join(
            f"{label}: load average {c['loadavg_1m']:.2f}, SQLite commit with fsync "
            f"{c['sqlite_full_commit_s'] * 1000:.2f} ms" for label, c in conds))
    sends_ratio = median(m["sends_per_s"]) / median(s["sends_per_s"])
    rss_ratio = m["rss_idle_kib"] / s["rss_idle_kib"]
    print(f"target sends/s ≥ 40× Synapse: {'MET' if sends_ratio >= 40 else 'MISSED'} ({sends_ratio:.1f}×)")
    print(f"target idle RSS ≤ 1/6 of Synapse: {'MET' if rss_ratio <= 1 / 6 else 'MISSED'} "
          f"(1/{1 / rss_ratio:.1f})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--users", type=int, default=20)
    r.add_argument("--sends", type=int, default=1000)
    r.add_argument("--runs", type=int, default=3)
    r.add_argument("--wake", type=int, default=200)
    r.add_argument("--history", type=int, default=1000)
    r.add_argument("--initial-syncs", type=int, default=20)
    r.add_argument("--sends-only", action="store_true", help="only register and the sends runs")
    t = sub.add_parser("table")
    t.add_argument("meshserver")
    t.add_argument("synapse")
    t.add_argument("full_sync", nargs="?")
    args = p.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
