// Helpers shared by the matrix-js-sdk end-to-end scripts (sdk.mjs, e2ee.mjs): the check runner
// with its per-step and whole-run timeouts, the "N passed, N failed" summary, the UIA dummy-stage
// registration, authenticated clients and starting the SDK's sync loop.
//
// Each script calls `harness(...)` once and runs its checks through `run(main)`; the first failed
// check ends the run (later checks build on earlier ones).

import { ClientEvent, createClient } from "matrix-js-sdk";

// The SDK (and the crypto wasm) log a great deal straight to the console, expected 404s for
// unstable endpoints among them. Silence it unless SDK_LOG is set: the scripts' own lines go to
// stdout directly, failures carry their details, and the node's log has every request.
if (!process.env.SDK_LOG) {
  for (const method of ["log", "debug", "info", "warn", "error", "trace"]) console[method] = () => {};
}

export const say = (line) => process.stdout.write(`${line}\n`);

export const BASE_URL = process.argv[2] ?? process.env.MESHSERVER_URL;

export function describe(e) {
  if (e?.httpStatus !== undefined) {
    return `HTTP ${e.httpStatus} ${e.errcode ?? ""} ${JSON.stringify(e.data ?? {})} (${e.url ?? ""})`;
  }
  return e?.stack ?? String(e);
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/**
 * Registers `username` through User-Interactive Auth as a client would: asks without auth, hands
 * the 401 challenge to `checkChallenge` (which returns the UIA session), answers the dummy stage.
 * Resolves with the register response and the generated password.
 */
export async function registerWithDummyStage(username, checkChallenge) {
  const anon = createClient({ baseUrl: BASE_URL });
  const password = `pw-${username}-${Math.random().toString(36).slice(2)}`;
  let session;
  try {
    await anon.registerRequest({ username, password });
    throw new Error("register without auth succeeded; expected a 401 UIA challenge");
  } catch (e) {
    session = checkChallenge(e);
  }
  const res = await anon.registerRequest({ username, password, auth: { type: "m.login.dummy", session } });
  return { res, password, anon };
}

/** Starts the SDK's sync loop and resolves once it reports PREPARED (first /sync processed). */
export function startAndPrepare(client) {
  return new Promise((resolve, reject) => {
    const onSync = (state, _prev, data) => {
      if (state === "PREPARED") {
        client.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") {
        client.off(ClientEvent.Sync, onSync);
        reject(new Error(`sync failed: ${describe(data?.error)}`));
      }
    };
    client.on(ClientEvent.Sync, onSync);
    client.startClient({ initialSyncLimit: 20 }).catch(reject);
  });
}

/**
 * The run's bookkeeping: `script` names the file for the usage line, `stepTimeoutMs` bounds each
 * check and `totalTimeoutMs` the whole run. Clients made through `clientFor` are stopped at the end.
 */
export function harness({ script, stepTimeoutMs, totalTimeoutMs }) {
  let passed = 0;
  let failed = 0;
  const clients = [];

  function ok(name) {
    passed += 1;
    say(`ok - ${name}`);
  }

  function finish(code) {
    for (const c of clients) c.stopClient();
    say(`${passed} passed, ${failed} failed`);
    process.exit(code);
  }

  /** Runs one named check; the first failure ends the run (later checks build on earlier ones). */
  async function check(name, fn) {
    let timer;
    try {
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${stepTimeoutMs} ms`)), stepTimeoutMs);
      });
      const value = await Promise.race([fn(), timeout]);
      ok(name);
      return value;
    } catch (e) {
      failed += 1;
      say(`not ok - ${name}`);
      say(`  ${describe(e)}`);
      finish(1);
    } finally {
      clearTimeout(timer);
    }
  }

  /** An SDK client authenticated with a login response, stopped when the run finishes. */
  function clientFor(loginResponse) {
    const client = createClient({
      baseUrl: BASE_URL,
      accessToken: loginResponse.access_token,
      userId: loginResponse.user_id,
      deviceId: loginResponse.device_id,
    });
    clients.push(client);
    return client;
  }

  /** Runs `main` under the whole-run timeout and closes with the summary line. */
  function run(main) {
    if (!BASE_URL) {
      say(`usage: node ${script} <homeserver base URL>`);
      process.exit(2);
    }
    const overall = setTimeout(() => {
      failed += 1;
      say(`not ok - whole run timed out after ${totalTimeoutMs} ms`);
      finish(1);
    }, totalTimeoutMs);
    main()
      .then(() => {
        clearTimeout(overall);
        finish(0);
      })
      .catch((e) => {
        failed += 1;
        say(`not ok - unexpected error: ${describe(e)}`);
        finish(1);
      });
  }

  return { check, clientFor, run };
}
