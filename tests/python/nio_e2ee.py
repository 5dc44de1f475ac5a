"""End-to-end check of meshserver with the real matrix-nio SDK and its vodozemac crypto.

Two users register through the UIA dummy flow, log in with on-disk crypto stores, upload their
device and one-time keys, and alice opens an encrypted DM with bob. Each sends a message that the
other decrypts: that needs /keys/query, /keys/claim (one-time keys), Olm-encrypted m.room_key
to-device messages delivered through /sync, and Megolm-encrypted room events. A plain to-device
message checks idempotent sends and exactly-once delivery.

Usage: python nio_e2ee.py http://127.0.0.1:PORT   (scripts/test-nio starts the node and runs this)
NIO_LOG=1 shows the SDK's own log.
Prints one line per check and closes with "N passed, N failed"; exits non-zero on any failure.
"""

import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    LoginResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomKeyEvent,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
    ToDeviceMessage,
    ToDeviceResponse,
    UnknownToDeviceEvent,
)

STEP_TIMEOUT_S = 20
TOTAL_TIMEOUT_S = 120
PING_TYPE = "org.meshserver.test.ping"

passed = 0
failed = 0


class CheckFailed(Exception):
    pass


def require(cond, message):
    if not cond:
        raise CheckFailed(message)


def describe(value):
    """A response's class and, for errors, the server's status and body."""
    parts = [type(value).__name__]
    for attr in ("status_code", "message"):
        v = getattr(value, attr, None)
        if v is not None:
            parts.append(f"{attr}={v}")
    return " ".join(parts)


async def check(name, coro):
    """Runs one named check; the first failure ends the run (later checks build on earlier ones)."""
    global passed, failed
    try:
        value = await asyncio.wait_for(coro, STEP_TIMEOUT_S)
    except BaseException as e:  # noqa: BLE001 - any failure, a timeout included, fails the check
        failed += 1
        print(f"not ok - {name}", flush=True)
        detail = f"timed out after {STEP_TIMEOUT_S} s" if isinstance(e, asyncio.TimeoutError) else repr(e)
        print(f"  {detail}", flush=True)
        raise CheckFailed(name) from e
    passed += 1
    print(f"ok - {name}", flush=True)
    return value


