"""Turns the homeserver.yaml that `synapse.app.homeserver --generate-config` wrote into the
configuration bench/compare runs Synapse with.

Every change from what Synapse generates is listed in OVERRIDES (and in BENCHMARKS.md): the
rate limits are raised so that the workload measures the server rather than its limiter;
everything else (presence, caches, logging, SQLite pragmas) stays at Synapse's defaults.

    python bench/synapse_config.py CONFIG_PATH PORT
"""

import sys

import yaml



def unlimited() -> dict:
    """A limit no workload here comes near (the bench sends a few thousand requests per user);
    a fresh dict each time so that the YAML written back has no anchors and aliases."""
    return {"per_second": 100000, "burst_count": 1000000}


OVERRIDES = {
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "suppress_key_server_warning": True,
    "report_stats": False,
    "rc_message": unlimited(),
    "rc_registration": unlimited(),
    "rc_registration_token_validity": unlimited(),
    "rc_login": {
        "address": unlimited(),
        "account": unlimited(),
        "failed_attempts": unlimited(),
    },
    "rc_joins": {"local": unlimited(), "remote": unlimited()},
    "rc_joins_per_room": unlimited(),
    "rc_invites": {
        "per_room": unlimited(),
        "per_user": unlimited(),
        "per_issuer": unlimited(),
    },
    "rc_3pid_validation": unlimited(),
    "rc_third_party_invite": unlimited(),
    "rc_key_requests": unlimited(),
    "rc_media_create": unlimited(),
    "rc_presence": {"per_user": unlimited()},
    "rc_delayed_event_mgmt": unlimited(),
    "rc_room_creation": unlimited(),
    "rc_reports": unlimited(),
    "rc_user_directory": unlimited(),
    "rc_profile": unlimited(),
    "rc_admin_redaction": unlimited(),
}


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    # The generated config already uses SQLite (homeserver.db in the data dir); insist on it
    # so that a change of Synapse's default cannot silently switch the comparison to Postgres.
    if config.get("database", {}).get("name") != "sqlite3":
        raise SystemExit(f"generated config does not use sqlite3: {config.get('database')}")
    # Client API only, plain HTTP on loopback: the workload never touches federation.
    config["listeners"] = [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ]
    config.update(OVERRIDES)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)


if __name__ == "__main__":
    main()
