// End-to-end check of meshserver with the real matrix-js-sdk: registration through the UIA
// dummy flow, login, createRoom, send, the SDK's own sync loop (startClient), a second user
// joining, and a live message delivered through long-poll /sync.
//
// Usage: node sdk.mjs http://127.0.0.1:PORT   (scripts/test starts the node and runs this)
// SDK_LOG=1 shows the SDK's own log.
// Prints one line per check and closes with "N passed, N failed"; exits non-zero on any failure.

import { RoomEvent, createClient } from "matrix-js-sdk";

import { BASE_URL, assert, describe, harness, registerWithDummyStage, startAndPrepare } from "./lib.mjs";

const { check, clientFor, run } = harness({ script: "sdk.mjs", stepTimeoutMs: 20_000, totalTimeoutMs: 120_000 });

/** Registers through User-Interactive Auth as a client would: ask, get the flows, answer the dummy stage. */
async function register(username) {
  const { res, password } = await registerWithDummyStage(username, (e) => {
    assert(e.httpStatus === 401, `expected 401 challenge, got ${describe(e)}`);
    const flows = e.data?.flows ?? [];
    assert(
      flows.some((f) => f.stages?.length === 1 && f.stages[0] === "m.login.dummy"),
      `no m.login.dummy flow offered: ${JSON.stringify(e.data)}`,
    );
    const session = e.data.session;
    assert(typeof session === "string" && session.length > 0, "challenge has no session");
    return session;
  });
  assert(res.user_id?.startsWith(`@${username}:`), `unexpected user_id ${res.user_id}`);
  return { userId: res.user_id, password };
}

async function login(userId, password) {
  const anon = createClient({ baseUrl: BASE_URL });
  const res = await anon.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: "matrix-js-sdk e2e",
  });
  assert(res.access_token && res.device_id, `login response lacks token or device: ${JSON.stringify(res)}`);
  const client = clientFor(res);
  const who = await client.whoami();
  assert(who.user_id === userId, `whoami says ${who.user_id}, expected ${userId}`);
  return client;
}

function liveTimelineHas(client, roomId, eventId) {
  const room = client.getRoom(roomId);
  assert(room, `room ${roomId} not in ${client.getUserId()}'s sync`);
  const events = room.getLiveTimeline().getEvents();
  const found = events.find((e) => e.getId() === eventId);
  assert(
    found,
    `event ${eventId} not in ${client.getUserId()}'s live timeline (has ${events.map((e) => e.getType()).join(", ")})`,
  );
  return found;
}

/** Resolves with the first live timeline event in `roomId` that `pred` accepts. */
function waitForTimelineEvent(client, roomId, pred) {
  return new Promise((resolve) => {
    const onTimeline = (event, room, toStartOfTimeline) => {
      if (room?.roomId === roomId && !toStartOfTimeline && pred(event)) {
        client.off(RoomEvent.Timeline, onTimeline);
        resolve(event);
      }
    };
    client.on(RoomEvent.Timeline, onTimeline);
  });
}

async function main() {
  const suffix = Date.now().toString(36);
  const aliceCreds = await check("alice registers through the UIA dummy flow", () => register(`alice${suffix}`));
  const bobCreds = await check("bob registers through the UIA dummy flow", () => register(`bob${suffix}`));
  const alice = await check("alice logs in with her password", () => login(aliceCreds.userId, aliceCreds.password));
  const bob = await check("bob logs in with his password", () => login(bobCreds.userId, bobCreds.password));

  const roomId = await check("alice creates a public room", async () => {
    const res = await alice.createRoom({ preset: "public_chat", name: "e2e room" });
    assert(res.room_id?.startsWith("!"), `bad room_id ${res.room_id}`);
    return res.room_id;
  });
  const hello = `hello from alice ${suffix}`;
  const helloId = await check("alice sends a message", async () => {
    const res = await alice.sendTextMessage(roomId, hello);
    assert(res.event_id?.startsWith("$"), `bad event_id ${res.event_id}`);
    return res.event_id;
  });

  await check("alice's client reaches sync state PREPARED", () => startAndPrepare(alice));
  await check("alice's live timeline holds her message", async () => {
    const ev = liveTimelineHas(alice, roomId, helloId);
    assert(ev.getContent().body === hello, `body is ${ev.getContent().body}`);
    assert(alice.getRoom(roomId).name === "e2e room", `room name is ${alice.getRoom(roomId).name}`);
  });

  await check("bob joins the room", async () => {
    const room = await bob.joinRoom(roomId);
    assert(room.roomId === roomId, `joined ${room.roomId}`);
  });
  await check("bob's client reaches sync state PREPARED", () => startAndPrepare(bob));
  await check("bob's live timeline holds alice's message", async () => {
    const ev = liveTimelineHas(bob, roomId, helloId);
    assert(ev.getSender() === aliceCreds.userId, `sender is ${ev.getSender()}`);
    assert(ev.getContent().body === hello, `body is ${ev.getContent().body}`);
    const member = bob.getRoom(roomId).getMember(bobCreds.userId);
    assert(member?.membership === "join", `bob's membership is ${member?.membership}`);
  });

  await check("bob's reply reaches alice's running sync loop", async () => {
    const reply = `hi alice ${suffix}`;
    const arrived = waitForTimelineEvent(alice, roomId, (e) => e.getContent().body === reply);
    const { event_id } = await bob.sendTextMessage(roomId, reply);
    const ev = await arrived;
    assert(ev.getSender() === bobCreds.userId, `sender is ${ev.getSender()}`);
    assert(ev.getId() === event_id, `alice got event ${ev.getId()}, bob sent ${event_id}`);
  });
}

run(main);