def uia_session(base_url, username, password):
    """First leg of registration: the server must answer 401 with a dummy flow and a session."""
    req = urllib.request.Request(
        f"{base_url}/_matrix/client/v3/register",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raise CheckFailed(f"register without auth succeeded ({resp.status}); expected a 401")
    except urllib.error.HTTPError as e:
        require(e.code == 401, f"expected 401 UIA challenge, got {e.code}")
        body = json.loads(e.read())
    stages = [stage for flow in body.get("flows", []) for stage in flow.get("stages", [])]
    require("m.login.dummy" in stages, f"no m.login.dummy flow in {body}")
    require(isinstance(body.get("session"), str), f"no session in {body}")
    return body["session"]


class User:
    """One logged-in nio client with its own crypto store, and what its syncs have seen."""

    def __init__(self, base_url, name, store_root, login_as=None):
        """`name` names the store and the messages; `login_as` logs in an existing user instead."""
        self.name = name
        self.password = f"pw-{name}-{secrets.token_hex(8)}"
        self.store = os.path.join(store_root, name)
        os.makedirs(self.store)
        self.client = AsyncClient(
            base_url,
            login_as or name,
            store_path=self.store,
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True),
        )
        self.texts = []  # decrypted RoomMessageText events
        self.undecryptable = []  # MegolmEvent: an encrypted event nio could not decrypt
        self.room_keys = []  # RoomKeyEvent: a Megolm key that arrived in an Olm to-device message
        self.pings = []  # the plain test to-device events
        self.otk_counts = []  # device_one_time_keys_count.signed_curve25519 per sync
        self.changed = set()  # every user id seen in device_lists.changed
        self.client.add_event_callback(self._on_text, RoomMessageText)
        self.client.add_event_callback(self._on_megolm, MegolmEvent)
        self.client.add_to_device_callback(self._on_room_key, RoomKeyEvent)
        self.client.add_to_device_callback(self._on_unknown_to_device, UnknownToDeviceEvent)

    def _on_text(self, room, event):
        self.texts.append((room.room_id, event))

    def _on_megolm(self, room, event):
        self.undecryptable.append((room.room_id, event))

    def _on_room_key(self, event):
        self.room_keys.append(event)

    def _on_unknown_to_device(self, event):
        if event.type == PING_TYPE:
            self.pings.append(event)

    async def register_and_login(self, base_url):
        session = uia_session(base_url, self.name, self.password)
        # Registration's own device gets no keys: a keyless device must not disturb encryption.
        anon = AsyncClient(base_url)
        try:
            resp = await anon.register(self.name, self.password, session_token=session)
            require(isinstance(resp, RegisterResponse), f"register: {describe(resp)}")
        finally:
            await anon.close()
        resp = await self.client.login(self.password, device_name=f"nio test {self.name}")
        require(isinstance(resp, LoginResponse), f"login: {describe(resp)}")
        require(self.client.olm is not None, "login did not load the crypto store")
        return resp

    async def sync_once(self, timeout_ms=0):
        """One /sync plus the key maintenance nio's sync_forever does between syncs."""
        c = self.client
        resp = await c.sync(timeout=timeout_ms)
        require(isinstance(resp, SyncResponse), f"{self.name} sync: {describe(resp)}")
        count = resp.device_key_count.signed_curve25519
        if count is not None:
            self.otk_counts.append(count)
        self.changed.update(resp.device_list.changed)
        for r in await c.send_to_device_messages():
            require(isinstance(r, ToDeviceResponse), f"{self.name} sendToDevice: {describe(r)}")
        if c.should_upload_keys:
            r = await c.keys_upload()
            require(isinstance(r, KeysUploadResponse), f"{self.name} keys/upload: {describe(r)}")
        if c.should_query_keys:
            r = await c.keys_query()
            require(isinstance(r, KeysQueryResponse), f"{self.name} keys/query: {describe(r)}")
        if c.should_claim_keys:
            r = await c.keys_claim(c.get_users_for_key_claiming())
            require(isinstance(r, KeysClaimResponse), f"{self.name} keys/claim: {describe(r)}")
        return resp

    async def sync_until(self, what, cond, timeout_ms=1000):
        """Syncs (long-polling) until cond() holds; the step's own timeout bounds it."""
        while not cond():
            await self.sync_once(timeout_ms)
        return what

    async def close(self):
        await self.client.close()


def got_text(user, room_id, event_id):
    return next((e for (r, e) in user.texts if r == room_id and e.event_id == event_id), None)


def undecryptable_ids(user):
    return [(e.event_id, e.session_id) for (_, e) in user.undecryptable]


async def run(base_url):
    suffix = secrets.token_hex(3)
    with tempfile.TemporaryDirectory(prefix="nio-e2ee-") as store_root:
        await run_in(base_url, suffix, store_root)


async def run_in(base_url, suffix, store_root):
    alice = User(base_url, f"alice{suffix}", store_root)
    bob = User(base_url, f"bob{suffix}", store_root)
    try:
        room_id = await scenario(base_url, alice, bob)
        # A second device for bob: alice learns of it only through device_lists in /sync, and
        # her next message must reach it too (a new Megolm session, as the room's devices changed).
        bob2 = User(base_url, "bob2", store_root, login_as=bob.name)
        try:
            await extra_device(alice, bob, bob2, room_id)
        finally:
            await bob2.close()
    finally:
        await alice.close()
        await bob.close()


