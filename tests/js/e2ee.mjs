// End-to-end encryption through meshserver with the real matrix-js-sdk and its Rust crypto
// (matrix-sdk-crypto-wasm, via initRustCrypto). Two users, each on their own device: the SDK
// uploads device and one-time keys, alice creates an encrypted room and invites bob, bob joins,
// alice sends a message that her SDK Megolm-encrypts (claiming bob's one-time key and sending
// the room key as an Olm to-device message), bob decrypts it, bob replies and alice decrypts.
// The server only stores and routes keys and to-device messages; if any of that is wrong, a
// side fails to decrypt.
//
// Usage: node e2ee.mjs http://127.0.0.1:PORT   (scripts/test-js-e2ee starts the node and runs this)
// SDK_LOG=1 shows the SDK's own log.
// Prints one line per check and closes with "N passed, N failed"; exits non-zero on any failure.

import { MatrixEventEvent, RoomEvent } from "matrix-js-sdk";

import { BASE_URL, assert, describe, harness, registerWithDummyStage, say, startAndPrepare } from "./lib.mjs";

// Decryption involves several round trips (keys/query, keys/claim, sendToDevice, a /sync on the
// other side) on a debug build sharing two cores; these are upper bounds, not expectations.
const STEP_TIMEOUT_MS = 30_000;
const { check, clientFor, run } = harness({
  script: "e2ee.mjs",
  stepTimeoutMs: STEP_TIMEOUT_MS,
  totalTimeoutMs: 120_000,
});

/** Registers through the UIA dummy stage (the challenge itself is covered by sdk.mjs) and logs in. */
async function registerAndLogin(username, deviceId) {
  const { password, anon } = await registerWithDummyStage(username, (e) => {
    assert(e.httpStatus === 401 && e.data?.session, `expected a 401 UIA challenge, got ${describe(e)}`);
    return e.data.session;
  });
  const res = await anon.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: username },
    password,
    device_id: deviceId,
    initial_device_display_name: `matrix-js-sdk rust crypto ${deviceId}`,
  });
  assert(res.device_id === deviceId, `asked for device ${deviceId}, login gave ${res.device_id}`);
  return clientFor(res);
}

/**
 * Resolves once `pred()` holds. Polled rather than tied to one SDK event: during a /sync the SDK
 * emits membership events before it stores a new room, so a check run from the listener can miss.
 */
async function until(pred) {
  while (!(await pred())) await new Promise((r) => setTimeout(r, 100));
}

/**
 * Resolves with the event `eventId` in `roomId` once `client` has it in its live timeline and has
 * decrypted it. A failed attempt is not final: the Rust crypto retries when the room key arrives
 * later in a to-device message, so a failure is remembered and reported only on timeout.
 */
function decrypted(client, roomId, eventId) {
  let lastFailure = "event not yet received";
  const promise = new Promise((resolve) => {
    const done = (event) => {
      client.off(RoomEvent.Timeline, onTimeline);
      client.off(MatrixEventEvent.Decrypted, onDecrypted);
      resolve(event);
    };
    const consider = (event) => {
      if (event.getId() !== eventId || event.getRoomId() !== roomId) return;
      if (event.isBeingDecrypted()) {
        lastFailure = "decryption still in progress";
      } else if (event.isDecryptionFailure()) {
        lastFailure = `decryption failed: ${event.decryptionFailureReason} (${event.getContent().body ?? ""})`;
      } else if (event.getClearContent() !== null) {
        done(event);
      } else {
        lastFailure = `event arrived but is not encrypted (type ${event.getWireType()})`;
      }
    };
    const onTimeline = (event, room, toStart) => {
      if (room?.roomId === roomId && !toStart) consider(event);
    };
    // The client re-emits every event's Decrypted, including retries after a late room key.
    const onDecrypted = (event) => consider(event);
    client.on(RoomEvent.Timeline, onTimeline);
    client.on(MatrixEventEvent.Decrypted, onDecrypted);
    const existing = client.getRoom(roomId)?.findEventById(eventId);
    if (existing) consider(existing);
  });
  return { promise, why: () => lastFailure };
}

/** Awaits `decrypted(...)`, turning a step timeout into the last reason decryption had not succeeded. */
async function awaitDecrypted(client, roomId, eventId) {
  const waiter = decrypted(client, roomId, eventId);
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${client.getUserId()} did not decrypt ${eventId}: ${waiter.why()}`)),
      STEP_TIMEOUT_MS - 1_000,
    );
  });
  try {
    return await Promise.race([waiter.promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What the server stores and serves for `eventId`, fetched without the SDK's decryption. */
async function rawEvent(client, roomId, eventId) {
  const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`;
  const res = await fetch(`${BASE_URL}${path}`, {
    headers: { Authorization: `Bearer ${client.getAccessToken()}` },
  });
  if (!res.ok) throw new Error(`GET ${path}: HTTP ${res.status} ${await res.text()}`);
  return res.json();
}

