"""Drives shoal's Consul-compatible HTTP API with a real Consul client library (py-consul).

Usage: consul_client.py PHASE HOST:PORT HOST:PORT
  PHASE "full": every check, including a session whose TTL lapses (~10-20 s).
  PHASE "quick": the same without waiting for a TTL (run after kill -9 of the leader).
Writes go to the first address, reads and blocking queries to the second, so every check
crosses managers. Exits non-zero with a message on the first failed check.
"""

import base64
import sys
import threading
import time
import uuid

import consul


def client(addr):
    host, port = addr.rsplit(":", 1)
    return consul.Consul(host=host, port=int(port))


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main():
    phase, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
    w, r = client(a), client(b)
    p = f"py/{uuid.uuid4().hex[:8]}/"

    # put, get, flags, recurse, keys
    check(w.kv.put(p + "a", "1") is True, "put")
    _, v = r.kv.get(p + "a")
    check(v is not None and v["Value"] == b"1", "get from another manager")
    check(w.kv.put(p + "b", "2", flags=42), "put with flags")
    _, v = r.kv.get(p + "b")
    check(v["Flags"] == 42, "flags read back")
    w.kv.put(p + "dir/c", "3")
    _, vs = r.kv.get(p, recurse=True)
    check([x["Key"] for x in vs] == [p + "a", p + "b", p + "dir/c"], "recurse")
    _, keys = r.kv.get(p, keys=True, separator="/")
    check(keys == [p + "a", p + "b", p + "dir/"], f"keys with separator: {keys}")
    _, missing = r.kv.get(p + "nope")
    check(missing is None, "missing key is None")

    # cas
    _, v = r.kv.get(p + "a")
    check(w.kv.put(p + "a", "x", cas=v["ModifyIndex"] + 1000) is False, "cas with a stale index fails")
    check(w.kv.put(p + "a", "4", cas=v["ModifyIndex"]) is True, "cas with the current index succeeds")
    check(w.kv.put(p + "a", "5", cas=0) is False, "cas=0 on an existing key fails")
    _, v = r.kv.get(p + "a", consistency="consistent")
    check(v["Value"] == b"4", "cas result")

    # a blocking query on one manager woken by a write on the other
    idx, _ = r.kv.get(p + "watched")
    got = {}

    def block():
        got["r"] = r.kv.get(p + "watched", index=idx, wait="30s")

    t = threading.Thread(target=block)
    started = time.time()
    t.start()
    time.sleep(1.0)
    check(t.is_alive(), "blocking query waits")
    w.kv.put(p + "watched", "woken")
    t.join(15)
    check(not t.is_alive(), "blocking query returns after the write")
    new_idx, v = got["r"]
    check(v is not None and v["Value"] == b"woken" and int(new_idx) > int(idx),
          f"blocking query sees the write (took {time.time() - started:.1f}s)")

    # sessions and locks
    s1 = w.session.create(name="holder", ttl=10, lock_delay=0)
    s2 = r.session.create(name="waiter", ttl=60, lock_delay=0)
    check(len(s1) == 36 and s1 != s2, f"session ids look like UUIDs: {s1}")
    check(w.kv.put(p + "lock", "s1", acquire=s1) is True, "first session acquires the lock")
    check(r.kv.put(p + "lock", "s2", acquire=s2) is False, "second session is refused")
    _, v = r.kv.get(p + "lock")
    check(v["Session"] == s1 and v["LockIndex"] == 1, "lock holder visible")
    _, info = r.session.info(s1)
    check(info is not None and info["ID"] == s1 and info["TTL"] == "10s", "session info")
    _, sessions = r.session.list()
    check({s1, s2} <= {s["ID"] for s in sessions}, "session list")
    if phase == "full":
        deadline = time.time() + 45
        while True:
            r.session.renew(s2)
            _, v = r.kv.get(p + "lock")
            if v.get("Session") is None:
                break
            check(time.time() < deadline, "lock released within 45 s of its session's 10 s TTL")
            time.sleep(1)
        check(v["Value"] == b"s1", "a lapsed session's lock leaves the key in place")
        _, info = r.session.info(s1)
        check(info is None, "lapsed session is gone")
    else:
        check(w.kv.put(p + "lock", "s1", release=s1) is True, "holder releases")
    check(r.kv.put(p + "lock", "s2", acquire=s2) is True, "second session acquires once free")
    check(r.session.destroy(s2), "destroy")
    _, v = r.kv.get(p + "lock")
    check(v.get("Session") is None, "destroying the session releases its lock")

    # a transaction that fails as a whole, then one that succeeds
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    _, v = r.kv.get(p + "a")
    try:
        w.txn.put([
            {"KV": {"Verb": "set", "Key": p + "t1", "Value": b64("t")}},
            {"KV": {"Verb": "cas", "Key": p + "a", "Index": v["ModifyIndex"] + 1000, "Value": b64("y")}},
        ])
        check(False, "failing txn raises")
    except consul.ConsulException as e:
        check("409" in str(e) and "OpIndex" in str(e), f"failing txn answers 409 with Errors: {e}")
    _, t1 = r.kv.get(p + "t1")
    check(t1 is None, "failed txn applied nothing")
    res = w.txn.put([
        {"KV": {"Verb": "set", "Key": p + "t1", "Value": b64("t")}},
        {"KV": {"Verb": "cas", "Key": p + "a", "Index": v["ModifyIndex"], "Value": b64("y")}},
        {"KV": {"Verb": "get", "Key": p + "b"}},
    ])
    check(len(res["Results"]) == 3 and res["Errors"] is None, "txn succeeds")
    check(base64.b64decode(res["Results"][2]["KV"]["Value"]) == b"2", "txn get")

    # delete, recursive delete
    check(w.kv.delete(p + "b") is True, "delete")
    check(w.kv.delete(p, recurse=True) is True, "recursive delete")
    _, vs = r.kv.get(p, recurse=True)
    check(vs is None, "tree gone")

    # what clients probe
    check(r.status.leader() != "", "status leader")
    check(len(r.status.peers()) >= 2, "status peers")
    check(r.agent.self()["Config"]["Datacenter"] == "dc1", "agent self")
    print("all checks passed")


if __name__ == "__main__":
    main()