async def scenario(base_url, alice, bob):
    a, b = alice.client, bob.client

    await check("alice registers (UIA dummy) and logs in with a crypto store", alice.register_and_login(base_url))
    await check("bob registers (UIA dummy) and logs in with a crypto store", bob.register_and_login(base_url))

    async def upload_keys(user):
        await user.sync_once()
        require(not user.client.should_upload_keys, f"{user.name} still has keys to upload")
        # The server's count of our unclaimed one-time keys must reach us through /sync.
        await user.sync_once()
        require(user.otk_counts and user.otk_counts[-1] > 0, f"{user.name} sync OTK counts: {user.otk_counts}")

    await check("alice uploads device and one-time keys; sync reports the count", upload_keys(alice))
    await check("bob uploads device and one-time keys; sync reports the count", upload_keys(bob))

    async def create_dm():
        resp = await a.room_create(
            name="nio e2ee dm",
            is_direct=True,
            invite=[b.user_id],
            initial_state=[
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        )
        require(isinstance(resp, RoomCreateResponse), f"createRoom: {describe(resp)}")
        return resp.room_id

    room_id = await check("alice creates an encrypted DM inviting bob", create_dm())

    async def bob_joins():
        await bob.sync_until("invite", lambda: room_id in b.invited_rooms)
        resp = await b.join(room_id)
        require(isinstance(resp, JoinResponse), f"join: {describe(resp)}")
        await bob.sync_until("join", lambda: room_id in b.rooms)
        require(b.rooms[room_id].encrypted, "bob does not see the room as encrypted")

    await check("bob sees the invite and joins", bob_joins())

    async def alice_sees_bob():
        await alice.sync_until("bob joined", lambda: room_id in a.rooms and b.user_id in a.rooms[room_id].users)
        room = a.rooms[room_id]
        require(room.encrypted, "alice does not see the room as encrypted")
        # nio queries the keys of every member of an encrypted room; bob's logged-in device must show.
        await alice.sync_until("bob's devices", lambda: b.device_id in a.device_store[b.user_id])
        keys = a.device_store[b.user_id][b.device_id]
        require(keys.curve25519 and keys.ed25519, f"bob's device keys incomplete: {keys.keys}")

    await check("alice sees bob join and fetches his device keys (keys/query)", alice_sees_bob())

    bob_otks_before = bob.otk_counts[-1]
    first_body = f"hello bob, this is secret {secrets.token_hex(4)}"

    async def alice_sends():
        resp = await a.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": first_body},
            ignore_unverified_devices=True,
        )
        require(isinstance(resp, RoomSendResponse), f"room_send: {describe(resp)}")
        return resp.event_id

    first_id = await check("alice sends an encrypted message (claims bob's OTK, shares the Megolm key)", alice_sends())

    async def bob_decrypts():
        await bob.sync_until("alice's message", lambda: got_text(bob, room_id, first_id) or any(
            e.event_id == first_id for (_, e) in bob.undecryptable
        ))
        event = got_text(bob, room_id, first_id)
        require(event is not None, f"bob could not decrypt alice's message: undecryptable {undecryptable_ids(bob)}")
        require(event.decrypted and event.body == first_body, f"bob got {event.body!r}")
        require(event.sender == a.user_id, f"sender {event.sender}")
        return event

    first = await check("bob receives and decrypts alice's message", bob_decrypts())

    async def bob_got_room_key():
        key = next((k for k in bob.room_keys if k.session_id == first.session_id), None)
        require(key is not None, f"no m.room_key for session {first.session_id}; got {bob.room_keys}")
        require(key.sender == a.user_id and key.room_id == room_id, f"room key {key.source}")
        require(key.algorithm == "m.megolm.v1.aes-sha2", key.algorithm)
        alice_curve = a.olm.account.identity_keys["curve25519"]
        require(key.sender_key == alice_curve, "room key not from alice's Olm identity")
        stored = b.olm.inbound_group_store.get(room_id, alice_curve, first.session_id)
        require(stored is not None, "bob's store has no inbound group session for alice's message")

    await check("bob got the Megolm key in an Olm-encrypted to-device m.room_key", bob_got_room_key())

    async def otk_consumed():
        # Alice claimed one of bob's one-time keys; the count /sync reports must have dropped
        # below what it was (nio tops it up again afterwards).
        require(min(bob.otk_counts[bob.otk_counts.index(bob_otks_before):]) < bob_otks_before,
                f"bob's OTK counts never dropped below {bob_otks_before}: {bob.otk_counts}")

    await check("claiming consumed one of bob's one-time keys (sync count dropped)", otk_consumed())

    reply_body = f"hi alice, secret reply {secrets.token_hex(4)}"

    async def bob_replies():
        resp = await b.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": reply_body},
            ignore_unverified_devices=True,
        )
        require(isinstance(resp, RoomSendResponse), f"room_send: {describe(resp)}")
        return resp.event_id

    reply_id = await check("bob sends an encrypted reply", bob_replies())

    async def alice_decrypts():
        await alice.sync_until("bob's reply", lambda: got_text(alice, room_id, reply_id) or any(
            e.event_id == reply_id for (_, e) in alice.undecryptable
        ))
        event = got_text(alice, room_id, reply_id)
        require(event is not None, f"alice could not decrypt bob's reply: undecryptable {undecryptable_ids(alice)}")
        require(event.decrypted and event.body == reply_body, f"alice got {event.body!r}")
        key = next((k for k in alice.room_keys if k.session_id == event.session_id), None)
        require(key is not None and key.sender == b.user_id, "alice got no m.room_key from bob")

    await check("alice receives and decrypts bob's reply (key via to-device)", alice_decrypts())

    async def no_undecryptable():
        require(not alice.undecryptable and not bob.undecryptable,
                f"undecryptable: {undecryptable_ids(alice) + undecryptable_ids(bob)}")

    await check("no undecryptable events on either side", no_undecryptable())

    async def to_device_once():
        msg = ToDeviceMessage(PING_TYPE, b.user_id, b.device_id, {"n": 1})
        txn = f"ping-{secrets.token_hex(4)}"
        for _ in range(2):  # the same transaction twice: the second send must be a no-op
            r = await a.to_device(msg, tx_id=txn)
            require(isinstance(r, ToDeviceResponse), f"sendToDevice: {describe(r)}")
        await bob.sync_until("ping", lambda: bob.pings)
        # More syncs acknowledge the delivery; the message must not come back.
        for _ in range(2):
            await bob.sync_once()
        require(len(bob.pings) == 1, f"to-device delivered {len(bob.pings)} times")
        require(bob.pings[0].sender == a.user_id and bob.pings[0].source["content"] == {"n": 1},
                f"ping {bob.pings[0].source}")

    await check("a plain to-device message is delivered exactly once (idempotent txn)", to_device_once())

    async def no_duplicate_keys():
        sessions = [k.session_id for k in bob.room_keys]
        require(len(sessions) == len(set(sessions)), f"bob got a room key twice: {sessions}")

    await check("the m.room_key to-device message was not redelivered", no_duplicate_keys())
    return room_id


