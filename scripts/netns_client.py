#!/usr/bin/env python3
"""Drives the three-node network-namespace test (scripts/test-netns starts the nodes).

Each node's Client-Server API listens on 127.0.0.1 inside its own namespace, which the root
namespace cannot reach; every request therefore opens its socket inside the node's namespace
(setns on this thread, socket, setns back). Python 3 standard library only; needs root.

Steps, each printing PASS or FAIL with its figures:
  1. discovery: every node lists the other two as connected peers (mDNS alone);
  2. chat: alice@n1 creates a room, invites bob@n2 and carol@n3, they join, and each one's
     message reaches the other two through /sync;
  3. partition: n3's switch port goes down, alice and bob send 20 messages and rename the
     room, the port comes up, and n3 catches up: same messages, same name, same state.
Exit status 1 if any step fails.
"""

import argparse
import ctypes
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
HOME_NS = os.open("/proc/self/ns/net", os.O_RDONLY)
PASSWORD = "netns-test-password"
SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 500}}})
POLL = 0.1


def setns(fd):
    if LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def connect_in(ns, port, timeout):
    """A TCP connection to 127.0.0.1:port made from inside network namespace `ns`."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(fd)
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        finally:
            setns(HOME_NS)
    finally:
        os.close(fd)


class NsHTTPConnection(http.client.HTTPConnection):
    def __init__(self, ns, port, timeout):
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.ns = ns

    def connect(self):
        self.sock = connect_in(self.ns, self.port, self.timeout)


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:300]}")
        self.status = status
        self.body = body


class Node:
    def __init__(self, label, ns, port, pid):
        self.label, self.ns, self.port, self.pid = label, ns, port, pid
        self.info = {}

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def call(self, method, path, body=None, token=None, timeout=15):
        conn = NsHTTPConnection(self.ns, self.port, timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw[:300].decode(errors="replace")}
        if resp.status >= 300:
            raise HttpError(resp.status, parsed)
        return parsed

    def node_info(self):
        self.info = self.call("GET", "/_meshserver/v1/node", timeout=5)
        return self.info

    def peer_ids(self):
        return {p.get("peer_id") for p in self.info.get("peers", [])}


def q(s):
    return urllib.parse.quote(s, safe="")


class User:
    """A user on one node with a /sync loop that remembers what it saw."""

    def __init__(self, node, name):
        self.node, self.name = node, name
        self.user_id = self.token = self.since = None
        self.timeline = {}  # room id -> [event]
        self.invites = set()
        self.state = {}  # room id -> {(type, state_key): content}
        self.limited = []
        self.txn = 0

    def register(self):
        r = self.node.call(
            "POST",
            "/_matrix/client/v3/register",
            {"username": self.name, "password": PASSWORD, "auth": {"type": "m.login.dummy"}},
        )
        self.user_id, self.token = r["user_id"], r["access_token"]

    def call(self, method, path, body=None, timeout=15):
        return self.node.call(method, "/_matrix/client/v3" + path, body, self.token, timeout)

    def sync(self):
        path = f"/sync?timeout=0&filter={q(SYNC_FILTER)}"
        if self.since:
            path += f"&since={q(self.since)}"
        r = self.call("GET", path)
        self.since = r.get("next_batch", self.since)
        rooms = r.get("rooms", {})
        for rid in rooms.get("invite", {}):
            self.invites.add(rid)
        for rid, room in rooms.get("join", {}).items():
            st = self.state.setdefault(rid, {})
            for ev in room.get("state", {}).get("events", []):
                st[(ev.get("type"), ev.get("state_key"))] = ev.get("content", {})
            tl = room.get("timeline", {})
            if tl.get("limited") and self.timeline.get(rid):
                self.limited.append(rid)
            for ev in tl.get("events", []):
                self.timeline.setdefault(rid, []).append(ev)
                if "state_key" in ev:
                    st[(ev.get("type"), ev["state_key"])] = ev.get("content", {})

    def bodies(self, rid):
        return {
            ev.get("content", {}).get("body")
            for ev in self.timeline.get(rid, [])
            if ev.get("type") == "m.room.message"
        }

    def room_name(self, rid):
        return self.state.get(rid, {}).get(("m.room.name", ""), {}).get("name")

    def joined(self, rid):
        return {
            sk
            for (t, sk), c in self.state.get(rid, {}).items()
            if t == "m.room.member" and c.get("membership") == "join"
        }

    def send(self, rid, body):
        self.txn += 1
        path = f"/rooms/{q(rid)}/send/m.room.message/netns-{self.txn}-{time.monotonic_ns()}"
        return self.call("PUT", path, {"msgtype": "m.text", "body": body})["event_id"]


class Failed(Exception):
    pass


def wait_for(what, deadline_s, check, step=None):
    """Polls `check` (which returns a truthy value when done) until the deadline.

    `step` runs before each check (e.g. a /sync); returns (seconds, value).
    """
    t0 = time.monotonic()
    last_err = None
    while True:
        try:
            if step:
                step()
            v = check()
            if v:
                return time.monotonic() - t0, v
        except (OSError, HttpError, http.client.HTTPException, KeyError, ValueError) as e:
            last_err = e
        if time.monotonic() - t0 > deadline_s:
            detail = f" (last error: {last_err})" if last_err else ""
            raise Failed(f"{what}: not within {deadline_s:.0f} s{detail}")
        time.sleep(POLL)


def normalized_state(node, token, rid):
    """The room's state as a node serves it, without per-node fields (unsigned: age etc.)."""
    events = node.call("GET", f"/_matrix/client/v3/rooms/{q(rid)}/state", token=token)
    rows = []
    for ev in events:
        ev = {k: v for k, v in ev.items() if k not in ("unsigned", "age")}
        rows.append(ev)
    rows.sort(key=lambda e: (e.get("type", ""), e.get("state_key", "")))
    return json.dumps(rows, sort_keys=True)


