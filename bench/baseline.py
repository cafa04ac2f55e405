#!/usr/bin/env python3
"""The baseline: the rotation script many teams write today instead of running token-rotator.

A careful version of it: `requests` for the HCP Terraform API (one keep-alive session per issuer), `hvac` for
Vault / OpenBao KV v2, sequential, run by cron (`check`) or in a loop (`loop`). For each token it creates a new
token, writes the record to KV v2, reads it back and compares, and proves the new token with
`GET /api/v2/account/details`. It waits out a 429 for `X-RateLimit-Reset` and retries 5xx a few times, logs one
line per token, and carries on past a failing token. It writes the same record as token-rotator (`token`,
`token_id`, `issuer`, `type`, `created_at`, `expires_at`), so the two can take turns on the same secrets.

What it does not do, and token-rotator does: journal the new value before writing it anywhere, check-and-set
writes, revoke old tokens after a grace period, sweep orphans, pace itself under the rate limit, metrics.

    baseline.py --config tokens.json rotate        # rotate every token now (like `token-rotator rotate --all`)
    baseline.py --config tokens.json check         # one cron pass: read every record, rotate the due ones
    baseline.py --config tokens.json loop --interval 60   # the loop form: a check pass every 60 s

`--wait-go` prints `ready` once the imports and the configuration are loaded and waits for a line on stdin
before working (so that a benchmark can read the CPU time spent before the work starts). Token values are never
printed. The configuration (written by bench/run.py) is JSON:
    {"vault": {"address", "token_file", "mount"}, "issuers": {NAME: {"address", "token_file"}},
     "tokens": [{"name", "issuer", "type": "organization"|"team", "organization", "team_id", "path", "lifetime_s"}]}
"""

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import time

import hvac
import requests

JSON_API = "application/vnd.api+json"
log = logging.getLogger("rotate-tokens")


def read_secret_file(path):
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Tfc:
    """The HCP Terraform API with one credential: 429s waited out, 5xx retried."""

    def __init__(self, address, token):
        self.base = address.rstrip("/") + "/api/v2"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Accept": JSON_API})
        self.throttled = 0

    def request(self, method, path, body=None, token=None):
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if method != "GET":
            headers["Content-Type"] = JSON_API
        data = json.dumps(body) if body is not None else None
        for attempt in range(8):
            r = self.session.request(method, self.base + path, headers=headers, data=data, timeout=30)
            if r.status_code == 429:
                self.throttled += 1
                time.sleep(float(r.headers.get("X-RateLimit-Reset", "1")))
                continue
            if r.status_code >= 500:
                time.sleep(min(0.5 * 2**attempt, 10))
                continue
            r.raise_for_status()
            return r.json() if r.content else None
        raise RuntimeError(f"{method} {path}: still failing after 8 tries")


class Rotator:
    def __init__(self, cfg):
        v = cfg["vault"]
        self.mount = v.get("mount", "secret")
        self.vault = hvac.Client(url=v["address"], token=read_secret_file(v["token_file"]), timeout=30)
        self.issuers = {
            name: Tfc(i["address"], read_secret_file(i["token_file"])) for name, i in cfg["issuers"].items()
        }
        self.tokens = cfg["tokens"]

    def read(self, t):
        try:
            got = self.vault.secrets.kv.v2.read_secret_version(
                path=t["path"], mount_point=self.mount, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            return None
        return got["data"]["data"]

    def due(self, t, now):
        record = self.read(t)
        if not record or not record.get("expires_at"):
            return True
        expires = dt.datetime.fromisoformat(record["expires_at"].replace("Z", "+00:00"))
        return expires - now <= dt.timedelta(seconds=t["lifetime_s"] / 3)

    def rotate(self, t):
        tfc = self.issuers[t["issuer"]]
        now = dt.datetime.now(dt.timezone.utc)
        attributes = {"expired-at": rfc3339(now + dt.timedelta(seconds=t["lifetime_s"]))}
        if t["type"] == "organization":
            path = f"/organizations/{t['organization']}/authentication-token"
        elif t["type"] == "team":
            path = f"/teams/{t['team_id']}/authentication-tokens"
            attributes["description"] = f"rotate-tokens {t['name']} {now:%Y%m%dT%H%M%S%fZ}"
        else:
            raise ValueError(f"unsupported token type {t['type']}")
        data = tfc.request("POST", path, {"data": {"type": "authentication-tokens", "attributes": attributes}})["data"]
        value = data["attributes"]["token"]
        record = {
            "token": value,
            "token_id": data["id"],
            "issuer": t["issuer"],
            "type": t["type"],
            "created_at": data["attributes"].get("created-at") or rfc3339(now),
            "expires_at": data["attributes"].get("expired-at"),
        }
        self.vault.secrets.kv.v2.create_or_update_secret(path=t["path"], secret=record, mount_point=self.mount)
        if self.read(t) != record:
            raise RuntimeError(f"read-back of {t['path']} does not match what was written")
        tfc.request("GET", "/account/details", token=value)
        log.info("%s: rotated, new token %s stored at %s/%s", t["name"], data["id"], self.mount, t["path"])

    def run(self, force):
        """One pass over every token; returns (rotated, failed)."""
        rotated = failed = 0
        now = dt.datetime.now(dt.timezone.utc)
        for t in self.tokens:
            try:
                if force or self.due(t, now):
                    self.rotate(t)
                    rotated += 1
            except Exception as e:  # a careful script carries on with the next token
                failed += 1
                log.error("%s: rotation failed: %s", t["name"], type(e).__name__)
        return rotated, failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--wait-go", action="store_true")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("rotate")
    sub.add_parser("check")
    loop = sub.add_parser("loop")
    loop.add_argument("--interval", type=float, default=60.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.config, encoding="utf-8") as f:
        rotator = Rotator(json.load(f))
    if args.wait_go:
        print("ready", flush=True)
        sys.stdin.readline()
    if args.mode == "loop":
        passes = 0
        while True:
            started = time.monotonic()
            rotated, failed = rotator.run(force=False)
            passes += 1
            print(f"pass {passes} rotated {rotated} failed {failed}", flush=True)
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    rotated, failed = rotator.run(force=args.mode == "rotate")
    throttled = sum(i.throttled for i in rotator.issuers.values())
    print(json.dumps({"rotated": rotated, "failed": failed, "throttled": throttled}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