async def extra_device(alice, bob, bob2, room_id):
    a = alice.client

    async def bob2_logs_in():
        alice.changed.clear()
        resp = await bob2.client.login(bob.password, device_name="nio test bob second device")
        require(isinstance(resp, LoginResponse), f"login: {describe(resp)}")
        await bob2.sync_once()
        require(not bob2.client.should_upload_keys, "bob's second device still has keys to upload")

    await check("bob logs in a second device and uploads its keys", bob2_logs_in())

    async def alice_told():
        await alice.sync_until("device_lists.changed", lambda: bob.client.user_id in alice.changed)
        await alice.sync_until("bob2 keys", lambda: bob2.client.device_id in a.device_store[bob.client.user_id])

    await check("alice's sync lists bob in device_lists.changed; she fetches the new device", alice_told())

    body = f"to both of bob's devices {secrets.token_hex(4)}"

    async def both_devices_decrypt():
        resp = await a.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}, ignore_unverified_devices=True
        )
        require(isinstance(resp, RoomSendResponse), f"room_send: {describe(resp)}")
        for user in (bob, bob2):
            await user.sync_until("message", lambda u=user: got_text(u, room_id, resp.event_id) or any(
                e.event_id == resp.event_id for (_, e) in u.undecryptable
            ))
            event = got_text(user, room_id, resp.event_id)
            require(event is not None, f"{user.name} could not decrypt: undecryptable {undecryptable_ids(user)}")
            require(event.body == body, f"{user.name} got {event.body!r}")

    await check("alice's next message is decrypted on both of bob's devices", both_devices_decrypt())


def main():
    global failed
    base_url = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MESHSERVER_URL", "")).rstrip("/")
    if not base_url:
        print("usage: nio_e2ee.py http://127.0.0.1:PORT", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.DEBUG if os.environ.get("NIO_LOG") else logging.CRITICAL)
    started = time.monotonic()
    code = 0
    try:
        asyncio.run(asyncio.wait_for(run(base_url), TOTAL_TIMEOUT_S))
    except CheckFailed:
        code = 1
    except asyncio.TimeoutError:
        failed += 1
        print(f"not ok - whole run timed out after {TOTAL_TIMEOUT_S} s")
        code = 1
    except Exception as e:  # noqa: BLE001 - any crash must still end with the summary line
        failed += 1
        print(f"not ok - crashed: {e!r}")
        code = 1
    print(f"# {time.monotonic() - started:.1f} s")
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