/** Checks that a message is on the wire as Megolm ciphertext from the sender's device, without the plaintext. */
async function assertCiphertextOnServer(client, roomId, eventId, plaintext, senderDevice) {
  const raw = await rawEvent(client, roomId, eventId);
  assert(raw.type === "m.room.encrypted", `server holds ${eventId} as ${raw.type}`);
  assert(raw.content?.algorithm === "m.megolm.v1.aes-sha2", `algorithm is ${raw.content?.algorithm}`);
  assert(typeof raw.content?.ciphertext === "string", `no ciphertext: ${JSON.stringify(raw.content)}`);
  assert(!JSON.stringify(raw).includes(plaintext), "the plaintext reached the server");
  if (raw.content.device_id !== undefined) {
    assert(raw.content.device_id === senderDevice, `device_id is ${raw.content.device_id}`);
  }
}

async function exchange(from, to, roomId, text, fromDevice) {
  const { event_id: eventId } = await from.sendTextMessage(roomId, text);
  assert(eventId?.startsWith("$"), `bad event_id ${eventId}`);
  const event = await awaitDecrypted(to, roomId, eventId);
  assert(event.isEncrypted(), `${to.getUserId()} sees ${eventId} as not encrypted`);
  assert(event.getWireType() === "m.room.encrypted", `wire type is ${event.getWireType()}`);
  assert(event.getType() === "m.room.message", `decrypted type is ${event.getType()}`);
  assert(event.getSender() === from.getUserId(), `sender is ${event.getSender()}`);
  assert(event.getContent().body === text, `decrypted body is ${JSON.stringify(event.getContent().body)}`);
  await assertCiphertextOnServer(to, roomId, eventId, text, fromDevice);
  return event;
}

async function main() {
  const started = Date.now();

  const suffix = Date.now().toString(36);
  const alice = await check("alice registers and logs in as device ALICEDEV", () =>
    registerAndLogin(`ealice${suffix}`, "ALICEDEV"),
  );
  const bob = await check("bob registers and logs in as device BOBDEV", () =>
    registerAndLogin(`ebob${suffix}`, "BOBDEV"),
  );

  for (const [name, client] of [
    ["alice", alice],
    ["bob", bob],
  ]) {
    await check(`${name}'s Rust crypto initialises in memory`, async () => {
      await client.initRustCrypto({ useIndexedDB: false });
      const crypto = client.getCrypto();
      assert(crypto, "getCrypto() is undefined after initRustCrypto");
      // Encrypt to unverified devices, as Element does by default; nobody is verified here.
      crypto.globalBlacklistUnverifiedDevices = false;
    });
    await check(`${name}'s client reaches sync state PREPARED`, () => startAndPrepare(client));
  }

  await check("both devices' keys are published (keys/query from the other side)", async () => {
    // The Rust crypto uploads device keys on its first outgoing-requests pass after start.
    for (const [querier, owner] of [
      [alice, bob],
      [bob, alice],
    ]) {
      const deadline = Date.now() + STEP_TIMEOUT_MS - 2_000;
      for (;;) {
        const res = await querier.downloadKeysForUsers([owner.getUserId()]);
        const keys = res.device_keys?.[owner.getUserId()]?.[owner.getDeviceId()];
        if (keys) {
          assert(keys.keys?.[`ed25519:${owner.getDeviceId()}`], `no ed25519 key: ${JSON.stringify(keys)}`);
          assert(keys.keys?.[`curve25519:${owner.getDeviceId()}`], `no curve25519 key: ${JSON.stringify(keys)}`);
          break;
        }
        assert(Date.now() < deadline, `no device keys for ${owner.getUserId()}: ${JSON.stringify(res)}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  });

  const roomId = await check("alice creates an encrypted room and invites bob", async () => {
    const res = await alice.createRoom({
      name: "encrypted room",
      invite: [bob.getUserId()],
      initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    assert(res.room_id?.startsWith("!"), `bad room_id ${res.room_id}`);
    return res.room_id;
  });

  await check("alice's SDK sees the room as encrypted", async () => {
    await until(() => alice.getRoom(roomId));
    assert(await alice.getCrypto().isEncryptionEnabledInRoom(roomId), "isEncryptionEnabledInRoom is false");
  });

  await check("bob receives the invite and joins", async () => {
    await until(() => bob.getRoom(roomId)?.getMyMembership() === "invite");
    await bob.joinRoom(roomId);
  });

  await check("alice's sync shows bob joined", () =>
    until(() => alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join"),
  );

  const hello = `secret hello from alice ${suffix}`;
  await check("alice's encrypted message decrypts on bob's device", () =>
    exchange(alice, bob, roomId, hello, alice.getDeviceId()),
  );

  const reply = `secret reply from bob ${suffix}`;
  await check("bob's encrypted reply decrypts on alice's device", () =>
    exchange(bob, alice, roomId, reply, bob.getDeviceId()),
  );

  say(`# e2ee exchange took ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

run(main);