def state_diff(a, b):
    ea = {(e["type"], e["state_key"]): e for e in json.loads(a)}
    eb = {(e["type"], e["state_key"]): e for e in json.loads(b)}
    out = []
    for k in sorted(set(ea) | set(eb)):
        if ea.get(k) != eb.get(k):
            ida = ea[k].get("event_id") if k in ea else None
            idb = eb[k].get("event_id") if k in eb else None
            out.append(f"{k[0]}/{k[1]}: {ida} vs {idb}")
    return out


class Run:
    def __init__(self, args):
        pids = [int(p) for p in args.pids.split(",")]
        self.nodes = [Node(f"n{i + 1}", ns, args.port, pid) for i, (ns, pid) in enumerate(zip(args.ns, pids))]
        self.args = args
        self.failed = set()

    def report(self, ok, step, text):
        print(f"{'PASS' if ok else 'FAIL'} {step}: {text}", flush=True)
        if not ok:
            self.failed.add(step)

    def check_alive(self):
        dead = [n.label for n in self.nodes if not n.alive()]
        if dead:
            raise Failed(f"node process exited: {', '.join(dead)}")

    # -- readiness, not a step: the nodes must answer before anything is measured.
    def ready(self):
        for n in self.nodes:

            def up(n=n):
                self.check_alive()
                return n.call("GET", "/_matrix/client/versions", timeout=2)

            wait_for(f"{n.label} answering /_matrix/client/versions", 60, up)
        for n in self.nodes:
            n.node_info()
            n.peer_id, n.server_name = n.info["peer_id"], n.info["server_name"]
            print(f"  {n.label}: {n.server_name} listening on {', '.join(n.info.get('listen_addrs', []))}")

    # -- step 1
    def discovery(self):
        seen = {}
        t0 = time.monotonic()

        def all_seen():
            self.check_alive()
            for n in self.nodes:
                if n.label in seen:
                    continue
                n.node_info()
                others = {m.peer_id for m in self.nodes if m is not n}
                if others <= n.peer_ids():
                    seen[n.label] = (time.monotonic() - t0, n.info.get("uptime_ms", 0) / 1000, n.info)
            return len(seen) == len(self.nodes)

        try:
            secs, _ = wait_for("every node lists the other two as peers", self.args.discovery_timeout, all_seen)
        except Failed as e:
            lines = []
            for n in self.nodes:
                labels = [m.label for m in self.nodes if m.peer_id in n.peer_ids()]
                lines.append(f"{n.label} connected to [{', '.join(labels)}] ({len(n.info.get('peers', []))} peers)")
            self.report(False, "discovery", f"{e}; " + "; ".join(lines))
            return False
        parts = []
        for n in self.nodes:
            _, uptime, info = seen[n.label]
            # Only the hosts: the port and transport are the same everywhere.
            hosts = sorted({a.split("/")[2] for p in info.get("peers", []) for a in p.get("addrs", []) if a.count("/") > 2})
            parts.append(f"{n.label} at node uptime {uptime:.1f} s, peers at {' '.join(hosts) or '(no addrs)'}")
        self.report(True, "discovery", f"all three see two peers {secs:.1f} s after ready; " + "; ".join(parts))
        return True

    # -- step 2
    def chat(self):
        n1, n2, n3 = self.nodes
        self.alice, self.bob, self.carol = users = [User(n1, "alice"), User(n2, "bob"), User(n3, "carol")]
        figures = []
        try:
            for u in users:
                u.register()
                u.sync()
            r = self.alice.call("POST", "/createRoom", {"preset": "public_chat", "name": "netns test"})
            rid = self.rid = r["room_id"]
            for u in (self.bob, self.carol):
                t = time.monotonic()
                try:
                    self.alice.call("POST", f"/rooms/{q(rid)}/invite", {"user_id": u.user_id})
                except (HttpError, OSError) as e:
                    raise Failed(f"alice inviting {u.user_id}: {e}")
                figures.append(f"invite {u.name} {1000 * (time.monotonic() - t):.0f} ms")
            for u in (self.bob, self.carol):
                secs, _ = wait_for(f"the invite in {u.name}'s /sync", self.args.step_timeout,
                                   lambda u=u: rid in u.invites, u.sync)
                figures.append(f"{u.name} sees invite {secs:.1f} s")
                t = time.monotonic()
                try:
                    u.call("POST", f"/join/{q(rid)}?server_name={q(n1.server_name)}", {})
                except (HttpError, OSError) as e:
                    raise Failed(f"{u.name} joining {rid} via {n1.server_name}: {e}")
                figures.append(f"{u.name} join {1000 * (time.monotonic() - t):.0f} ms")
            everyone = {u.user_id for u in users}

            def all_joined():
                bad = [u.name for u in users if not everyone <= u.joined(rid)]
                return not bad

            def sync_all():
                for u in users:
                    u.sync()

            try:
                secs, _ = wait_for("all three joined in every /sync", self.args.step_timeout, all_joined, sync_all)
            except Failed as e:
                views = "; ".join(f"{u.name} sees joined {sorted(u.joined(rid))}" for u in users)
                raise Failed(f"{e}; {views}")
            figures.append(f"memberships converge {secs:.1f} s")
            sent = {}
            for u in users:
                body = f"hello from {u.name} on {u.node.label}"
                u.send(rid, body)
                sent[u.name] = body
            t0 = time.monotonic()
            first = {}

            def delivered():
                for u in users:
                    for sender, body in sent.items():
                        if sender != u.name and (sender, u.name) not in first and body in u.bodies(rid):
                            first[(sender, u.name)] = time.monotonic() - t0
                return len(first) == 6

            try:
                wait_for("each message in the other two /syncs", self.args.step_timeout, delivered, sync_all)
            except Failed as e:
                missing = [f"{s}->{r.name}" for s in sent for r in users if s != r.name and (s, r.name) not in first]
                raise Failed(f"{e}; missing {', '.join(missing)}")
            figures.append(f"6 cross-node deliveries, slowest {max(first.values()):.2f} s")
        except Failed as e:
            self.report(False, "chat", "; ".join([str(e)] + figures))
            return False
        except (HttpError, OSError, KeyError) as e:
            self.report(False, "chat", "; ".join([f"{type(e).__name__}: {e}"] + figures))
            return False
        self.report(True, "chat", f"room {rid}; " + "; ".join(figures))
        return True

    # -- step 3
    def hub(self, state):
        subprocess.run(["ip", "-n", self.args.hub, "link", "set", self.args.cut_port, state], check=True)

    def partition(self):
        n1, n2, n3 = self.nodes
        rid, alice, bob, carol = self.rid, self.alice, self.bob, self.carol
        figures, problems = [], []
        healed = False
        try:
            self.hub("down")
            t_cut = time.monotonic()
            sent = []
            for i in range(10):
                for u in (alice, bob):
                    body = f"partitioned {u.name} #{i}"
                    u.send(rid, body)
                    sent.append(body)
            new_name = "netns test, renamed while n3 was cut off"
            alice.call("PUT", f"/rooms/{q(rid)}/state/m.room.name", {"name": new_name})
            figures.append(f"20 messages and rename sent in {time.monotonic() - t_cut:.2f} s")

            def pair_has_all():
                return all(set(sent) <= u.bodies(rid) and u.room_name(rid) == new_name for u in (alice, bob))

            def sync_pair():
                alice.sync()
                bob.sync()

            secs, _ = wait_for("n1 and n2 exchanging during the partition", self.args.step_timeout,
                               pair_has_all, sync_pair)
            figures.append(f"n1<->n2 had all of it after {secs:.2f} s")

            # The cut is real only when n3's connections are gone on both ends; QUIC notices a
            # dead path only at its idle timeout.
            def cut_off():
                for n in self.nodes:
                    n.node_info()
                return not n3.peer_ids() and n3.peer_id not in n1.peer_ids() | n2.peer_ids()

            try:
                wait_for("n3's connections to drop", self.args.disconnect_timeout, cut_off)
                figures.append(f"n3 disconnected {time.monotonic() - t_cut:.1f} s after the cut")
            except Failed as e:
                problems.append(f"{e}: n3 still lists {len(n3.peer_ids())} peers")
            carol.sync()
            leaked = set(sent) & carol.bodies(rid)
            if leaked:
                raise Failed(f"carol got {len(leaked)} messages while cut off: the partition is not real")

            self.hub("up")
            healed = True
            t_heal = time.monotonic()
            marks = {}

            def converged():
                carol.sync()
                if "reconnect" not in marks:
                    n3.node_info()
                    if {n1.peer_id, n2.peer_id} & n3.peer_ids():
                        marks["reconnect"] = time.monotonic() - t_heal
                if "messages" not in marks and set(sent) <= carol.bodies(rid):
                    marks["messages"] = time.monotonic() - t_heal
                if "name" not in marks and carol.room_name(rid) == new_name:
                    marks["name"] = time.monotonic() - t_heal
                if "messages" in marks and "name" in marks:
                    states = [normalized_state(u.node, u.token, rid) for u in (alice, bob, carol)]
                    if states[0] == states[1] == states[2]:
                        marks["state"] = time.monotonic() - t_heal
                        return True
                return False

            try:
                wait_for("n3 catching up after the heal", self.args.catchup_timeout, converged)
            except Failed as e:
                got = len(set(sent) & carol.bodies(rid))
                detail = [f"carol has {got}/20 messages", f"carol's room name {carol.room_name(rid)!r}"]
                detail += [f"{k} after {v:.2f} s" for k, v in marks.items()]
                if "reconnect" not in marks:
                    detail.append(f"n3 peers: {sorted(n3.peer_ids())}")
                try:
                    s = [normalized_state(u.node, u.token, rid) for u in (alice, bob, carol)]
                    diff = state_diff(s[0], s[2])
                    detail.append(f"n1 vs n3 state differs in {diff[:6]}" if diff else "n1 and n3 state equal")
                    diff12 = state_diff(s[0], s[1])
                    if diff12:
                        detail.append(f"n1 vs n2 state differs in {diff12[:6]}")
                except (HttpError, OSError) as e2:
                    detail.append(f"state unavailable: {e2}")
                raise Failed(f"{e}; " + "; ".join(detail))
            figures.append(
                f"after heal: reconnected {marks.get('reconnect', float('nan')):.2f} s, "
                f"20/20 messages {marks['messages']:.2f} s, name {marks['name']:.2f} s, "
                f"state equal on all three {marks['state']:.2f} s (catch-up time)"
            )
            if carol.limited:
                figures.append(f"note: carol's /sync was limited {len(carol.limited)} times")
        except Failed as e:
            self.report(False, "partition", str(e))
            return False
        except (HttpError, OSError, KeyError, subprocess.CalledProcessError) as e:
            self.report(False, "partition", f"{type(e).__name__}: {e}")
            return False
        finally:
            if not healed:
                subprocess.run(["ip", "-n", self.args.hub, "link", "set", self.args.cut_port, "up"], check=False)
        self.report(not problems, "partition", "; ".join(problems + figures))
        return not problems

    def rejected(self):
        for n in self.nodes:
            try:
                rej = n.node_info().get("rejected", {})
            except (OSError, HttpError):
                continue
            if any(rej.values()):
                print(f"  {n.label} counted rejected: {json.dumps(rej, sort_keys=True)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", nargs=3, required=True, metavar="NS", help="the three nodes' namespaces")
    ap.add_argument("--pids", required=True, help="the three node processes, comma-separated")
    ap.add_argument("--hub", required=True, help="namespace holding the bridge")
    ap.add_argument("--cut-port", default="p3", help="bridge port (in --hub) that cuts off the third node")
    ap.add_argument("--port", type=int, default=8008)
    ap.add_argument("--discovery-timeout", type=float, default=30)
    ap.add_argument("--step-timeout", type=float, default=30)
    ap.add_argument("--disconnect-timeout", type=float, default=45)
    ap.add_argument("--catchup-timeout", type=float, default=60)
    args = ap.parse_args()
    run = Run(args)
    try:
        run.ready()
    except Failed as e:
        print(f"FAIL setup: {e}", flush=True)
        return 1
    steps = [("discovery", run.discovery), ("chat", run.chat), ("partition", run.partition)]
    ok = True
    for name, fn in steps:
        if not ok:
            run.report(False, name, "not run: an earlier step failed")
            continue
        ok = fn()
    run.rejected()
    print(f"{len(steps) - len(run.failed)} passed, {len(run.failed)} failed", flush=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
